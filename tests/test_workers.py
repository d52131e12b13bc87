"""Several daphne workers sharing one Redis and one database act as one server.

Every test here starts real daphne processes and talks to them over real
sockets (the `websockets` library), on the shared Redis under a key prefix of
its own, or on a private redis-server when the test stops Redis.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import os
import signal
import socket
import time
import urllib.error
import urllib.request

import pytest
import redis
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model

from tests.chatclient import WsClient, open_real_socket
from tests.conftest import REDIS_URL, use_redis_layer
from tests.servers import HttpSession, Worker, private_redis, running_workers, worker_env

pytestmark = [pytest.mark.processes, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def two_workers(redis_prefix):
    with running_workers(2, worker_env(redis_url=REDIS_URL, redis_prefix=redis_prefix)) as workers:
        yield workers


@pytest.fixture
async def sockets():
    """`await sockets.open(worker, cookie, name)`; every socket is closed at the end."""
    opened: list[WsClient] = []

    class Opener:
        async def open(self, worker: Worker, cookie: str, username: str) -> WsClient:
            client = await open_real_socket(worker.base_url, cookie, username)
            opened.append(client)
            return client

    yield Opener()
    for client in opened:
        # Already closed, or its worker is gone.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.close(), 5)


def sign_up(worker: Worker, username: str) -> str:
    return HttpSession(worker.base_url).signup(username)


def health_status(worker: Worker) -> int:
    try:
        with urllib.request.urlopen(worker.base_url + "/healthz", timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


async def expect_presence_once(client: WsClient, user: str, online: bool, timeout=10.0) -> None:
    """Exactly one presence event for `user` (with `online`), then no other for a while."""
    await client.expect("presence", timeout=timeout, user=user, online=online)
    await client.assert_nothing("presence", timeout=1.0)


async def test_direct_message_crosses_workers(two_workers, sockets):
    first, second = two_workers
    alice = await sockets.open(first, sign_up(first, "alice"), "alice")
    bob = await sockets.open(second, sign_up(second, "bob"), "bob")
    await alice.expect("presence", user="bob", online=True)
    ack = await alice.request(type="send", to={"user": "bob"}, body="across")
    message = await bob.expect("message", id=ack["id"])
    assert message["body"] == "across"
    assert message["from"] == "alice"
    # The sender's own connection gets the message too.
    await alice.expect("message", id=ack["id"])


async def test_group_broadcast_and_membership_notices_cross_workers(two_workers, sockets):
    first, second = two_workers
    alice = await sockets.open(first, sign_up(first, "alice"), "alice")
    bob = await sockets.open(second, sign_up(second, "bob"), "bob")
    carol = await sockets.open(second, sign_up(second, "carol"), "carol")
    bob_on_first = await sockets.open(first, sign_up_again(first, "bob"), "bob")

    await alice.request(type="join", group="ops")
    await bob.request(type="join", group="ops")
    await alice.expect("joined", group="ops", user="bob")
    await bob_on_first.expect("joined", group="ops", user="bob")

    ack = await bob.request(type="send", to={"group": "ops"}, body="to the group")
    for client in (alice, bob, bob_on_first):
        message = await client.expect("message", id=ack["id"])
        assert message["to"] == {"group": "ops"}
    await carol.assert_nothing("message", timeout=0.5)

    ack = await carol.request(type="send", to={"all": True}, body="everyone")
    for client in (alice, bob, carol, bob_on_first):
        await client.expect("message", id=ack["id"], body="everyone")

    await alice.request(type="leave", group="ops")
    await bob.expect("left", group="ops", user="alice")
    await bob_on_first.expect("left", group="ops", user="alice")
    ack = await bob.request(type="send", to={"group": "ops"}, body="after alice left")
    await bob_on_first.expect("message", id=ack["id"])
    await alice.assert_nothing("message", timeout=0.5)


def sign_up_again(worker: Worker, username: str) -> str:
    """A second session (another browser) for an existing user."""
    return HttpSession(worker.base_url).login(username)


async def test_who_and_members_agree_on_every_worker(two_workers, sockets):
    first, second = two_workers
    alice = await sockets.open(first, sign_up(first, "alice"), "alice")
    bob = await sockets.open(second, sign_up(second, "bob"), "bob")
    sign_up(first, "carol")  # a member who is offline
    carol_http = HttpSession(first.base_url)
    carol_http.login("carol")
    carol = await sockets.open(first, carol_http.cookie("sessionid"), "carol")
    # Seen online first: online and offline within one notice delay may cancel out.
    await alice.expect("presence", user="carol", online=True)
    await bob.expect("presence", user="carol", online=True)
    for client in (alice, bob, carol):
        await client.request(type="join", group="team")
    await carol.close()
    await alice.expect("presence", user="carol", online=False, timeout=10)
    await bob.expect("presence", user="carol", online=False, timeout=10)

    answers = []
    for client in (alice, bob):
        who = await client.request(type="who")
        members = await client.request(type="members", group="team")
        answers.append((who["online"], members["members"]))
    assert answers[0] == answers[1]
    assert answers[0][0] == ["alice", "bob"]
    assert {m["user"]: m["online"] for m in answers[0][1]} == {
        "alice": True,
        "bob": True,
        "carol": False,
    }


async def test_presence_fires_once_when_tabs_on_two_workers_open_and_close_together(
    two_workers, sockets
):
    first, second = two_workers
    observers = [
        await sockets.open(first, sign_up(first, "watcher1"), "watcher1"),
        await sockets.open(second, sign_up(second, "watcher2"), "watcher2"),
    ]
    await observers[0].expect("presence", user="watcher2", online=True)
    cookie = sign_up(first, "alice")
    for _round in range(3):
        tabs = await asyncio.gather(
            *(
                open_real_socket(worker.base_url, cookie, "alice")
                for worker in (first, second, first, second)
            )
        )
        for observer in observers:
            await expect_presence_once(observer, "alice", online=True)
        await asyncio.gather(*(tab.close() for tab in tabs))
        for observer in observers:
            await expect_presence_once(observer, "alice", online=False)
        for observer in observers:
            who = await observer.request(type="who")
            assert "alice" not in who["online"]


async def test_killed_worker_users_go_offline_and_leave_no_layer_group_entries(
    redis_prefix, sockets
):
    env = worker_env(redis_url=REDIS_URL, redis_prefix=redis_prefix, CHAT_PRESENCE_TIMEOUT="3")
    with running_workers(2, env) as (survivor, doomed):
        alice = await sockets.open(survivor, sign_up(survivor, "alice"), "alice")
        bob = await sockets.open(doomed, sign_up(doomed, "bob"), "bob")
        carol_cookie = sign_up(doomed, "carol")
        await sockets.open(doomed, carol_cookie, "carol")
        await sockets.open(survivor, carol_cookie, "carol")  # carol stays online
        await bob.request(type="join", group="night")
        await alice.request(type="join", group="night")
        await alice.expect("presence", user="bob", online=True)
        await alice.expect("presence", user="carol", online=True)

        client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
        doomed_channel = await _worker_channel(client, redis_prefix, doomed.pid)
        group_keys = list(client.scan_iter(match=f"{redis_prefix}:layer:*group:*", count=1000))
        assert any(doomed_channel in client.zrange(k, 0, -1) for k in group_keys)

        doomed.kill()
        killed_at = time.monotonic()
        await alice.expect("presence", user="bob", online=False, timeout=20)
        elapsed = time.monotonic() - killed_at
        assert elapsed < 3 + 1, f"bob reported offline only after {elapsed:.1f}s"
        await alice.assert_nothing("presence", timeout=1.0)  # carol is still online
        who = await alice.request(type="who")
        assert who["online"] == ["alice", "carol"]
        members = await alice.request(type="members", group="night")
        assert {"user": "bob", "online": False}.items() <= next(
            m for m in members["members"] if m["user"] == "bob"
        ).items()

        # Its channel is gone from every layer group, not left to expire.
        deadline = time.monotonic() + 10
        while True:
            lingering = [
                key
                for key in client.scan_iter(match=f"{redis_prefix}:layer:*group:*", count=1000)
                if doomed_channel in client.zrange(key, 0, -1)
            ]
            if not lingering:
                break
            assert time.monotonic() < deadline, f"dead channel still in {lingering}"
            await asyncio.sleep(0.2)
        assert survivor.alive()


@pytest.mark.parametrize("phase", [0.0, 0.25, 0.5, 0.75])
async def test_killed_worker_users_go_offline_within_the_timeout_whatever_the_heartbeat_phase(
    redis_prefix, sockets, phase
):
    """kill -9 at quarter steps of the heartbeat period (2 s at a 6 s timeout).

    The scan for dead workers used to run with the heartbeat, every third of the
    timeout: up to 8 s here.
    """
    timeout = 6.0
    env = worker_env(
        redis_url=REDIS_URL, redis_prefix=redis_prefix, CHAT_PRESENCE_TIMEOUT=str(timeout)
    )
    with running_workers(2, env) as (survivor, doomed):
        alice = await sockets.open(survivor, sign_up(survivor, "alice"), "alice")
        await sockets.open(doomed, sign_up(doomed, "bob"), "bob")
        await alice.expect("presence", user="bob", online=True)
        client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
        await _worker_channel(client, redis_prefix, doomed.pid)
        # Wait for the doomed worker's next heartbeat, then kill it `phase` of a period later.
        workers_key = f"{redis_prefix}:presence:workers"
        doomed_id = next(w for w in client.zrange(workers_key, 0, -1) if f"-{doomed.pid}-" in w)
        beat = client.zscore(workers_key, doomed_id)
        deadline = time.monotonic() + 5
        while (latest := client.zscore(workers_key, doomed_id)) == beat:
            assert time.monotonic() < deadline, "the doomed worker stopped heartbeating"
            await asyncio.sleep(0.02)
        assert latest is not None
        await asyncio.sleep(max(0.0, latest + phase * timeout / 3 - time.time()))

        doomed.kill()
        killed_at = time.monotonic()
        await alice.expect("presence", user="bob", online=False, timeout=timeout + 5)
        elapsed = time.monotonic() - killed_at
        assert elapsed < timeout + 1, f"bob reported offline only after {elapsed:.1f}s"
        assert survivor.alive()


async def _worker_channel(client: redis.Redis, prefix: str, pid: int) -> str:
    """The layer channel of the worker process `pid`, as it heartbeats it."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for worker in client.zrange(f"{prefix}:presence:workers", 0, -1):
            if f"-{pid}-" in worker:
                channel = client.get(f"{prefix}:presence:channel:{worker}")
                if channel:
                    return channel
        await asyncio.sleep(0.2)
    raise AssertionError(f"worker {pid} never heartbeated its channel")


