"""The `/socket` endpoint: classic clients and JSON clients chat with each other.

Classic sockets go through the real ASGI application (origin check, session
auth, routing) with Channels' WebsocketCommunicator, on both channel layers.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque

import orjson
import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.test import Client

from chat import protocol
from chat.protocol import Address, ChatError
from chat.ratelimit import command_cost
from chat.sockets.classic import ClassicFormat, classic_command, guest_suffix
from chat.sockets.socket import ChatSocket
from chat.worker import current_worker
from tests.chatclient import TIMEOUT, ChatTestClient, session_cookie_for, socket_headers
from tests.conftest import make_user

pytestmark = pytest.mark.django_db(transaction=True)


async def next_output(communicator: WebsocketCommunicator, timeout: float) -> dict:
    """The application's next message, or TimeoutError.

    Unlike `receive_output`, a timeout does not cancel the application, so
    "nothing arrived" can be checked and the socket still used afterwards.
    """
    if communicator.future.done() and communicator.output_queue.empty():
        communicator.future.result()  # the application's exception, if any
        raise TimeoutError
    async with asyncio.timeout(timeout):
        return await communicator.output_queue.get()


async def json_nothing(client: ChatTestClient, kind: str | None, timeout: float = 0.3) -> None:
    """A JSON client gets no event (of `kind`) within `timeout`; its socket stays usable."""
    await asyncio.sleep(timeout)
    while not client.communicator.output_queue.empty():
        await client._read_frame(TIMEOUT)
    unexpected = [e for e in client.inbox if kind is None or e["type"] == kind]
    assert not unexpected, f"{client.username} got unexpected {unexpected}"


class ClassicClient:
    """A classic client: plain-text frames in and out, every wait bounded."""

    def __init__(self, communicator: WebsocketCommunicator, username: str) -> None:
        self.communicator = communicator
        self.username = username
        self.inbox: deque[str] = deque()
        self.close_code: int | None = None
        self.closed = False

    async def send(self, frame: str) -> None:
        await self.communicator.send_to(text_data=frame)

    async def send_bytes(self, data: bytes) -> None:
        await self.communicator.send_to(bytes_data=data)

    async def _read(self, timeout: float) -> None:
        if self.closed:
            raise TimeoutError
        output = await next_output(self.communicator, timeout)
        if output["type"] == "websocket.close":
            self.closed = True
            self.close_code = output.get("code")
            return
        assert "text" in output and output.get("bytes") is None, output
        self.inbox.append(output["text"])

    async def _wait_for(self, matches, timeout: float, what: str) -> str:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for frame in self.inbox:
                if matches(frame):
                    self.inbox.remove(frame)
                    return frame
            remaining = deadline - loop.time()
            try:
                if remaining <= 0:
                    raise TimeoutError
                await self._read(remaining)
            except TimeoutError:
                raise AssertionError(
                    f"{self.username}: no {what} within {timeout}s; got {list(self.inbox)}"
                ) from None

    async def expect(self, frame: str, timeout: float = TIMEOUT) -> None:
        """Wait for exactly this frame; frames before it stay queued."""
        await self._wait_for(lambda f: f == frame, timeout, repr(frame))

    async def expect_error(self, code: str, timeout: float = TIMEOUT) -> str:
        """Wait for an error frame with this code (and a message for people)."""
        prefix = f"错误({code}):"
        frame = await self._wait_for(lambda f: f.startswith(prefix), timeout, prefix)
        assert len(frame) > len(prefix), frame
        return frame

    async def expect_close(self, timeout: float = TIMEOUT) -> int | None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not self.closed:
            remaining = deadline - asyncio.get_running_loop().time()
            assert remaining > 0, f"{self.username}: socket not closed within {timeout}s"
            await self._read(remaining)
        return self.close_code

    async def assert_nothing(self, timeout: float = 0.3) -> None:
        """No frame (beyond those already expected) arrives within `timeout`."""
        deadline = asyncio.get_running_loop().time() + timeout
        while (remaining := deadline - asyncio.get_running_loop().time()) > 0:
            try:
                await self._read(remaining)
            except TimeoutError:
                break
        assert not self.inbox, f"{self.username} got unexpected {list(self.inbox)}"
        assert not self.closed, f"{self.username}'s socket closed ({self.close_code})"

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            await self.communicator.disconnect()


async def _sockets_of(username: str) -> set:
    hub = await current_worker().hub()
    return {conn for conn in hub.sockets if conn.username == username}


async def try_classic(
    user=None, *, query: str = "", origin: str | None = "http://localhost", cookie: str = ""
) -> tuple[bool, WebsocketCommunicator]:
    """Attempt a classic handshake, logged in as `user` if given; (accepted, communicator)."""
    from chatsite.asgi import application

    if user is not None and not cookie:
        cookie = await sync_to_async(session_cookie_for)(user)
    path = "/socket" + (f"?{query}" if query else "")
    headers = socket_headers(cookie or None, origin)
    communicator = WebsocketCommunicator(application, path, headers=headers)
    connected, _ = await communicator.connect(timeout=TIMEOUT)
    if not connected:
        await communicator.disconnect(timeout=TIMEOUT)
    return connected, communicator


async def json_peer(connect, classic_client: ClassicClient, user) -> ChatTestClient:
    """A JSON client for `user`, once the classic client has seen it come online."""
    client = await connect(user)
    await classic_client.expect(f"用户({user.get_username()})登录了")
    return client


async def open_classic(
    user=None, *, query: str = "", username: str = "", cookie: str = ""
) -> ClassicClient:
    """An accepted classic socket, once the hub has registered it."""
    username = username or user.get_username()
    before = await _sockets_of(username)
    connected, communicator = await try_classic(user, query=query, cookie=cookie)
    assert connected, f"classic handshake refused for {username}"
    # Classic clients get no greeting: wait until the socket is fully open
    # (registered, subscribed, announced), as a JSON client waits for hello.
    deadline = asyncio.get_running_loop().time() + TIMEOUT
    while not any(
        conn.out is not None and conn.out.pending is None
        for conn in await _sockets_of(username) - before
    ):
        assert asyncio.get_running_loop().time() < deadline, f"{username} never opened"
        await asyncio.sleep(0.01)
    return ClassicClient(communicator, username)


@pytest.fixture
async def classic(transactional_db):
    """`await classic(user)` opens a classic socket; all are closed at the end."""
    opened: list[ClassicClient] = []

    async def _classic(user=None, **kwargs) -> ClassicClient:
        client = await open_classic(user, **kwargs)
        opened.append(client)
        return client

    yield _classic
    for client in opened:
        await client.close()


# -- translation, without a socket -------------------------------------------


def parse(frame: str):
    return classic_command(frame, max_bytes=65536, max_body_chars=4000)


def test_frame_targets_become_addresses():
    assert parse("all,hi").to == Address("all")
    assert parse("groupA,hi").to == Address("group", "A")
    assert parse("bob,hi").to == Address("user", "bob")
    assert parse("login,anything at all") is None


def test_text_after_the_first_comma_is_kept_whole():
    command = parse("bob, a,b,,c ,")
    assert command.body == " a,b,,c ,"


async def test_hub_events_become_classic_frames_without_parsing_json(monkeypatch):
    """The hub's frames are translated from their events; their JSON is never parsed back."""
    socket = ChatSocket(ClassicFormat())
    written: list[str] = []

    async def write(frame: str) -> None:
        written.append(frame)

    monkeypatch.setattr(ChatSocket, "write", lambda self, frame: write(frame))
    monkeypatch.setattr(orjson, "loads", _no_parsing)
    monkeypatch.setattr(json, "loads", _no_parsing)
    events = [
        {"type": "presence", "user": "bob", "online": True},
        {"type": "joined", "group": "A", "user": "bob"},
        {"type": "presence", "user": "carol", "online": False},
        {"type": "message", "id": 1, "from": "a", "to": {"group": "G 1"}, "body": "x,y", "ts": "t"},
        {"type": "ack", "id": 1, "ts": "t"},
        {"type": "error", "code": "too_large", "message": "m"},
    ]

    await socket.write_events("not JSON: the text is not read", events)

    assert written == [
        "用户(bob)登录了",
        "用户(carol)退出了",
        "用户(a=>G 1):x,y",
        "错误(too_large):m",
    ]


