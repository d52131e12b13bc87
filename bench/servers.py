"""Server processes the benchmark starts and measures: ours and the peer.

Ours: `daphne chatsite.asgi:application` (or uvicorn on the same app) with a
throwaway database (PostgreSQL database or SQLite file of its own, migrated
first), REDIS_URL on a db number of the benchmark's own with a run-specific
key prefix, DEBUG off, and only the per-user send rate raised. The peers:
`daphne bench.peers.tutorial.asgi:application` ("peer", the Channels
tutorial) and `node bench/peers/socketio/server.js` ("socketio": socket.io
with its Redis adapter, its packages installed by `npm ci` on first use),
each on a Redis db of its own. Every process is stopped by its PID, and every
key the run made is deleted.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
REDIS_HOST = "127.0.0.1:6379"
OUR_REDIS_DB = 9
PEER_REDIS_DB = 10
SOCKETIO_REDIS_DB = 11
SOCKETIO_DIR = ROOT / "bench" / "peers" / "socketio"
PG_URL = "postgres://postgres@127.0.0.1:5432"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
LISTEN_BACKLOG = 2048
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def proc_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE_KIB


def redis_server_pid() -> int | None:
    """PID of the redis-server listening on 6379 (for its CPU; it is shared)."""
    try:
        out = subprocess.run(
            ["ss", "-ltnpH", "sport = :6379"], capture_output=True, text=True, timeout=5
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    marker = "pid="
    if marker in out:
        return int(out.split(marker, 1)[1].split(",", 1)[0])
    return None


@dataclass
class Process:
    name: str
    argv: list[str]
    env: dict[str, str]
    port: int
    log_path: Path
    health_path: str = "/healthz"
    popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def start(self, timeout: float = 60.0) -> Process:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")  # noqa: SIM115 (kept open while it runs)
        self.popen = subprocess.Popen(
            self.argv,
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log_tail()}")
            try:
                url = f"http://127.0.0.1:{self.port}{self.health_path}"
                with urllib.request.urlopen(url, timeout=2):
                    return self
            except urllib.error.HTTPError:
                return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name} not ready in {timeout}s: {self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def cpu(self) -> float:
        return proc_cpu_seconds(self.pid)

    def rss_kib(self) -> int:
        return proc_rss_kib(self.pid)

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout=10)


# `uvicorn` alone is uvicorn with `--ws websockets`; `uvicorn-IMPL` picks `--ws IMPL`.
UVICORN_WS = ("websockets", "websockets-sansio", "wsproto")


def _server_argv(app: str, port: int, server: str) -> list[str]:
    if server == "uvicorn" or server.startswith("uvicorn-"):
        ws = server.removeprefix("uvicorn").removeprefix("-") or "websockets"
        if ws not in UVICORN_WS:
            raise ValueError(f"no uvicorn --ws {ws!r}")
        return [
            sys.executable,
            "-m",
            "uvicorn",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--ws",
            ws,
            "--no-access-log",
            "--log-level",
            "warning",
            app,
        ]
    # The backlog as `manage.py runworkers` sets it (Twisted's default is 50).
    endpoint = f"tcp:port={port}:interface=127.0.0.1:backlog={LISTEN_BACKLOG}"
    return [sys.executable, "-m", "daphne", "-e", endpoint, app]


# What a ladder step reads from our workers' /metrics (README, Metrics).
SCRAPED = ("chat_messages_stored_total", "chat_messages_delivered_total")


@dataclass
class Deployment:
    """A set of worker processes that act as one server."""

    label: str
    workers: list[Process]
    redis_db: int
    redis_prefix: str
    cleanup: list = field(default_factory=list)
    metrics_token: str = ""

    def scrape(self, names: tuple[str, ...] = SCRAPED) -> dict[str, float] | None:
        """The workers' /metrics samples of `names`, summed; None without a metrics token."""
        if not self.metrics_token:
            return None
        totals = dict.fromkeys(names, 0.0)
        for worker in self.workers:
            request = urllib.request.Request(
                f"http://127.0.0.1:{worker.port}/metrics",
                headers={"Authorization": f"Bearer {self.metrics_token}"},
            )
            with urllib.request.urlopen(request, timeout=10) as response:
                for line in response.read().decode().splitlines():
                    name, _, number = line.partition(" ")
                    if name in totals:
                        totals[name] += float(number)
        return totals

    @property
    def pids(self) -> list[int]:
        return [w.pid for w in self.workers]

    def cpu(self) -> float:
        return sum(w.cpu() for w in self.workers)

    def rss_kib(self) -> int:
        return sum(w.rss_kib() for w in self.workers)

    def alive(self) -> bool:
        return all(w.popen is not None and w.popen.poll() is None for w in self.workers)

    def stop(self) -> None:
        for worker in self.workers:
            with contextlib.suppress(Exception):
                worker.stop()
        clean_redis(self.redis_db, self.redis_prefix)
        for action in reversed(self.cleanup):
            with contextlib.suppress(Exception):
                action()


def clean_redis(db: int, prefix: str) -> int:
    client = redis.Redis.from_url(f"redis://{REDIS_HOST}/{db}")
    deleted = 0
    try:
        batch = []
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                deleted += client.delete(*batch)
                batch = []
        if batch:
            deleted += client.delete(*batch)
    finally:
        client.close()
    return deleted