async def test_redis_outage_and_empty_restart_need_no_worker_restart(redis_prefix, sockets):
    with private_redis() as redis_server:
        env = worker_env(
            redis_url=redis_server.url, redis_prefix=redis_prefix, CHAT_PRESENCE_TIMEOUT="5"
        )
        with running_workers(2, env) as workers:
            first, second = workers
            alice_cookie = sign_up(first, "alice")
            bob_cookie = sign_up(second, "bob")
            alice = await sockets.open(first, alice_cookie, "alice")
            bob = await sockets.open(second, bob_cookie, "bob")
            await alice.expect("presence", user="bob", online=True)
            ack = await alice.request(type="send", to={"user": "bob"}, body="before")
            await bob.expect("message", id=ack["id"])
            pids = [w.pid for w in workers]

            redis_server.stop()
            during = await alice.request(type="send", to={"user": "bob"}, body="during", timeout=20)
            assert during["type"] == "ack", during
            assert await asyncio.to_thread(health_status, first) == 503
            assert await asyncio.to_thread(health_status, second) == 503
            assert (await alice.request(type="ping"))["type"] == "pong"
            history = await alice.request(type="history", of={"user": "bob"}, timeout=20)
            assert [m["body"] for m in history["messages"]] == ["before", "during"]

            redis_server.start()  # same port, nothing of the old state
            # Within 30 s every socket is told to reconnect (1012) ...
            for client in (alice, bob):
                assert await client.expect_close(timeout=30) == 1012
            # ... and reconnecting gets what was missed, then live delivery again.
            alice, bob, missed = await reconnect_until_live(
                sockets, (first, alice_cookie, "alice"), (second, bob_cookie, "bob"), ack["id"]
            )
            assert missed[0] == during["id"], missed
            assert (await bob.request(type="who"))["online"] == ["alice", "bob"]
            assert await asyncio.to_thread(health_status, first) == 200
            assert [w.pid for w in workers] == pids and all(w.alive() for w in workers)


