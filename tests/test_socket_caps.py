"""chat.sockets.socket_caps: open sockets per user (every worker) and per client address.

In process on the in-memory layer and on a real Redis; across two real
workers in tests/test_workers.py.
"""

from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator

from chat.protocol import CLOSE_TOO_MANY_SOCKETS
from tests.chatclient import TIMEOUT, ChatTestClient, session_cookie_for, socket_headers

pytestmark = pytest.mark.django_db(transaction=True)


async def open_from(user, address: str = "203.0.113.7") -> tuple[WebsocketCommunicator, int | None]:
    """A socket of `user` from `address`: (communicator, None) once greeted, or the close code."""
    communicator, event = await open_and_wait(user, address)
    return communicator, (event.get("code") if event["type"] == "__close__" else None)


async def open_and_wait(user, address: str = "203.0.113.7") -> tuple[WebsocketCommunicator, dict]:
    """A socket of `user` from `address`, and its first event: `hello` or `__close__`."""
    from chatsite.asgi import application

    cookie = await sync_to_async(session_cookie_for)(user)
    communicator = WebsocketCommunicator(
        application, "/ws/chat/", headers=[(b"host", b"localhost"), *socket_headers(cookie)]
    )
    communicator.scope["client"] = (address, 50000)
    connected, code = await communicator.connect(timeout=TIMEOUT)
    assert connected, code
    client = ChatTestClient(communicator, user.get_username())
    event = await client._wait_for(
        lambda e: e["type"] in ("hello", "__close__"), TIMEOUT, "hello or a close"
    )
    return communicator, event


@pytest.fixture
async def opened():
    sockets: list[WebsocketCommunicator] = []
    yield sockets
    for communicator in sockets:
        await communicator.disconnect()


async def test_a_user_past_the_cap_is_closed_with_4429(layer, settings, opened, alice, bob):
    settings.CHAT_SOCKETS_PER_USER = 3
    for _ in range(3):
        communicator, closed = await open_from(alice)
        opened.append(communicator)
        assert closed is None

    refused, closed = await open_and_wait(alice)
    opened.append(refused)
    assert (closed["code"], closed["reason"]) == (CLOSE_TOO_MANY_SOCKETS, "too_many_sockets")

    bobs, closed = await open_from(bob)  # others are not held back
    opened.append(bobs)
    assert closed is None

    await opened.pop(0).disconnect()
    again, closed = await open_from(alice)  # a closed socket frees its place
    opened.append(again)
    assert closed is None


async def test_an_address_past_the_cap_is_closed_with_4429(layer, settings, opened, alice, bob):
    settings.CHAT_SOCKETS_PER_ADDRESS = 2
    for user in (alice, bob):
        communicator, closed = await open_from(user, "198.51.100.4")
        opened.append(communicator)
        assert closed is None

    refused, closed = await open_from(alice, "198.51.100.4")
    opened.append(refused)
    assert closed == CLOSE_TOO_MANY_SOCKETS

    elsewhere, closed = await open_from(alice, "198.51.100.5")
    opened.append(elsewhere)
    assert closed is None


async def test_an_ipv6_network_is_one_address_for_the_cap(layer, settings, opened, alice, bob):
    settings.CHAT_SOCKETS_PER_ADDRESS = 2
    for user, address in ((alice, "2001:db8:7:7::1"), (bob, "2001:db8:7:7::2")):
        communicator, closed = await open_from(user, address)
        opened.append(communicator)
        assert closed is None

    refused, closed = await open_from(alice, "2001:db8:7:7:ffff::3")
    opened.append(refused)
    assert closed == CLOSE_TOO_MANY_SOCKETS

    elsewhere, closed = await open_from(alice, "2001:db8:7:8::1")
    opened.append(elsewhere)
    assert closed is None


async def test_zero_turns_the_caps_off(layer, settings, opened, alice):
    settings.CHAT_SOCKETS_PER_USER = 0
    settings.CHAT_SOCKETS_PER_ADDRESS = 0
    settings.CHAT_RATE_BURST = 1000  # each handshake spends from it: not what is tested here
    for _ in range(25):
        communicator, closed = await open_from(alice)
        opened.append(communicator)
        assert closed is None


async def test_a_burst_of_handshakes_on_one_worker_stays_within_the_cap(
    layer, settings, opened, alice
):
    settings.CHAT_SOCKETS_PER_USER = 3

    outcomes = await asyncio.gather(*(open_from(alice) for _ in range(8)))
    opened.extend(communicator for communicator, _ in outcomes)

    codes = sorted((closed or 0) for _, closed in outcomes)
    assert codes == [0, 0, 0] + [CLOSE_TOO_MANY_SOCKETS] * 5


async def test_a_handshake_spends_from_the_users_command_budget(
    layer, settings, opened, alice, bob
):
    """A reconnect loop (each open loads and subscribes to every group) is held to the budget."""
    from chat.ratelimit import command_cost

    settings.CHAT_RATE_BURST = 3 * command_cost("connect")
    settings.CHAT_RATE_PER_SECOND = 0.001
    for _ in range(3):
        communicator, closed = await open_from(alice)
        assert closed is None
        await communicator.disconnect()  # closed at once: the cap is not what stops it

    refused, closed = await open_and_wait(alice)
    opened.append(refused)
    # The reason tells a budget (back within seconds) from a cap (until a socket closes).
    assert (closed["type"], closed["code"], closed["reason"]) == (
        "__close__",
        CLOSE_TOO_MANY_SOCKETS,
        "rate_limited",
    )

    bobs, closed = await open_from(bob)  # a budget of his own
    opened.append(bobs)
    assert closed is None