def _no_parsing(*args: object, **kwargs: object) -> object:
    raise AssertionError("a classic socket parsed JSON")


@pytest.mark.parametrize(
    ("query", "suffix"),
    [
        (b"userId=42", "42"),
        (b"userId=000000000001", "000000000001"),
        (b"other=1&userId=7", "7"),
        (b"", None),
        (b"userId=", None),
        (b"userId=1234567890123", None),
        (b"userId=12a", None),
        (b"userId=-1", None),
        (b"userId=%D9%A1", None),  # ARABIC-INDIC DIGIT ONE
        (b"userId=1&userId=2", None),
        (b"userid=1", None),
    ],
)
def test_guest_user_ids_are_one_to_twelve_ascii_digits(query, suffix):
    assert guest_suffix(query) == suffix


# -- classic and JSON clients together ---------------------------------------


async def test_direct_messages_both_ways(layer, connect, classic, alice, bob):
    a = await classic(alice)
    b = await json_peer(connect, a, bob)
    await a.send("bob,hello, bob, how are you?")
    message = await b.expect("message", **{"from": "alice"})
    assert message["to"] == {"user": "bob"}
    assert message["body"] == "hello, bob, how are you?"
    # The sender's own copy is its confirmation (there is no classic ack).
    await a.expect("用户(alice=>bob):hello, bob, how are you?")

    ack = await b.request(type="send", to={"user": "alice"}, body="fine, thanks")
    await a.expect("用户(bob=>alice):fine, thanks")
    await b.expect("message", id=ack["id"])
    await a.assert_nothing()