async def reconnect_until_live(sockets, sender, receiver, since: int):
    """Reconnect both as a client does after a 1012, until a message goes live between them.

    A worker may reset its sockets once more just after they reconnected (a
    call had failed on a connection Redis dropped, so a message may have been
    delivered only locally): a client then reconnects again and syncs, as here.
    Returns both sockets and the ids the receiver synced, in order.
    """
    missed: list[int] = []
    for attempt in itertools.count(1):
        opened = []
        try:
            receiving = await sockets.open(*receiver)
            opened.append(receiving)
            synced = await receiving.request(type="sync", since=max([since, *missed]))
            missed += [m["id"] for m in synced["messages"]]
            sending = await sockets.open(*sender)
            opened.append(sending)
            live = await sending.request(type="send", to={"user": receiver[2]}, body="after")
            await receiving.expect("message", id=live["id"], timeout=10)
            return sending, receiving, missed
        except AssertionError:
            if attempt == 3 or not any(c.closed and c.close_code == 1012 for c in opened):
                raise


async def abandon_handshake(worker: Worker, cookie: str, after: float) -> None:
    """Ask for a chat socket, then drop the TCP connection `after` seconds later."""
    _reader, writer = await asyncio.open_connection("127.0.0.1", worker.port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET /ws/chat/ HTTP/1.1\r\nHost: 127.0.0.1:{worker.port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Origin: {worker.base_url}\r\nCookie: {cookie}\r\n\r\n"
        ).encode()
    )
    await writer.drain()
    await asyncio.sleep(after)
    writer.transport.abort()


