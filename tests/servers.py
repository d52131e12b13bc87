"""Real server processes for tests: daphne workers on free ports.

Workers share the test database (the file or PostgreSQL database that
pytest-django created) and, when given one, a Redis key prefix. Each start
waits for `/healthz` with a timeout; each worker is stopped by its PID at the
end, and its log is printed when a test fails.
"""

from __future__ import annotations

import contextlib
import http.cookiejar
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from django.db import connection

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 30.0


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def test_database_url() -> str:
    """A DATABASE_URL for the database this test session uses."""
    settings_dict = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{settings_dict['NAME']}"
    if connection.vendor == "postgresql":
        user = settings_dict.get("USER") or "postgres"
        password = settings_dict.get("PASSWORD") or ""
        auth = f"{user}:{urllib.parse.quote(password)}" if password else user
        host = settings_dict.get("HOST") or "127.0.0.1"
        port = settings_dict.get("PORT") or 5432
        return f"postgres://{auth}@{host}:{port}/{settings_dict['NAME']}"
    raise RuntimeError(f"no DATABASE_URL form for {connection.vendor}")


class Worker:
    """One daphne process serving chatsite.asgi:application."""

    def __init__(
        self,
        env: dict[str, str],
        *,
        name: str = "worker",
        port: int | None = None,
        host: str = "127.0.0.1",
    ):
        self.name = name
        self.host = host
        self.port = port or free_port(host)
        self.env = env
        self.log_file = tempfile.NamedTemporaryFile(  # noqa: SIM115 (kept open while it runs)
            prefix=f"chat-{name}-", suffix=".log", delete=False
        )
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> Worker:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "daphne",
                "-b",
                self.host,
                "-p",
                str(self.port),
                "chatsite.asgi:application",
            ],
            cwd=ROOT,
            env=self.env,
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.wait_ready()
        return self

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.process.returncode}:\n{self.log()}"
                )
            try:
                with urllib.request.urlopen(self.base_url + "/healthz", timeout=2):
                    return
            except urllib.error.HTTPError:
                return  # it answers; 503 only means a dependency is down
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return Path(self.log_file.name).read_text(errors="replace")

    def signal(self, signum: int) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signum)

    def kill(self) -> None:
        """SIGKILL: the worker dies without closing anything."""
        self.signal(signal.SIGKILL)
        if self.process is not None:
            self.process.wait(timeout=10)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited within `timeout`."""
        if self.process is None or self.process.poll() is not None:
            return
        self.signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            print(f"{self.name} ignored SIGTERM for {timeout}s; killing it")
            self.kill()

    def wait_exit(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def print_log(self) -> None:
        status = "running" if self.alive() else f"exit {self.process and self.process.returncode}"
        print(f"----- log of {self.name} (port {self.port}, {status}) -----\n{self.log()}")


def worker_env(*, redis_url: str = "", redis_prefix: str = "", **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="chatsite.settings",
        DATABASE_URL=test_database_url(),
        DEBUG="true",
        PYTHONUNBUFFERED="1",
        CHAT_NOTICE_DELAY="0.05",
        # Every test's users and sockets come from 127.0.0.1; tests of these
        # limits set their own.
        CHAT_ACCOUNTS_PER_ADDRESS="1000",
        CHAT_SOCKETS_PER_ADDRESS="1000",
        # Stopped workers close their sockets at once; tests of the spread set their own.
        CHAT_RESTART_SPREAD="0",
    )
    env.pop("REDIS_URL", None)
    if redis_url:
        env["REDIS_URL"] = redis_url
        env["REDIS_PREFIX"] = redis_prefix
    env.update(extra)
    return env


@contextlib.contextmanager
def running_workers(count: int, env: dict[str, str]) -> Iterator[list[Worker]]:
    """Start `count` workers; stop them all afterwards, printing their logs."""
    workers = [Worker(env, name=f"worker{i}") for i in range(count)]
    try:
        for worker in workers:
            worker.start()
        yield workers
    finally:
        for worker in workers:
            worker.stop()
        # pytest shows captured output only for failing tests.
        for worker in workers:
            worker.print_log()


_NO_PERSISTENCE = ["--save", "", "--appendonly", "no"]


class RedisServer:
    """A private redis-server on a free port, with no persistence: stopping it
    loses everything, like a crash of a Redis without disk."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log_file = tempfile.NamedTemporaryFile(  # noqa: SIM115 (kept open while it runs)
            prefix="chat-redis-", suffix=".log", delete=False
        )

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not Path(binary).exists():
            raise RuntimeError(
                "redis-server is missing: `apt-get install redis-server` (Debian) or put it on PATH"
            )
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", *_NO_PERSISTENCE],
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited:\n{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith(b"+PONG"):
                        return self
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"redis-server not ready within {timeout}s:\n{self.log()}")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop by PID (SIGKILL: no chance to save anything)."""
        if self.process is None or self.process.poll() is not None:
            return
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=timeout)

    def log(self) -> str:
        return Path(self.log_file.name).read_text(errors="replace")


@contextlib.contextmanager
def private_redis() -> Iterator[RedisServer]:
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.stop()


class HttpSession:
    """A browser-like HTTP session (cookies, CSRF) against a running server."""

    def __init__(self, base_url: str, headers: dict[str, str] | None = None) -> None:
        self.base_url = base_url
        self.headers = headers or {}
        self.cookies = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.cookies))

    def cookie(self, name: str) -> str | None:
        for cookie in self.cookies:
            if cookie.name == name:
                return cookie.value
        return None

    def get(self, path: str) -> tuple[int, str]:
        try:
            request = urllib.request.Request(self.base_url + path, headers=self.headers)
            with self.opener.open(request, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def post(self, path: str, data: dict[str, str] | None = None) -> tuple[int, str]:
        if self.cookie("csrftoken") is None:
            self.get("/accounts/login/")
        token = self.cookie("csrftoken") or ""
        body = urllib.parse.urlencode({"csrfmiddlewaretoken": token, **(data or {})}).encode()
        request = urllib.request.Request(
            self.base_url + path,
            data=body,
            headers={"Referer": self.base_url + "/", "X-CSRFToken": token, **self.headers},
        )
        try:
            with self.opener.open(request, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def signup(self, username: str, password: str = "a-Long-passw0rd!") -> str:
        """Create an account and return the session cookie."""
        self.post(
            "/accounts/signup/",
            {"username": username, "password1": password, "password2": password},
        )
        session = self.cookie("sessionid")
        assert session, f"signup of {username} did not log in"
        return session

    def login(self, username: str, password: str = "a-Long-passw0rd!") -> str:
        self.post("/accounts/login/", {"username": username, "password": password})
        session = self.cookie("sessionid")
        assert session, f"login of {username} failed"
        return session

    def guest(self) -> str:
        self.post("/accounts/guest/")
        session = self.cookie("sessionid")
        assert session, "guest login failed"
        return session


def nginx_binary() -> str:
    """Debian's nginx, or a failure that says how to install it."""
    import pytest

    binary = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else ""
    )
    if not binary:
        pytest.fail(
            "The deployment test needs nginx and it is missing. On Debian: "
            "`apt-get update && apt-get install -y nginx-light` (.ci/run does this).",
            pytrace=False,
        )
    return binary