async def test_broadcasts_both_ways(layer, connect, classic, alice, bob, carol):
    a = await classic(alice)
    b = await json_peer(connect, a, bob)
    c = await json_peer(connect, a, carol)
    await a.send("all,hi, everyone")
    for client in (b, c):
        message = await client.expect("message", **{"from": "alice"})
        assert message["to"] == {"all": True}
        assert message["body"] == "hi, everyone"
    await a.expect("用户(alice=>all):hi, everyone")

    await b.request(type="send", to={"all": True}, body="hi alice")
    await a.expect("用户(bob=>all):hi alice")
    await a.assert_nothing()


async def test_group_messages_join_first_and_go_both_ways(
    layer, connect, classic, alice, bob, carol
):
    a = await classic(alice)
    b = await json_peer(connect, a, bob)
    c = await json_peer(connect, a, carol)
    await b.request(type="join", group="A")

    await a.send("groupA,hi A, it's alice")
    joined = await b.expect("joined", group="A")
    assert joined["user"] == "alice"
    message = await b.expect("message", **{"from": "alice"})
    assert message["to"] == {"group": "A"}
    assert message["body"] == "hi A, it's alice"
    await a.expect("用户(alice=>A):hi A, it's alice")
    await json_nothing(c, "message")  # carol is not in A

    await b.request(type="send", to={"group": "A"}, body="welcome")
    await a.expect("用户(bob=>A):welcome")
    # A second message does not join again: nobody is told twice.
    await a.send("groupA,thanks")
    await b.expect("message", body="thanks")
    await a.expect("用户(alice=>A):thanks")
    await json_nothing(b, "joined")
    # joined, left and ack have no classic form.
    await a.assert_nothing()


async def test_group_left_elsewhere_is_joined_again(layer, connect, classic, alice, bob):
    b = await connect(bob)
    await b.request(type="join", group="B")
    a = await classic(alice)
    await a.send("groupB,first")
    await b.expect("message", body="first")
    json_alice = await connect(alice)
    await json_alice.request(type="leave", group="B")
    await b.expect("left", user="alice")

    await a.send("groupB,second")
    await b.expect("joined", user="alice", group="B")
    await b.expect("message", body="second")
    await a.expect("用户(alice=>B):first")
    await a.expect("用户(alice=>B):second")


async def test_a_group_joined_on_json_is_known_to_classic(layer, connect, classic, alice, bob):
    json_alice = await connect(alice)
    await json_alice.request(type="join", group="C")
    b = await connect(bob)
    await b.request(type="join", group="C")
    a = await classic(alice)
    await a.send("groupC,from classic")
    await b.expect("message", body="from classic")
    await json_nothing(b, "joined")


async def test_presence_both_ways(layer, connect, classic, alice, bob, carol):
    b = await connect(bob)
    a = await classic(alice)
    await b.expect("presence", user="alice", online=True)

    c = await connect(carol)
    await a.expect("用户(carol)登录了")
    await c.close()
    await a.expect("用户(carol)退出了")

    await a.close()
    await b.expect("presence", user="alice", online=False)