async def test_handshakes_the_client_abandons_leave_nobody_online(redis_prefix, sockets):
    with running_workers(1, worker_env(redis_url=REDIS_URL, redis_prefix=redis_prefix)) as [worker]:
        alice = await sockets.open(worker, sign_up(worker, "alice"), "alice")
        bob_cookie = sign_up(worker, "bob")
        # Dropped at every stage of opening: before the upgrade is read, while
        # the session is loaded, while the socket is being attached.
        await asyncio.gather(
            *(abandon_handshake(worker, bob_cookie, after=n * 0.002) for n in range(40))
        )
        bob = await sockets.open(worker, bob_cookie, "bob")
        assert "bob" in (await alice.request(type="who"))["online"]
        await bob.close()

        # Had an abandoned socket stayed attached, bob would stay online.
        deadline = time.monotonic() + 10
        while "bob" in (await alice.request(type="who"))["online"]:
            assert time.monotonic() < deadline, "bob stays online after his last socket closed"
            await asyncio.sleep(0.1)


async def test_logout_closes_that_sessions_sockets_on_every_worker(two_workers, sockets):
    first, second = two_workers
    browser = HttpSession(first.base_url)
    cookie = browser.signup("alice")
    other_cookie = sign_up_again(second, "alice")
    tabs = [
        await sockets.open(first, cookie, "alice"),
        await sockets.open(second, cookie, "alice"),
    ]
    other_browser = await sockets.open(second, other_cookie, "alice")
    status, _ = await asyncio.to_thread(browser.post, "/accounts/logout/")
    assert status in (200, 302)
    for tab in tabs:
        assert await tab.expect_close(timeout=10) == 1008
    assert (await other_browser.request(type="ping"))["type"] == "pong"


async def test_sigterm_closes_sockets_with_1012_and_drops_presence_at_once(redis_prefix, sockets):
    # The presence timeout is long: only the worker's own clean-up can be fast.
    env = worker_env(redis_url=REDIS_URL, redis_prefix=redis_prefix, CHAT_PRESENCE_TIMEOUT="60")
    with running_workers(2, env) as (staying, leaving):
        alice = await sockets.open(staying, sign_up(staying, "alice"), "alice")
        bob = await sockets.open(leaving, sign_up(leaving, "bob"), "bob")
        await alice.expect("presence", user="bob", online=True)
        stopped_at = time.monotonic()
        leaving.signal(signal.SIGTERM)
        assert await bob.expect_close(timeout=10) == 1012
        await alice.expect("presence", user="bob", online=False, timeout=10)
        assert time.monotonic() - stopped_at < 10
        assert (await alice.request(type="who"))["online"] == ["alice"]
        await asyncio.to_thread(leaving.wait_exit, 15)


