"""The deployment recipe works: `manage.py runworkers` starts N workers, and
deploy/nginx.conf in front of them serves static files and carries chat
(HTTP and WebSocket upgrades) to every worker.

nginx is Debian's, started as a foreground process with its own prefix and
config in a temporary directory, on a free port. A missing nginx fails the
test with instructions (it never skips).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from channels.db import database_sync_to_async

from chat.models import Connection
from tests.chatclient import open_real_socket
from tests.conftest import REDIS_URL
from tests.servers import (
    ROOT,
    HttpSession,
    Nginx,
    free_port,
    free_port_pair,
    nginx_binary,
    worker_env,
)

pytestmark = [pytest.mark.processes, pytest.mark.django_db(transaction=True)]


def render_nginx_site(*, listen: int, worker_ports: list[int], static_root: Path) -> str:
    """deploy/nginx.conf with its placeholders filled in, as the README says."""
    template = (ROOT / "deploy" / "nginx.conf").read_text()
    servers = " ".join(f"server 127.0.0.1:{port};" for port in worker_ports)
    return (
        template.replace("@LISTEN@", f"127.0.0.1:{listen}")
        .replace("@WORKERS@", servers)
        .replace("@STATIC_ROOT@", str(static_root))
    )


def wait_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"{url} did not answer within {timeout}s")


def port_closed(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture
def production_env(redis_prefix):
    # Not under pytest's tmp_path: nginx's workers run as an unprivileged
    # user, who cannot enter pytest's private directory.
    public = Path(tempfile.mkdtemp(prefix="chat-deploy-"))
    static_root = public / "static"
    env = worker_env(
        redis_url=REDIS_URL,
        redis_prefix=redis_prefix,
        DEBUG="false",
        # nginx here listens on plain HTTP.
        SECURE_SSL_REDIRECT="false",
        SESSION_COOKIE_SECURE="false",
        CSRF_COOKIE_SECURE="false",
        ALLOWED_HOSTS="127.0.0.1,localhost",
        STATIC_ROOT=str(static_root),
    )
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "-v", "0"],
        cwd=ROOT,
        env=env,
        check=True,
        timeout=120,
    )
    for path in [public, *public.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    yield env, static_root
    shutil.rmtree(public, ignore_errors=True)


@pytest.fixture
def runworkers(production_env, tmp_path):
    """`manage.py runworkers --workers 2` on two consecutive free ports."""
    env, _ = production_env
    base = free_port_pair()
    log_path = tmp_path / "runworkers.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "manage.py", "runworkers", *_runworkers_args(base)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        for port in (base, base + 1):
            wait_http(f"http://127.0.0.1:{port}/healthz", timeout=40)
        yield process, [base, base + 1]
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)  # its own session: it and its workers
                process.wait(timeout=5)
        print(f"----- runworkers log -----\n{log_path.read_text(errors='replace')}")


def _runworkers_args(base_port: int) -> list[str]:
    return ["--workers", "2", "--base-port", str(base_port), "--stop-timeout", "10"]


def test_runworkers_listens_with_a_large_backlog(runworkers):
    """Twisted's default of 50 made a burst of connections wait a second for a SYN resend."""
    _, worker_ports = runworkers
    for port in worker_ports:
        listening = subprocess.run(
            ["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True
        ).stdout.split()
        # ss shows a listening socket's backlog as its Send-Q (the third column).
        assert listening[0] == "LISTEN" and listening[2] == "2048", listening


def test_nginx_is_installed():
    assert nginx_binary()


async def test_chat_through_nginx_in_front_of_two_workers(runworkers, production_env, tmp_path):
    process, worker_ports = runworkers
    _, static_root = production_env
    port = free_port()
    site = render_nginx_site(listen=port, worker_ports=worker_ports, static_root=static_root)
    nginx = Nginx(site, tmp_path / "nginx", port)
    nginx.start()
    try:
        await asyncio.to_thread(wait_http, nginx.base_url + "/healthz", 20)
        # Static files come from STATIC_ROOT through nginx (the workers run
        # with DEBUG off and do not serve them).
        with urllib.request.urlopen(nginx.base_url + "/static/chat/chat.css", timeout=10) as r:
            assert r.status == 200
            assert r.read() == (static_root / "chat" / "chat.css").read_bytes()

        alice_cookie = await asyncio.to_thread(HttpSession(nginx.base_url).signup, "alice")
        bob_cookie = await asyncio.to_thread(HttpSession(nginx.base_url).signup, "bob")
        # Round robin spreads these over both workers.
        alices = [await open_real_socket(nginx.base_url, alice_cookie, "alice") for _ in range(2)]
        bobs = [await open_real_socket(nginx.base_url, bob_cookie, "bob") for _ in range(2)]
        try:
            # The admin's mirror is written in batches just after sockets
            # open: wait for it. database_sync_to_async closes its connection
            # afterwards, so the test database can be dropped at the end
            # (PostgreSQL refuses while a session is open).
            workers_used: set[str] = set()
            deadline = time.monotonic() + 10
            while len(workers_used) < 2 and time.monotonic() < deadline:
                workers_used = await database_sync_to_async(
                    lambda: set(Connection.objects.values_list("worker", flat=True))
                )()
                if len(workers_used) < 2:
                    await asyncio.sleep(0.05)
            assert len(workers_used) == 2, workers_used
            ack = await alices[0].request(type="send", to={"user": "bob"}, body="via nginx")
            for client in alices + bobs:
                await client.expect("message", id=ack["id"], timeout=10)
            await bobs[1].request(type="join", group="proxied")
            await alices[1].request(type="join", group="proxied")
            ack = await bobs[0].request(type="send", to={"group": "proxied"}, body="group")
            for client in alices + bobs:
                await client.expect("message", id=ack["id"], timeout=10)
        finally:
            for client in alices + bobs:
                await client.close()
    finally:
        nginx.stop()
        print(f"----- nginx error log -----\n{nginx.log()}")

    # SIGTERM to runworkers stops every worker it started.
    process.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(process.wait, 30) == 0
    assert all(port_closed(p) for p in worker_ports)


def children_of(pid: int) -> set[int]:
    """PIDs whose parent is `pid` (Linux /proc)."""
    children = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.add(int(stat.parent.name))
    return children


async def test_runworkers_starts_a_killed_worker_again(runworkers):
    process, worker_ports = runworkers
    before = children_of(process.pid)
    assert len(before) == 2, before
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 40
    while True:
        now = children_of(process.pid)
        if len(now) == 2 and victim not in now:
            break
        assert time.monotonic() < deadline, f"no replacement worker: {now}"
        await asyncio.sleep(0.2)
    for port in worker_ports:
        await asyncio.to_thread(wait_http, f"http://127.0.0.1:{port}/healthz", 40)
    assert process.poll() is None


async def test_nginx_passes_handshakes_a_stopping_worker_refuses_to_another(redis_prefix, tmp_path):
    """A stopping worker answers new handshakes 503 while it closes its sockets over
    CHAT_RESTART_SPREAD; `proxy_next_upstream http_503` sends them to the other worker."""
    from bench.wsclient import HandshakeError, connect
    from tests.servers import Worker

    env = worker_env(redis_url=REDIS_URL, redis_prefix=redis_prefix)
    stopping = Worker({**env, "CHAT_RESTART_SPREAD": "10"}, name="stopping").start()
    other = Worker(env, name="other").start()
    port = free_port()
    site = render_nginx_site(
        listen=port, worker_ports=[stopping.port, other.port], static_root=tmp_path
    )
    nginx = Nginx(site, tmp_path / "nginx", port)
    nginx.start()
    opened = []
    try:
        await asyncio.to_thread(wait_http, nginx.base_url + "/healthz", 20)
        cookie = await asyncio.to_thread(HttpSession(nginx.base_url).signup, "alice")
        # Three sockets: closed at 0, 3.3 and 6.7 s, so the worker drains for 6.7 s.
        on_stopping = [await open_real_socket(stopping.base_url, cookie, "alice") for _ in range(3)]
        opened += on_stopping
        stopping.signal(signal.SIGTERM)
        closes = [asyncio.create_task(client.expect_close(timeout=10)) for client in on_stopping]
        await asyncio.wait(closes, return_when=asyncio.FIRST_COMPLETED)

        with pytest.raises(HandshakeError) as refused:
            await connect(
                "127.0.0.1",
                stopping.port,
                "/ws/chat/",
                origin=stopping.base_url,
                cookie=f"sessionid={cookie}",
                on_text=lambda *_: None,
            )
        assert refused.value.status == 503
        # Round robin offers half of these to the stopping worker first.
        for _ in range(4):
            opened.append(await open_real_socket(nginx.base_url, cookie, "alice"))
        assert stopping.alive(), "the worker stopped before the test was done with it"
        assert await asyncio.gather(*closes) == [1012, 1012, 1012]
        assert await asyncio.to_thread(stopping.wait_exit, 15) == 0
    finally:
        for client in opened:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), 5)
        nginx.stop()
        print(f"----- nginx error log -----\n{nginx.log()}")
        for worker in (stopping, other):
            worker.stop()
            worker.print_log()


def answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


async def test_runworkers_restarts_its_workers_one_at_a_time_on_sighup(runworkers):
    process, worker_ports = runworkers
    before = children_of(process.pid)
    assert len(before) == 2, before

    process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 90
    while True:
        # Never both down: the second is restarted once the first answers again.
        assert any(await asyncio.to_thread(lambda: [answers(p) for p in worker_ports])), (
            "no worker answering during the restart"
        )
        now = children_of(process.pid)
        if len(now) == 2 and not now & before:
            break
        assert time.monotonic() < deadline, f"workers not all restarted: {before} -> {now}"
        await asyncio.sleep(0.1)
    for port in worker_ports:
        await asyncio.to_thread(wait_http, f"http://127.0.0.1:{port}/healthz", 40)
    assert process.poll() is None


async def test_with_json_logs_every_line_runworkers_writes_is_json(production_env, tmp_path):
    """Issue 24.12: its own lines (checks, "2 workers on …", restarts) were plain text.

    The real command, its workers killed and restarted and stopped; every line
    of its stdout and of its stderr, its workers' included, parses as JSON.
    """
    env, _ = production_env
    env = {**env, "CHAT_LOG_FORMAT": "json"}
    base = free_port_pair()
    out_path, err_path = tmp_path / "stdout.log", tmp_path / "stderr.log"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, "manage.py", "runworkers", *_runworkers_args(base)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
    try:
        for port in (base, base + 1):
            await asyncio.to_thread(wait_http, f"http://127.0.0.1:{port}/healthz", 40)
        # A worker that dies and is started again, then a restart of every worker.
        victim = min(children_of(process.pid))
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 40
        while victim in (now := children_of(process.pid)) or len(now) != 2:
            assert time.monotonic() < deadline, f"no replacement worker: {now}"
            await asyncio.sleep(0.2)
        before = children_of(process.pid)
        process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 90
        while (now := children_of(process.pid)) & before or len(now) != 2:
            assert time.monotonic() < deadline, f"workers not all restarted: {before} -> {now}"
            await asyncio.sleep(0.2)
        for port in (base, base + 1):
            await asyncio.to_thread(wait_http, f"http://127.0.0.1:{port}/healthz", 40)
        while "every worker restarted" not in (
            written := out_path.read_text(errors="replace") + err_path.read_text(errors="replace")
        ):
            assert time.monotonic() < deadline, written[-3000:]
            await asyncio.sleep(0.2)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=5)

    messages = []
    for path in (out_path, err_path):
        for line in path.read_text(errors="replace").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                raise AssertionError(f"not JSON in {path.name}: {line!r}") from None
            assert isinstance(event, dict) and "message" in event, line
            messages.append(event["message"])
    said = "\n".join(messages)
    own = ("2 workers on", "exited with", "restarting the worker on", "all workers stopped")
    for line in own:
        assert line in said, (line, said[-3000:])