def _create_database(kind: str, run_id: str, out_dir: Path) -> tuple[str, list]:
    if kind == "sqlite":
        path = out_dir / f"bench-{run_id}.sqlite3"
        cleanups = []
        for suffix in ("", "-journal", "-wal", "-shm"):
            cleanups.append(lambda p=Path(str(path) + suffix): p.unlink(missing_ok=True))
        return f"sqlite:///{path}", cleanups
    import psycopg

    name = f"chatbench_{run_id}".replace("-", "_")
    with psycopg.connect(f"{PG_URL}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(f"{PG_URL}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return f"{PG_URL}/{name}", [drop]


def start_ours(
    *,
    workers: int,
    run_id: str,
    db: str = "postgres",
    server: str = "daphne",
    variant: str = "",
    extra_env: dict[str, str] | None = None,
    app: str = "chatsite.asgi:application",
) -> Deployment:
    settings_module = "chatsite.settings"
    if variant:
        from bench.variants import VARIANTS

        # Before anything is created: an unknown name used to leave its
        # database behind.
        if variant not in VARIANTS:
            raise ValueError(f"no variant {variant!r}; known: {', '.join(sorted(VARIANTS))}")
        settings_module = VARIANTS[variant]
    out_dir = OUT / run_id
    out_dir.mkdir(parents=True, exist_ok=True)
    prefix = f"bench-{run_id}"
    database_url, cleanups = _create_database(db, run_id, out_dir)
    metrics_token = secrets.token_urlsafe(24)
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE=settings_module,
        DATABASE_URL=database_url,
        REDIS_URL=f"redis://{REDIS_HOST}/{OUR_REDIS_DB}",
        REDIS_PREFIX=prefix,
        DEBUG="false",
        SECRET_KEY=secrets.token_urlsafe(50),
        # The benchmark talks plain HTTP to the workers, as behind a proxy.
        SECURE_SSL_REDIRECT="false",
        SESSION_COOKIE_SECURE="false",
        CSRF_COOKIE_SECURE="false",
        ALLOWED_HOSTS="127.0.0.1,localhost",
        # The benchmark's senders send far faster than a person, and its
        # thousands of users and sockets all come from one address: raise the
        # per-user command budget and the per-address limits. Nothing else is
        # switched off.
        CHAT_RATE_BURST="1000000",
        CHAT_RATE_PER_SECOND="1000000",
        CHAT_ACCOUNTS_PER_ADDRESS="1000000",
        CHAT_SOCKETS_PER_ADDRESS="1000000",
        CHAT_LOG_LEVEL="WARNING",
        # Metrics on, as in production: each step reads them (bench/run.py).
        CHAT_METRICS_TOKEN=metrics_token,
        PYTHONUNBUFFERED="1",
        # With DEBUG off pages name the collected, hashed static files.
        STATIC_ROOT=str(out_dir / "static"),
    )
    env.update(extra_env or {})
    deployment = Deployment(
        f"ours-{server}", [], OUR_REDIS_DB, prefix, cleanups, metrics_token=metrics_token
    )
    try:
        for command in (["migrate"], ["collectstatic"]):
            subprocess.run(
                [sys.executable, "manage.py", *command, "--noinput", "-v", "0"],
                cwd=ROOT,
                env=env,
                check=True,
            )
        for index in range(workers):
            port = free_port()
            process = Process(
                name=f"ours{index}",
                argv=_server_argv(app, port, server),
                env=env,
                port=port,
                log_path=out_dir / f"ours-{server}-{index}.log",
            )
            deployment.workers.append(process)
            process.start()
    except BaseException:
        deployment.stop()
        raise
    return deployment


def start_peer(*, workers: int, run_id: str, server: str = "daphne") -> Deployment:
    out_dir = OUT / run_id
    out_dir.mkdir(parents=True, exist_ok=True)
    prefix = f"benchpeer-{run_id}"
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="bench.peers.tutorial.settings",
        PEER_REDIS_URL=f"redis://{REDIS_HOST}/{PEER_REDIS_DB}",
        PEER_REDIS_PREFIX=prefix,
        PYTHONUNBUFFERED="1",
    )
    deployment = Deployment(f"peer-{server}", [], PEER_REDIS_DB, prefix)
    try:
        for index in range(workers):
            port = free_port()
            process = Process(
                name=f"peer{index}",
                argv=_server_argv("bench.peers.tutorial.asgi:application", port, server),
                env=env,
                port=port,
                log_path=out_dir / f"peer-{server}-{index}.log",
                health_path="/",
            )
            deployment.workers.append(process)
            process.start()
    except BaseException:
        deployment.stop()
        raise
    return deployment


def _npm_ci() -> None:
    """Install the socket.io peer's pinned packages (package-lock.json) if missing."""
    if (SOCKETIO_DIR / "node_modules" / "socket.io").is_dir():
        return
    try:
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"], cwd=SOCKETIO_DIR, check=True, timeout=600
        )
    except FileNotFoundError as exc:
        raise RuntimeError(
            "the socket.io peer needs node 20+ and npm (apt-get install nodejs npm)"
        ) from exc


def start_socketio(*, workers: int, run_id: str) -> Deployment:
    """socket.io on node, one process per worker, joined by its Redis adapter."""
    _npm_ci()
    out_dir = OUT / run_id
    out_dir.mkdir(parents=True, exist_ok=True)
    prefix = f"benchsio-{run_id}"
    deployment = Deployment("socketio-node", [], SOCKETIO_REDIS_DB, prefix)
    try:
        for index in range(workers):
            port = free_port()
            env = dict(os.environ)
            env.update(
                PORT=str(port),
                PEER_REDIS_URL=f"redis://{REDIS_HOST}/{SOCKETIO_REDIS_DB}",
                PEER_REDIS_PREFIX=prefix,
                NODE_ENV="production",
            )
            process = Process(
                name=f"socketio{index}",
                argv=["node", str(SOCKETIO_DIR / "server.js")],
                env=env,
                port=port,
                log_path=out_dir / f"socketio-node-{index}.log",
                health_path="/healthz",
            )
            deployment.workers.append(process)
            process.start()
    except BaseException:
        deployment.stop()
        raise
    return deployment