async def test_slow_reader_is_closed_and_nobody_else_loses_messages(redis_prefix, sockets):
    # More than the kernel's socket buffers can absorb (Linux autotunes a
    # send buffer up to 4 MiB), so the worker's own buffer has to grow.
    body_chars, count = 300_000, 25
    env = worker_env(
        redis_url=REDIS_URL,
        redis_prefix=redis_prefix,
        CHAT_MAX_BUFFERED_BYTES="65536",
        CHAT_MAX_BODY_CHARS=str(body_chars),
        CHAT_MAX_FRAME_BYTES="400000",
        CHAT_RATE_BURST="1000",
        CHAT_RATE_PER_SECOND="1000",
    )
    with running_workers(2, env) as (first, second):
        slow_cookie = sign_up(first, "slow")
        bob = await sockets.open(first, sign_up(first, "bob"), "bob")
        carol = await sockets.open(second, sign_up(second, "carol"), "carol")
        alice = await sockets.open(second, sign_up(second, "alice"), "alice")
        slow = await asyncio.to_thread(_open_non_reading_socket, first, slow_cookie)
        try:
            await bob.expect("presence", user="slow", online=True)
            acks = []
            for i in range(count):
                body = f"{i:03d}" + "x" * (body_chars - 3)
                acks.append(await alice.request(type="send", to={"all": True}, body=body))
            # The slow socket is shed (its user goes offline) ...
            await bob.expect("presence", user="slow", online=False, timeout=30)
            # ... while everyone else got every message, in order.
            for client in (bob, carol, alice):
                for ack in acks:
                    await client.expect("message", id=ack["id"], timeout=20)
        finally:
            slow.close()
        # The shed client reconnects and can sync up to the last message: nothing
        # was lost for it either.
        again = await sockets.open(first, slow_cookie, "slow")
        assert again.hello["last_id"] == acks[-1]["id"]
        assert first.alive()


def _open_non_reading_socket(worker: Worker, cookie: str) -> socket.socket:
    """A websocket handshake over a raw socket with a tiny receive buffer, then
    nothing is ever read again."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", worker.port))
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        "GET /ws/chat/ HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{worker.port}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"Origin: {worker.base_url}\r\nCookie: sessionid={cookie}\r\n\r\n"
    )
    sock.sendall(request.encode())
    response = b""
    while b"\r\n\r\n" not in response:
        chunk = sock.recv(1)
        assert chunk, f"handshake failed: {response!r}"
        response += chunk
    assert response.startswith(b"HTTP/1.1 101"), response
    return sock


async def test_revoking_access_closes_the_users_sockets_on_every_worker(
    two_workers, sockets, settings, redis_prefix
):
    first, second = two_workers
    browser = HttpSession(first.base_url)
    cookie = browser.signup("alice")
    bob = await sockets.open(first, sign_up(second, "bob"), "bob")

    tabs = [await sockets.open(w, cookie, "alice") for w in (first, second)]
    status, _ = await asyncio.to_thread(
        browser.post,
        "/accounts/password_change/",
        {
            "old_password": "a-Long-passw0rd!",
            "new_password1": "another-Long-passw0rd!",
            "new_password2": "another-Long-passw0rd!",
        },
    )
    assert status == 200, "the password change did not go through"
    for tab in tabs:
        assert await tab.expect_close(timeout=5) == 1008

    # The browser that changed it kept its login; its new sockets live until
    # the user is deactivated, from any process sharing the Redis.
    cookie = browser.cookie("sessionid")
    assert cookie
    tabs = [await sockets.open(w, cookie, "alice") for w in (first, second)]
    use_redis_layer(settings, redis_prefix)
    alice = await sync_to_async(get_user_model().objects.get)(username="alice")
    alice.is_active = False
    await sync_to_async(alice.save)()
    for tab in tabs:
        assert await tab.expect_close(timeout=5) == 1008
    assert (await bob.request(type="ping"))["type"] == "pong"


async def test_the_sockets_per_user_cap_counts_every_worker(redis_prefix, sockets):
    import websockets

    env = worker_env(redis_url=REDIS_URL, redis_prefix=redis_prefix, CHAT_SOCKETS_PER_USER="2")
    with running_workers(2, env) as (first, second):
        cookie = sign_up(first, "alice")
        await sockets.open(first, cookie, "alice")
        await sockets.open(first, cookie, "alice")

        async with websockets.connect(
            second.base_url.replace("http://", "ws://", 1) + "/ws/chat/",
            origin=second.base_url,
            additional_headers={"Cookie": f"sessionid={cookie}"},
            open_timeout=10,
        ) as refused:
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(refused.recv(), 10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4429