async def test_login_frame_is_accepted_and_ignored(layer, connect, classic, alice, bob):
    a = await classic(alice)
    b = await json_peer(connect, a, bob)
    await a.send("login,alice")
    await a.send("login,")
    await a.assert_nothing()
    await json_nothing(b, "message")


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("no comma here", protocol.BAD_COMMAND),
        (",text without a target", protocol.BAD_COMMAND),
        ("nobody,hi", protocol.NO_SUCH_USER),
        ("not a name!,hi", protocol.NO_SUCH_USER),
        ("group,hi", protocol.BAD_GROUP),
        ("group bad*name,hi", protocol.BAD_GROUP),
        ("all,", protocol.EMPTY_BODY),
        ("bob,  \n ", protocol.EMPTY_BODY),
        ("all,a\x00b", protocol.BAD_COMMAND),
        ("all," + "x" * 401, protocol.TOO_LARGE),  # body over CHAT_MAX_BODY_CHARS
        ("all," + "😀" * 300, protocol.TOO_LARGE),  # 300 characters, but over 1024 bytes
    ],
)
async def test_bad_frames_get_an_error_and_the_socket_stays_open(
    layer, settings, connect, classic, alice, bob, frame, code
):
    settings.CHAT_MAX_BODY_CHARS = 400
    settings.CHAT_MAX_FRAME_BYTES = 1024
    a = await classic(alice)
    b = await json_peer(connect, a, bob)
    await a.send(frame)
    await a.expect_error(code)
    await a.send("bob,still here")
    await a.expect("用户(alice=>bob):still here")
    await b.expect("message", body="still here")
    await json_nothing(b, "message")
    await a.assert_nothing()


async def test_binary_frames_are_refused_with_an_error(layer, classic, alice):
    a = await classic(alice)
    await a.send_bytes(b"all,hi")
    await a.expect_error(protocol.BINARY_NOT_SUPPORTED)
    await a.send("alice,note to self")
    await a.expect("用户(alice=>alice):note to self")


async def test_sending_too_fast_is_rate_limited(layer, settings, connect, classic, alice, bob):
    settings.CHAT_RATE_BURST = command_cost("connect") + 2  # the socket, then two sends
    settings.CHAT_RATE_PER_SECOND = 0.01
    b = await connect(bob)
    a = await classic(alice)
    for text in ("one", "two", "three"):
        await a.send(f"bob,{text}")
    await a.expect_error(protocol.RATE_LIMITED)
    await b.expect("message", body="one")
    await b.expect("message", body="two")
    await json_nothing(b, "message")


async def test_a_store_failure_is_unavailable(layer, monkeypatch, classic, alice, bob):
    def failing_store(requests):
        return [
            ChatError(protocol.UNAVAILABLE, "the message store failed; nothing was stored")
            for _ in requests
        ]

    monkeypatch.setattr("chat.send_queue.message_send_many", failing_store)
    a = await classic(alice)
    await a.send("bob,lost?")
    await a.expect_error(protocol.UNAVAILABLE)
    await a.assert_nothing()


async def test_an_unexpected_failure_is_unavailable(layer, monkeypatch, classic, alice, bob):
    def broken_store(requests):
        raise RuntimeError("boom")

    monkeypatch.setattr("chat.send_queue.message_send_many", broken_store)
    a = await classic(alice)
    await a.send("bob,lost?")
    await a.expect_error(protocol.UNAVAILABLE)
    await a.assert_nothing()


async def test_a_client_that_keeps_misbehaving_is_closed(layer, settings, classic, alice):
    settings.CHAT_MAX_ERRORS_PER_MINUTE = 3
    a = await classic(alice)
    for _ in range(3):
        await a.send("no comma")
        await a.expect_error(protocol.BAD_COMMAND)
    await a.send("no comma")
    assert await a.expect_close() == protocol.CLOSE_POLICY_VIOLATION


# -- who is speaking -----------------------------------------------------------


async def test_anonymous_user_id_becomes_a_new_guest(layer, settings, connect, classic, bob):
    settings.CHAT_GUEST_LOGIN = True
    b = await connect(bob)
    guest = await classic(query="userId=123456789012", username="guest-123456789012")
    await b.expect("presence", user="guest-123456789012", online=True)
    await guest.send("bob,hi from a guest")
    message = await b.expect("message", body="hi from a guest")
    assert message["from"] == "guest-123456789012"
    await b.request(type="send", to={"user": "guest-123456789012"}, body="hi guest")
    await guest.expect("用户(bob=>guest-123456789012):hi guest")


