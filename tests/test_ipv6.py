"""IPv6 clients are counted by network (CHAT_IPV6_PREFIX) by every per-address limit.

Against a real daphne listening on ::1, sharing a real Redis reached over
::1: behind a trusted proxy (::1 itself, naming its clients in
X-Forwarded-For), thirty addresses of one /64 are one client for account
creation, the login throttle and the socket cap; and a client talking to the
IPv6 listener directly is counted too.
"""

from __future__ import annotations

import json
import uuid

import pytest
import redis
import websockets

from tests.chatclient import TIMEOUT, open_real_socket
from tests.conftest import REDIS_URL, flush_prefix, require_redis
from tests.servers import HttpSession, Worker, worker_env

pytestmark = [pytest.mark.processes, pytest.mark.django_db(transaction=True)]

PASSWORD = "a-Long-passw0rd!"
# The shared Redis of the tests, reached over IPv6.
REDIS_V6_URL = "redis://[::1]:6379/0"


def require_redis_on_ipv6() -> redis.Redis:
    require_redis()
    client = redis.Redis.from_url(REDIS_V6_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(
            f"These tests need the Redis of REDIS_URL={REDIS_URL} to listen on ::1 too ({exc}): "
            "start it with `--bind 127.0.0.1 ::1`.",
            pytrace=False,
        )
    return client


@pytest.fixture(scope="module")
def v6_worker(django_db_setup, django_db_blocker):
    client = require_redis_on_ipv6()
    prefix = f"chat-test-{uuid.uuid4().hex[:12]}"
    env = worker_env(
        redis_url=REDIS_V6_URL,
        redis_prefix=prefix,
        CHAT_TRUSTED_PROXIES="::1",
        CHAT_ACCOUNTS_PER_ADDRESS="3",
        CHAT_LOGIN_FAILURES="3",
        CHAT_SOCKETS_PER_ADDRESS="2",
    )
    worker = Worker(env, name="v6worker", host="::1")
    try:
        with django_db_blocker.unblock():
            worker.start()
            yield worker
    finally:
        worker.stop()
        worker.print_log()
        flush_prefix(client, prefix)


def client_from(worker: Worker, address: str | None) -> HttpSession:
    headers = {"X-Forwarded-For": address} if address else {}
    return HttpSession(worker.base_url, headers=headers)


def guest_status(worker: Worker, address: str | None) -> int:
    status, _ = client_from(worker, address).post("/accounts/guest/")
    return status


def login_status(worker: Worker, address: str, username: str, password: str) -> int:
    status, _ = client_from(worker, address).post(
        "/accounts/login/", {"username": username, "password": password, "next": "/"}
    )
    return status


def test_guests_from_thirty_addresses_of_one_network_are_one_client(v6_worker):
    statuses = [guest_status(v6_worker, f"2001:db8:a:1::{n:x}") for n in range(1, 31)]

    # Each guest is redirected to the chat (200 once followed).
    assert statuses == [200] * 3 + [429] * 27
    assert guest_status(v6_worker, "2001:db8:a:2::1") == 200


def test_failed_logins_from_one_network_lock_it(v6_worker):
    client_from(v6_worker, "2001:db8:b:9::1").signup("ivy")
    failures = [
        login_status(v6_worker, f"2001:db8:b:1::{n:x}", name, "wrong")
        for n, name in ((1, "cy"), (2, "dee"), (3, "eve"))
    ]

    assert failures == [200, 200, 429]
    assert login_status(v6_worker, "2001:db8:b:1:ffff::4", "ivy", PASSWORD) == 429
    assert login_status(v6_worker, "2001:db8:b:2::1", "ivy", PASSWORD) == 200


async def first_event(worker: Worker, cookie: str, address: str) -> dict:
    """The first frame of a new socket from `address`, or its close as {"close": code}."""
    websocket = await websockets.connect(
        worker.base_url.replace("http://", "ws://", 1) + "/ws/chat/",
        origin=worker.base_url,
        additional_headers={"Cookie": f"sessionid={cookie}", "X-Forwarded-For": address},
        open_timeout=TIMEOUT,
    )
    try:
        return json.loads(await websocket.recv())
    except websockets.ConnectionClosed as closed:
        return {"close": closed.rcvd.code if closed.rcvd else None}
    finally:
        await websocket.close()


async def test_sockets_from_one_network_share_its_cap(v6_worker):
    cookie = client_from(v6_worker, "2001:db8:c:9::1").signup("jay")
    kept = [
        await open_real_socket(
            v6_worker.base_url, cookie, "jay", headers={"X-Forwarded-For": f"2001:db8:c:1::{n}"}
        )
        for n in (1, 2)
    ]
    try:
        assert await first_event(v6_worker, cookie, "2001:db8:c:1:ffff::3") == {"close": 4429}
        assert (await first_event(v6_worker, cookie, "2001:db8:c:2::1"))["type"] == "hello"
    finally:
        for client in kept:
            await client.close()


def test_a_client_on_the_ipv6_listener_itself_is_counted(django_db_setup, django_db_blocker):
    """No proxy: the peer ::1 is the client, and its network is held to the limit."""
    env = worker_env(CHAT_ACCOUNTS_PER_ADDRESS="2")
    worker = Worker(env, name="v6direct", host="::1")
    try:
        with django_db_blocker.unblock():
            worker.start()
            assert [guest_status(worker, None) for _ in range(3)] == [200, 200, 429]
    finally:
        worker.stop()
        worker.print_log()