class Nginx:
    """nginx as a foreground process with its own prefix, config and port."""

    def __init__(self, site_config: str, directory: Path, port: int) -> None:
        self.directory = directory
        self.port = port
        for sub in ("logs", "temp"):
            (directory / sub).mkdir(parents=True, exist_ok=True)
        (directory / "site.conf").write_text(site_config)
        temp = directory / "temp"
        mime_types = Path("/etc/nginx/mime.types")
        (directory / "nginx.conf").write_text(
            "daemon off;\n"
            "worker_processes 1;\n"
            f"pid {directory}/nginx.pid;\n"
            f"error_log {directory}/logs/error.log info;\n"
            "events { worker_connections 256; }\n"
            "http {\n"
            f"  access_log {directory}/logs/access.log;\n"
            + "".join(
                f"  {kind}_temp_path {temp}/{kind};\n"
                for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
            )
            + (f"  include {mime_types};\n" if mime_types.exists() else "")
            + f"  include {directory}/site.conf;\n"
            "}\n"
        )
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> Nginx:
        conf = self.directory / "nginx.conf"
        command = [nginx_binary(), "-p", str(self.directory), "-c", str(conf)]
        check = subprocess.run(
            [*command, "-t", "-e", str(self.directory / "logs/error.log")],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if check.returncode != 0:
            raise RuntimeError(f"nginx rejects the configuration:\n{check.stderr}")
        self.process = subprocess.Popen(
            [*command, "-e", str(self.directory / "logs/error.log")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited:\n{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"nginx not listening within {timeout}s:\n{self.log()}")

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.kill(self.process.pid, signal.SIGTERM)  # fast shutdown of master and workers
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)

    def log(self) -> str:
        path = self.directory / "logs/error.log"
        return path.read_text(errors="replace") if path.exists() else "(no error log)"


def free_port_pair() -> int:
    """A port P such that P and P + 1 are both free (for consecutive workers)."""
    for _ in range(50):
        port = free_port()
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two consecutive free ports")