async def test_an_existing_guest_name_is_refused(layer, settings, classic):
    settings.CHAT_GUEST_LOGIN = True
    first = await classic(query="userId=7", username="guest-7")
    accepted, _ = await try_classic(query="userId=7")
    assert not accepted
    await first.close()
    # Not even once the first connection is gone: the name belongs to someone.
    accepted, _ = await try_classic(query="userId=7")
    assert not accepted


@pytest.mark.parametrize(
    "query", ["", "userId=", "userId=abc", "userId=1234567890123", "userId=1.5", "userId=%20"]
)
async def test_anonymous_without_a_valid_user_id_is_refused(layer, settings, query):
    settings.CHAT_GUEST_LOGIN = True
    accepted, _ = await try_classic(query=query)
    assert not accepted
    assert not await _guest_exists()


async def test_user_ids_are_refused_when_guests_are_off(layer, settings):
    settings.CHAT_GUEST_LOGIN = False
    accepted, _ = await try_classic(query="userId=55")
    assert not accepted
    assert not await _guest_exists()


async def test_a_logged_in_clients_user_id_is_ignored(
    layer, settings, connect, classic, alice, bob
):
    settings.CHAT_GUEST_LOGIN = True
    b = await connect(bob)
    a = await classic(alice, query="userId=99")
    await b.expect("presence", user="alice", online=True)
    await a.send("bob,who am i")
    message = await b.expect("message", body="who am i")
    assert message["from"] == "alice"
    assert not await _guest_exists()


async def test_logging_out_closes_the_classic_socket(layer, classic, alice):
    cookie = await sync_to_async(session_cookie_for)(alice)
    a = await classic(alice, cookie=cookie)
    await sync_to_async(_log_out)(cookie)
    assert await a.expect_close() == protocol.CLOSE_POLICY_VIOLATION


def _log_out(cookie: str) -> None:
    client = Client()
    client.cookies["sessionid"] = cookie
    assert client.post("/accounts/logout/").status_code == 302


async def test_a_foreign_origin_is_refused(layer, alice):
    accepted, _ = await try_classic(alice, origin="http://evil.example")
    assert not accepted


async def test_a_guest_with_an_existing_registered_style_name_cannot_be_taken(layer, settings):
    settings.CHAT_GUEST_LOGIN = True
    await make_user("guest-31")
    accepted, _ = await try_classic(query="userId=31")
    assert not accepted


@sync_to_async
def _guest_exists() -> bool:
    return get_user_model().objects.filter(username__startswith="guest-").exists()


# -- the classic page ------------------------------------------------------------


def test_classic_page_offers_guest_ids_to_anonymous_visitors(client, settings):
    settings.CHAT_GUEST_LOGIN = True
    page = client.get("/classic/").content.decode()
    assert 'id="user-id"' in page and "guest-ID" in page
    assert "chat/classic.js" in page


def test_classic_page_asks_to_log_in_when_guests_are_off(client, settings):
    settings.CHAT_GUEST_LOGIN = False
    page = client.get("/classic/").content.decode()
    assert "guest ids are turned off" in page
    assert "/accounts/login/?next=/classic/" in page


def test_classic_page_names_the_signed_in_user(client, alice):
    client.force_login(alice)
    page = client.get("/classic/").content.decode()
    assert '<strong id="me">alice</strong>' in page


async def test_edits_deletes_and_reactions_are_not_shown_here(layer, connect, classic, alice, bob):
    """The plain-text endpoint is unchanged by protocol 1.2 (docs/protocol.md)."""
    a = await classic(alice)
    b = await json_peer(connect, a, bob)
    sent = await b.request(type="send", to={"all": True}, body="before")
    await a.expect("用户(bob=>all):before")

    assert (await b.request(type="edit", id=sent["id"], body="after"))["type"] == "edited"
    assert (await b.request(type="react", id=sent["id"], emoji="👍"))["type"] == "reaction"
    assert (await b.request(type="delete", id=sent["id"]))["type"] == "deleted"

    await a.assert_nothing()


def test_the_classic_page_says_changes_are_not_shown(client, transactional_db):
    page = client.get("/classic/").content.decode()

    assert "edits, deletions and reactions" in page
