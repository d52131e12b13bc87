"""The `/ws/chat/` socket through the real ASGI application (origin check,
session auth, routing), on the in-memory layer and on a real Redis: every
command, event and error code of docs/protocol.md.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.db import DatabaseSyncToAsync, database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.db import DatabaseError

from chat import database, protocol
from chat.groups import group_join
from chat.messaging import message_history_page, message_send
from chat.models import ChatGroup, Message
from chat.protocol import Address
from chat.ratelimit import command_cost
from chat.sockets import auth
from chat.worker import current_worker
from tests.chatclient import TIMEOUT, ChatTestClient, session_cookie_for, socket_headers
from tests.conftest import make_user, refusing_message_inserts

pytestmark = pytest.mark.django_db(transaction=True)

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
ALL = {"all": True}


def to_user(name: str) -> dict[str, str]:
    return {"user": name}


def to_group(name: str) -> dict[str, str]:
    return {"group": name}


# -- helpers -------------------------------------------------------------------


async def send_ok(client: ChatTestClient, to: dict[str, Any], body: str) -> dict[str, Any]:
    """Send a message and return its `ack`."""
    ack = await client.request(type="send", to=to, body=body)
    assert ack["type"] == "ack", ack
    return ack


async def join(client: ChatTestClient, group: str) -> None:
    reply = await client.request(type="join", group=group)
    assert reply["type"] == "joined", reply


async def expect_error(
    client: ChatTestClient, code: str, *, ref: str = "e1", **command: Any
) -> dict[str, Any]:
    """Send `command` with `ref`; its answer must be the `code` error echoing it."""
    await client.send(ref=ref, **command)
    error = await client.expect("error", ref=ref)
    assert error["code"] == code, error
    assert isinstance(error["message"], str) and error["message"]
    return error


async def expect_frame_error(client: ChatTestClient, code: str) -> dict[str, Any]:
    """The error answering a frame that carried no usable ref."""
    error = await client.expect("error")
    assert error["code"] == code, error
    assert "ref" not in error
    assert isinstance(error["message"], str) and error["message"]
    return error


async def still_usable(client: ChatTestClient) -> None:
    assert (await client.request(type="ping"))["type"] == "pong"


def frame_position(client: ChatTestClient, **fields: Any) -> int:
    """Index of the first frame received carrying an event with these fields."""
    for index, text in enumerate(client.frames):
        frame = json.loads(text)
        events = frame["events"] if frame["type"] == "batch" else [frame]
        if any(all(e.get(k) == v for k, v in fields.items()) for e in events):
            return index
    raise AssertionError(f"{client.username} received no frame with {fields}")


def assert_utc_timestamp(ts: str) -> None:
    assert ISO_UTC.match(ts), ts
    moment = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    assert moment.utcoffset() == timedelta(0)
    assert abs(datetime.now(UTC) - moment) < timedelta(minutes=1)


@sync_to_async
def stored_bodies() -> list[str]:
    return list(Message.objects.order_by("id").values_list("body", flat=True))


@sync_to_async
def store(sender, to: Address, body: str) -> int:
    return message_send(sender=sender, to=to, body=body).id


@sync_to_async
def make_member(user, group: str) -> None:
    group_join(user=user, name=group)


@sync_to_async
def store_broadcasts(sender, count: int) -> list[int]:
    """Broadcasts created through the ORM in one query (fast); every message id."""
    now = datetime.now(UTC)
    Message.objects.bulk_create(
        Message(kind=Message.Kind.ALL, sender=sender, body=f"m{i}", created_at=now)
        for i in range(count)
    )
    return list(Message.objects.order_by("id").values_list("id", flat=True))


async def handshake(user=None, *, origin: str | None = "http://localhost") -> tuple[bool, Any]:
    from chatsite.asgi import application

    cookie = await sync_to_async(session_cookie_for)(user) if user is not None else None
    communicator = WebsocketCommunicator(
        application, "/ws/chat/", headers=socket_headers(cookie, origin)
    )
    connected, code = await communicator.connect(timeout=TIMEOUT)
    if connected:
        await communicator.disconnect()
    return connected, code


# -- handshake and hello -------------------------------------------------------


async def test_handshake_without_a_logged_in_session_is_refused(layer):
    connected, _ = await handshake(None)
    assert connected is False


@pytest.mark.parametrize("origin", ["http://evil.example", "http://localhost.evil.example", None])
async def test_handshake_from_a_foreign_or_missing_origin_is_refused(layer, alice, origin):
    connected, _ = await handshake(alice, origin=origin)
    assert connected is False


async def test_handshake_of_a_logged_in_session_from_the_site_is_accepted(layer, alice):
    connected, _ = await handshake(alice)
    assert connected is True


async def test_first_frame_is_hello(layer, connect, alice):
    client = await connect(alice)
    assert json.loads(client.frames[0])["type"] == "hello"


async def test_hello_names_the_user_who_is_online_their_groups_and_last_id(
    layer, connect, alice, bob, carol
):
    await make_member(alice, "B team")
    await make_member(alice, "A team")
    await make_member(bob, "Secret")
    visible = await store(bob, Address("user", "alice"), "hi alice")
    await store(bob, Address("user", "carol"), "not for alice")
    await store(bob, Address("group", "Secret"), "not for alice either")
    await connect(bob)
    hello = (await connect(alice)).hello
    assert hello["user"] == "alice"
    assert hello["online"] == ["alice", "bob"]
    assert hello["groups"] == ["A team", "B team"]
    assert hello["last_id"] == visible


async def test_hello_last_id_is_zero_when_nothing_is_visible(layer, connect, alice, bob, carol):
    await store(bob, Address("user", "carol"), "private")
    hello = (await connect(alice)).hello
    assert hello["last_id"] == 0
    assert hello["groups"] == []


async def test_sockets_opening_together_share_their_database_trips(layer, monkeypatch):
    """Session and user, groups, last_id: shared trips for a burst, not one each per socket."""
    users = [await make_user(f"burst{i}") for i in range(8)]
    await make_member(users[0], "Crew")
    cookies = [await sync_to_async(session_cookie_for)(user) for user in users]
    trips: list[int] = []
    session_loads_in_trip: list[int] = []
    handler = DatabaseSyncToAsync.thread_handler
    load_sessions = auth.sessions_and_users

    def counting_handler(self: Any, *args: Any, **kwargs: Any) -> Any:
        trips.append(1)
        return handler(self, *args, **kwargs)

    def counting_load(session_keys: list[str | None]) -> Any:
        session_loads_in_trip.extend([len(trips)] * len(session_keys))
        return load_sessions(session_keys)

    monkeypatch.setattr(DatabaseSyncToAsync, "thread_handler", counting_handler)
    monkeypatch.setattr(auth, "sessions_and_users", counting_load)
    from chatsite.asgi import application

    communicators = [
        WebsocketCommunicator(application, "/ws/chat/", headers=socket_headers(cookie))
        for cookie in cookies
    ]
    connected = await asyncio.gather(*(c.connect(timeout=TIMEOUT) for c in communicators))
    hellos = [await c.receive_json_from(timeout=TIMEOUT) for c in communicators]

    assert all(ok for ok, _ in connected)
    assert [hello["user"] for hello in hellos] == [user.username for user in users]
    assert hellos[0]["groups"] == ["Crew"] and hellos[1]["groups"] == []
    # The eight handshakes arrived together: their sessions load in at most
    # two trips (the first call goes at once, the others share the next).
    assert len(set(session_loads_in_trip)) <= 2, session_loads_in_trip
    assert len(trips) < 3 * len(users), len(trips)
    for communicator in communicators:
        await communicator.disconnect()


# -- send ----------------------------------------------------------------------


async def test_direct_message_reaches_every_socket_of_both_and_nobody_else(
    layer, connect, alice, bob, carol
):
    alice1, alice2 = await connect(alice), await connect(alice)
    bob1, bob2 = await connect(bob), await connect(bob)
    carol1 = await connect(carol)
    ack = await alice1.request(type="send", to=to_user("bob"), body="hello bob")
    assert ack["type"] == "ack"
    assert isinstance(ack["id"], int)
    assert_utc_timestamp(ack["ts"])
    expected = {
        "type": "message",
        "id": ack["id"],
        "from": "alice",
        "from_name": "alice",
        "to": {"user": "bob"},
        "body": "hello bob",
        "ts": ack["ts"],
        # Protocol 1.2
        "rev": ack["id"],
        "edited_at": None,
        "deleted": False,
        "reply_to": None,
        "reactions": [],
        "mentions": [],
        "files": [],
    }
    for client in (alice1, alice2, bob1, bob2):
        assert await client.expect("message", id=ack["id"]) == expected
    await carol1.assert_nothing("message")
    for client in (alice1, alice2, bob1, bob2):
        await client.assert_nothing("message", timeout=0.05)
    assert await stored_bodies() == ["hello bob"]


@pytest.mark.parametrize("to", [to_user("bob"), to_group("A"), ALL], ids=["user", "group", "all"])
async def test_sender_gets_ack_with_its_ref_before_its_own_message(layer, connect, alice, bob, to):
    await make_member(alice, "A")
    await make_member(bob, "A")
    sender = await connect(alice)
    await sender.send(type="send", to=to, body="ordered", ref="my-ref")
    ack = await sender.expect("ack", ref="my-ref")
    await sender.expect("message", id=ack["id"])
    assert frame_position(sender, type="ack") < frame_position(sender, type="message")


async def test_ack_and_answers_of_a_command_without_ref_carry_no_ref(layer, connect, alice):
    client = await connect(alice)
    await client.send(type="send", to=ALL, body="no ref")
    ack = await client.expect("ack")
    assert "ref" not in ack
    await client.send(type="ping")
    assert "ref" not in await client.expect("pong")


async def test_direct_message_to_self_reaches_each_own_socket_once(layer, connect, alice, bob):
    alice1, alice2 = await connect(alice), await connect(alice)
    bob1 = await connect(bob)
    ack = await send_ok(alice1, to_user("alice"), "note to self")
    for client in (alice1, alice2):
        message = await client.expect("message", id=ack["id"])
        assert message["to"] == {"user": "alice"}
        await client.assert_nothing("message", timeout=0.1)
    await bob1.assert_nothing("message")


async def test_group_message_reaches_every_socket_of_members_only(
    layer, connect, alice, bob, carol
):
    alice1 = await connect(alice)
    bob1, bob2 = await connect(bob), await connect(bob)
    carol1 = await connect(carol)
    await join(alice1, "A")
    await join(bob1, "A")
    ack = await send_ok(alice1, to_group("A"), "members only")
    for client in (alice1, bob1, bob2):
        message = await client.expect("message", id=ack["id"])
        assert message["to"] == {"group": "A"}
        assert message["from"] == "alice"
    await carol1.assert_nothing("message")


async def test_broadcast_reaches_every_connection(layer, connect, alice, bob, carol):
    clients = [await connect(alice), await connect(bob), await connect(carol), await connect(carol)]
    ack = await send_ok(clients[1], ALL, "hello all")
    for client in clients:
        message = await client.expect("message", id=ack["id"])
        assert message["to"] == {"all": True}
        assert message["body"] == "hello all"


async def test_message_ids_increase(layer, connect, alice):
    client = await connect(alice)
    ids = [(await send_ok(client, ALL, f"n{i}"))["id"] for i in range(3)]
    assert ids == sorted(ids) and len(set(ids)) == 3


async def test_body_of_4000_emoji_is_delivered_intact(layer, connect, alice, bob):
    alice1, bob1 = await connect(alice), await connect(bob)
    body = "😀" * 4000
    ack = await send_ok(alice1, to_user("bob"), body)
    assert (await bob1.expect("message", id=ack["id"]))["body"] == body


async def test_body_is_delivered_exactly_as_sent(layer, connect, alice, bob):
    alice1, bob1 = await connect(alice), await connect(bob)
    body = '  <script>alert("x")</script>\n\t\\ e\u0301 日本 \u200b '
    ack = await send_ok(alice1, to_user("bob"), body)
    assert (await bob1.expect("message", id=ack["id"]))["body"] == body


# -- join and leave ------------------------------------------------------------


async def test_join_replies_joined_and_tells_own_other_sockets_and_online_members(
    layer, connect, alice, bob, carol
):
    await make_member(bob, "A")
    alice1, alice2 = await connect(alice), await connect(alice)
    bob1 = await connect(bob)
    carol1 = await connect(carol)
    await alice1.send(type="join", group="A", ref="j1")
    assert await alice1.expect("joined", ref="j1") == {
        "type": "joined",
        "group": "A",
        "user": "alice",
        "private": False,
        "ref": "j1",
    }
    assert await alice2.expect("joined", group="A", user="alice")
    assert await bob1.expect("joined", group="A", user="alice")
    await carol1.assert_nothing("joined")
    await alice1.assert_nothing("joined", timeout=0.05)


async def test_joining_a_group_again_is_answered_but_tells_nobody(layer, connect, alice, bob):
    await make_member(alice, "A")
    await make_member(bob, "A")
    alice1, alice2 = await connect(alice), await connect(alice)
    bob1 = await connect(bob)
    reply = await alice1.request(type="join", group="A")
    assert (reply["type"], reply["group"], reply["user"]) == ("joined", "A", "alice")
    await bob1.assert_nothing("joined")
    await alice2.assert_nothing("joined", timeout=0.05)


async def test_join_replies_with_the_nfc_normalised_name(layer, connect, alice):
    client = await connect(alice)
    reply = await client.request(type="join", group="Cafe\u0301")
    assert reply["group"] == "Café"
    ack = await send_ok(client, to_group("Café"), "same group")
    assert (await client.expect("message", id=ack["id"]))["to"] == {"group": "Café"}


async def test_own_other_socket_receives_group_messages_after_join(layer, connect, alice, bob):
    alice1, alice2 = await connect(alice), await connect(alice)
    bob1 = await connect(bob)
    await join(alice1, "A")
    await join(bob1, "A")
    ack = await send_ok(bob1, to_group("A"), "to both of alice's sockets")
    await alice1.expect("message", id=ack["id"])
    await alice2.expect("message", id=ack["id"])


async def test_membership_is_kept_across_reconnects(layer, connect, alice, bob):
    first = await connect(alice)
    await join(first, "A")
    await first.close()
    bob1 = await connect(bob)
    await join(bob1, "A")
    again = await connect(alice)
    assert again.hello["groups"] == ["A"]
    ack = await send_ok(bob1, to_group("A"), "welcome back")
    await again.expect("message", id=ack["id"])


async def test_leave_replies_left_and_tells_own_other_sockets_and_online_members(
    layer, connect, alice, bob, carol
):
    await make_member(alice, "A")
    await make_member(bob, "A")
    alice1, alice2 = await connect(alice), await connect(alice)
    bob1 = await connect(bob)
    carol1 = await connect(carol)
    await alice1.send(type="leave", group="A", ref="l1")
    assert await alice1.expect("left", ref="l1") == {
        "type": "left",
        "group": "A",
        "user": "alice",
        "ref": "l1",
    }
    assert await alice2.expect("left", group="A", user="alice")
    assert await bob1.expect("left", group="A", user="alice")
    await carol1.assert_nothing("left")


async def test_no_group_messages_after_leave(layer, connect, alice, bob):
    await make_member(alice, "A")
    await make_member(bob, "A")
    alice1, alice2 = await connect(alice), await connect(alice)
    bob1 = await connect(bob)
    assert (await alice1.request(type="leave", group="A"))["type"] == "left"
    await alice2.expect("left", group="A")
    ack = await send_ok(bob1, to_group("A"), "alice is gone")
    await bob1.expect("message", id=ack["id"])
    await alice1.assert_nothing("message")
    await alice2.assert_nothing("message", timeout=0.05)
    await expect_error(alice1, protocol.NOT_MEMBER, type="send", to=to_group("A"), body="hi")
    reconnected = await connect(alice)
    assert reconnected.hello["groups"] == []


async def test_leave_of_a_group_not_joined_is_not_member(layer, connect, alice, bob):
    await make_member(bob, "A")
    client = await connect(alice)
    await expect_error(client, protocol.NOT_MEMBER, type="leave", group="A")
    await expect_error(client, protocol.NOT_MEMBER, type="leave", group="Nowhere", ref="e2")


# -- history -------------------------------------------------------------------


async def test_history_of_a_direct_conversation_lists_it_oldest_first(
    layer, connect, alice, bob, carol
):
    first = await store(alice, Address("user", "bob"), "one")
    await store(alice, Address("user", "carol"), "other conversation")
    await store(alice, Address("all"), "broadcast")
    second = await store(bob, Address("user", "alice"), "two")
    client = await connect(alice)
    await client.send(type="history", of=to_user("bob"), ref="h1")
    reply = await client.expect("history", ref="h1")
    assert reply["of"] == {"user": "bob"}
    assert [m["id"] for m in reply["messages"]] == [first, second]
    assert reply["messages"][1] == {
        "id": second,
        "from": "bob",
        "from_name": "bob",
        "to": {"user": "alice"},
        "body": "two",
        "ts": reply["messages"][1]["ts"],
        "rev": second,
        "edited_at": None,
        "deleted": False,
        "reply_to": None,
        "reactions": [],
        "mentions": [],
        "files": [],
    }
    assert_utc_timestamp(reply["messages"][1]["ts"])


async def test_history_gives_the_newest_50_by_default_and_pages_back_with_before(
    layer, connect, alice
):
    ids = await store_broadcasts(alice, 120)
    client = await connect(alice)
    latest = await client.request(type="history", of=ALL)
    assert [m["id"] for m in latest["messages"]] == ids[-50:]
    page = await client.request(type="history", of=ALL, before=ids[-50], limit=100)
    assert [m["id"] for m in page["messages"]] == ids[-150:-50]
    oldest = await client.request(type="history", of=ALL, before=ids[5], limit=100)
    assert [m["id"] for m in oldest["messages"]] == ids[:5]
    one = await client.request(type="history", of=ALL, limit=1)
    assert [m["id"] for m in one["messages"]] == ids[-1:]


async def test_history_of_a_group_needs_membership(layer, connect, alice, bob):
    await make_member(bob, "A")
    message = await store(bob, Address("group", "A"), "members only")
    client = await connect(alice)
    await expect_error(client, protocol.NOT_MEMBER, type="history", of=to_group("A"))
    await expect_error(client, protocol.NOT_MEMBER, type="history", of=to_group("None"), ref="e2")
    await join(client, "A")
    reply = await client.request(type="history", of=to_group("A"))
    assert [m["id"] for m in reply["messages"]] == [message]


async def test_history_with_an_unknown_user_is_no_such_user(layer, connect, alice):
    client = await connect(alice)
    await expect_error(client, protocol.NO_SUCH_USER, type="history", of=to_user("nobody"))


async def test_history_when_the_store_fails_is_unavailable(layer, connect, alice, monkeypatch):
    client = await connect(alice)

    def failing_history(**kwargs):
        raise DatabaseError("database is down")

    monkeypatch.setattr("chat.actions.queries.message_history_page", failing_history)
    await expect_error(client, protocol.UNAVAILABLE, type="history", of=ALL)
    await still_usable(client)


async def test_a_stalled_read_holds_up_neither_this_sockets_ping_nor_other_sockets(
    layer, connect, alice, bob, monkeypatch
):
    alice1, bob1 = await connect(alice), await connect(bob)
    release = threading.Event()
    real = message_history_page

    def stalled_history(**kwargs):
        assert release.wait(TIMEOUT)
        return real(**kwargs)

    monkeypatch.setattr("chat.actions.queries.message_history_page", stalled_history)
    await alice1.send(type="history", of=ALL, ref="slow")
    try:
        assert (await alice1.request(type="ping", timeout=2))["type"] == "pong"
        assert (await bob1.request(type="members", group="none", timeout=2))["type"] == "error"
        assert (await bob1.request(type="sync", since=0, timeout=2))["type"] == "sync"
    finally:
        release.set()
    assert (await alice1.answer("slow"))["type"] == "history"


async def test_a_stalled_read_is_unavailable_after_the_time_limit(
    layer, connect, settings, alice, monkeypatch
):
    settings.CHAT_DATABASE_TIMEOUT = 0.2
    client = await connect(alice)
    release = threading.Event()

    def stalled_sync(**kwargs):
        release.wait(TIMEOUT)
        return [], False

    monkeypatch.setattr("chat.actions.queries.message_sync", stalled_sync)
    try:
        await expect_error(client, protocol.UNAVAILABLE, type="sync", since=0)
    finally:
        release.set()
    assert database.stalled()
    database.forget_stalls()


# -- sync ----------------------------------------------------------------------


async def test_sync_returns_every_visible_message_after_since_oldest_first(
    layer, connect, alice, bob, carol
):
    await make_member(alice, "Mine")
    await make_member(bob, "Mine")
    await make_member(bob, "Theirs")
    visible = [await store(bob, Address("all"), "to all")]
    await store(bob, Address("user", "carol"), "bob to carol")
    visible.append(await store(bob, Address("user", "alice"), "bob to alice"))
    await store(bob, Address("group", "Theirs"), "not for alice")
    visible.append(await store(bob, Address("group", "Mine"), "for alice's group"))
    visible.append(await store(alice, Address("user", "carol"), "alice to carol"))
    client = await connect(alice)
    await client.send(type="sync", since=0, ref="s1")
    reply = await client.expect("sync", ref="s1")
    assert [m["id"] for m in reply["messages"]] == visible
    assert reply["more"] is False
    later = await client.request(type="sync", since=visible[1])
    assert [m["id"] for m in later["messages"]] == visible[2:]
    assert (await client.request(type="sync", since=visible[-1]))["messages"] == []


async def test_sync_lists_at_most_500_and_says_more(layer, connect, alice):
    ids = await store_broadcasts(alice, 620)
    client = await connect(alice)
    first = await client.request(type="sync", since=0)
    assert [m["id"] for m in first["messages"]] == ids[:500]
    assert first["more"] is True
    rest = await client.request(type="sync", since=first["messages"][-1]["id"])
    assert [m["id"] for m in rest["messages"]] == ids[500:]
    assert rest["more"] is False


# 4,000 control characters: each is written \u00XX, so one body is 24 KB of JSON.
ESCAPED_BODY = "\x01" * 4000


@sync_to_async
def store_escaped_broadcasts(sender, count: int) -> list[int]:
    now = datetime.now(UTC)
    Message.objects.bulk_create(
        Message(kind=Message.Kind.ALL, sender=sender, body=ESCAPED_BODY, created_at=now)
        for _ in range(count)
    )
    return list(Message.objects.order_by("id").values_list("id", flat=True))


async def test_sync_reply_stays_within_the_byte_bound_and_pages_with_more(
    layer, connect, settings, alice
):
    """500 messages of 24 KB of JSON each asked for at once: 12 MB before the bound."""
    settings.CHAT_MAX_REPLY_BYTES = 256 * 1024
    settings.CHAT_RATE_BURST = 1000  # some 50 pages in a row
    ids = await store_escaped_broadcasts(alice, 500)
    client = await connect(alice)
    seen: list[int] = []
    since = 0
    while True:
        await client.send(type="sync", since=since, ref="s")
        reply = await client.expect("sync", ref="s")
        assert len(client.frames[-1].encode()) <= settings.CHAT_MAX_REPLY_BYTES
        assert reply["messages"], reply
        seen += [m["id"] for m in reply["messages"]]
        since = seen[-1]
        if not reply["more"]:
            break
    assert seen == ids
    assert len(client.frames) > 3  # it did take several pages


async def test_history_reply_stays_within_the_byte_bound_and_says_more(
    layer, connect, settings, alice
):
    settings.CHAT_MAX_REPLY_BYTES = 128 * 1024
    ids = await store_escaped_broadcasts(alice, 30)
    client = await connect(alice)
    await client.send(type="history", of=ALL, limit=30, ref="h")
    page = await client.expect("history", ref="h")
    assert len(client.frames[-1].encode()) <= settings.CHAT_MAX_REPLY_BYTES
    got = [m["id"] for m in page["messages"]]
    assert got == ids[-len(got) :] and len(got) < 30  # the newest, oldest first
    assert page["more"] is True
    older = await client.request(type="history", of=ALL, limit=30, before=got[0])
    older_ids = [m["id"] for m in older["messages"]]
    assert older_ids == ids[-len(got) - len(older_ids) : -len(got)]
    whole = await client.request(type="history", of=ALL, limit=2, before=ids[2])
    assert [m["id"] for m in whole["messages"]] == ids[:2]
    assert whole["more"] is False


async def test_sync_after_a_disconnect_returns_what_was_missed(layer, connect, alice, bob):
    bob1 = await connect(bob)
    seen = bob1.hello["last_id"]
    await bob1.close()
    alice1 = await connect(alice)
    missed = [(await send_ok(alice1, to_user("bob"), f"while away {i}"))["id"] for i in range(3)]
    bob2 = await connect(bob)
    assert bob2.hello["last_id"] == missed[-1]
    reply = await bob2.request(type="sync", since=seen)
    assert [m["id"] for m in reply["messages"]] == missed


# -- who, members, ping --------------------------------------------------------


async def test_who_lists_the_usernames_online_now(layer, connect, alice, bob, carol):
    alice1 = await connect(alice)
    bob1 = await connect(bob)
    # Seen online first: an online and offline within one notice delay cancel out.
    await alice1.expect("presence", user="bob", online=True)
    await alice1.send(type="who", ref="w1")
    assert await alice1.expect("who", ref="w1") == {
        "type": "who",
        "online": ["alice", "bob"],
        "more": False,
        "ref": "w1",
    }
    await bob1.close()
    await alice1.expect("presence", user="bob", online=False)
    assert (await alice1.request(type="who"))["online"] == ["alice"]


async def test_members_lists_members_with_online_flags(layer, connect, alice, bob, carol):
    for user in (carol, bob, alice):
        await make_member(user, "A")
    alice1 = await connect(alice)
    await connect(bob)
    await alice1.send(type="members", group="A", ref="m1")
    assert await alice1.expect("members", ref="m1") == {
        "type": "members",
        "group": "A",
        "members": [
            {
                "user": "alice",
                "name": "alice",
                "online": True,
                "last_seen": None,
                "read_id": 0,
                "role": "member",
            },
            {
                "user": "bob",
                "name": "bob",
                "online": True,
                "last_seen": None,
                "read_id": 0,
                "role": "member",
            },
            {
                "user": "carol",
                "name": "carol",
                "online": False,
                "last_seen": None,
                "read_id": 0,
                "role": "owner",
            },
        ],
        "more": False,
        "ref": "m1",
    }


async def page_through(client, command: dict, key: str, name) -> list[list[str]]:
    """Every page of a `who` or `members` listing, following `next`."""
    pages: list[list[str]] = []
    after = None
    while True:
        reply = await client.request(**command, **({"after": after} if after else {}))
        pages.append([name(entry) for entry in reply[key]])
        if not reply["more"]:
            assert "next" not in reply
            return pages
        assert reply["next"] == pages[-1][-1]
        after = reply["next"]


async def test_members_pages_by_limit_and_by_the_reply_byte_bound(layer, connect, settings, alice):
    """Issue 14.4: a long member list is never one unbounded reply."""
    names = sorted(f"member-{i:02d}-" + "x" * 60 for i in range(30))
    for name in names:
        await make_member(await make_user(name), "Big")
    await make_member(alice, "Big")
    everyone = sorted([*names, "alice"])
    client = await connect(alice)
    command = {"type": "members", "group": "Big"}

    assert await page_through(client, command, "members", lambda m: m["user"]) == [everyone]
    pages = await page_through(client, {**command, "limit": 7}, "members", lambda m: m["user"])
    assert [len(page) for page in pages] == [7, 7, 7, 7, 3]
    assert list(itertools.chain.from_iterable(pages)) == everyone

    settings.CHAT_MAX_REPLY_BYTES = 2048  # 1,024 of it for the envelope
    pages = await page_through(client, command, "members", lambda m: m["user"])
    assert list(itertools.chain.from_iterable(pages)) == everyone  # none lost, none twice
    assert len(pages) > 3
    assert all(len(frame.encode()) <= 2048 for frame in client.frames[-len(pages) :])


async def test_who_pages_by_the_reply_byte_bound(layer, connect, settings, alice):
    names = [f"online-{i:02d}-" + "y" * 80 for i in range(12)]
    client = await connect(alice)
    for name in names:
        await connect(await make_user(name))
        await client.expect("presence", user=name, online=True)
    settings.CHAT_MAX_REPLY_BYTES = 1500

    pages = await page_through(client, {"type": "who"}, "online", str)

    assert list(itertools.chain.from_iterable(pages)) == sorted([*names, "alice"])
    assert len(pages) > 2
    assert all(len(frame.encode()) <= 1500 for frame in client.frames[-len(pages) :])
    await expect_error(client, protocol.BAD_COMMAND, type="who", after=7)
    await expect_error(client, protocol.BAD_COMMAND, type="who", limit=0)


async def test_members_of_a_group_not_joined_is_not_member(layer, connect, alice, bob):
    await make_member(bob, "A")
    client = await connect(alice)
    await expect_error(client, protocol.NOT_MEMBER, type="members", group="A")
    await expect_error(client, protocol.NOT_MEMBER, type="members", group="Nowhere", ref="e2")


async def test_ping_is_answered_pong_with_its_ref(layer, connect, alice):
    client = await connect(alice)
    await client.send(type="ping", ref="p1")
    assert await client.expect("pong") == {"type": "pong", "ref": "p1"}


async def test_frames_are_handled_while_the_database_thread_is_busy(layer, connect, alice):
    """Channels' own dispatch waits for the database thread before every frame."""
    client = await connect(alice)
    release = threading.Event()
    busy = asyncio.ensure_future(database_sync_to_async(release.wait)())
    try:
        await client.send(type="ping", ref="p1")
        assert await client.expect("pong") == {"type": "pong", "ref": "p1"}
    finally:
        release.set()
        await busy


# -- presence ------------------------------------------------------------------


async def test_first_socket_of_a_user_is_announced_online_to_everyone_else(
    layer, connect, alice, bob, carol
):
    alice1 = await connect(alice)
    carol1 = await connect(carol)
    await alice1.expect("presence", user="carol", online=True)
    bob1 = await connect(bob)
    assert await alice1.expect("presence", user="bob") == {
        "type": "presence",
        "user": "bob",
        "online": True,
        "name": "bob",
    }
    await carol1.expect("presence", user="bob", online=True)
    await bob1.assert_nothing("presence")


async def test_second_socket_of_a_user_announces_nothing(layer, connect, alice, bob):
    alice1 = await connect(alice)
    await connect(bob)
    await alice1.expect("presence", user="bob", online=True)
    await connect(bob)
    await alice1.assert_nothing("presence")


async def test_only_the_last_socket_closing_announces_offline(layer, connect, alice, bob):
    alice1 = await connect(alice)
    bob1, bob2 = await connect(bob), await connect(bob)
    await alice1.expect("presence", user="bob", online=True)
    await bob1.close()
    await alice1.assert_nothing("presence")
    await bob2.close()
    await alice1.expect("presence", user="bob", online=False)


async def test_notices_within_the_delay_arrive_together_in_one_batch(
    layer, connect, settings, alice, bob, carol
):
    settings.CHAT_NOTICE_DELAY = 1.0
    alice1 = await connect(alice)
    await connect(bob)
    await connect(carol)
    await alice1.expect("presence", user="bob", online=True)
    await alice1.expect("presence", user="carol", online=True)
    batch = json.loads(alice1.frames[frame_position(alice1, user="bob")])
    assert batch["type"] == "batch"
    assert [e["user"] for e in batch["events"]] == ["bob", "carol"]


async def test_a_batch_leaves_out_each_users_own_presence_and_keeps_the_order(
    layer, connect, settings, alice, bob, carol
):
    await make_member(alice, "G")
    settings.CHAT_NOTICE_DELAY = 1.0
    alice1 = await connect(alice)
    bob1 = await connect(bob)
    carol1 = await connect(carol)
    await bob1.request(type="join", group="G")

    await alice1.expect("joined", group="G", user="bob")
    batch = json.loads(alice1.frames[frame_position(alice1, type="joined")])
    assert [(e["type"], e["user"]) for e in batch["events"]] == [
        ("presence", "bob"),
        ("presence", "carol"),
        ("joined", "bob"),
    ]
    # Each of them gets the other's presence, not their own nor bob's join.
    assert await bob1.expect("presence", user="carol") == {
        "type": "presence",
        "user": "carol",
        "online": True,
        "name": "carol",
    }
    await carol1.expect("presence", user="bob", online=True)
    # One flush made all these frames (alice's presence too, which was in the
    # same window): nothing of it can still be on its way.
    assert notices_received(bob1) == [("presence", "alice"), ("presence", "carol")]
    assert notices_received(carol1) == [("presence", "alice"), ("presence", "bob")]


def notices_received(client: ChatTestClient) -> list[tuple[str, str]]:
    """(type, user) of every presence, joined and left notice received (not replies)."""
    events = []
    for text in client.frames:
        frame = json.loads(text)
        events.extend(frame["events"] if frame["type"] == "batch" else [frame])
    kinds = {"presence", "joined", "left"}
    return [(e["type"], e["user"]) for e in events if e["type"] in kinds and "ref" not in e]


# -- errors --------------------------------------------------------------------


async def test_frame_that_is_not_a_json_object_is_bad_json(layer, connect, alice):
    client = await connect(alice)
    for text in ["not json", "", "{", "[1, 2]", '"ping"', "null", "12"]:
        # Straight to the application: send_to() refuses an empty frame.
        await client.communicator.send_input({"type": "websocket.receive", "text": text})
        await expect_frame_error(client, protocol.BAD_JSON)
        await still_usable(client)


BAD_COMMANDS = [
    {"type": "shout"},
    {"type": None},
    {"type": ["ping"]},
    {"noise": 1},
    {"type": "send", "body": "hi"},
    {"type": "send", "to": ALL},
    {"type": "send", "to": "bob", "body": "hi"},
    {"type": "send", "to": {"all": 1}, "body": "hi"},
    {"type": "send", "to": {"user": "bob", "all": True}, "body": "hi"},
    {"type": "send", "to": ALL, "body": 42},
    {"type": "send", "to": ALL, "body": "a\x00b"},
    {"type": "join"},
    {"type": "join", "group": 7},
    {"type": "history"},
    {"type": "history", "of": ALL, "limit": 0},
    {"type": "history", "of": ALL, "limit": 101},
    {"type": "history", "of": ALL, "limit": True},
    {"type": "history", "of": ALL, "limit": 5.0},
    {"type": "history", "of": ALL, "before": 10**40},
    {"type": "history", "of": ALL, "before": "5"},
    {"type": "sync"},
    {"type": "sync", "since": False},
    {"type": "sync", "since": -1},
    {"type": "sync", "since": 2**64},
    {"type": "sync", "since": 1e300},
    {"type": "members", "group": None},
]


async def test_malformed_commands_get_bad_command_echoing_their_ref(
    layer, connect, settings, alice
):
    settings.CHAT_MAX_ERRORS_PER_MINUTE = 1000
    client = await connect(alice)
    for index, command in enumerate(BAD_COMMANDS):
        await expect_error(client, protocol.BAD_COMMAND, ref=f"bad{index}", **command)
    await still_usable(client)
    assert await stored_bodies() == []


async def test_unusable_ref_is_bad_command_without_ref(layer, connect, alice):
    client = await connect(alice)
    for ref in ["x" * 65, 5, None, True, ["r"], {"r": 1}]:
        await client.send(type="ping", ref=ref)
        await expect_frame_error(client, protocol.BAD_COMMAND)
    await still_usable(client)


async def test_unknown_fields_are_ignored(layer, connect, alice):
    client = await connect(alice)
    reply = await client.request(type="ping", future={"feature": [1, 2]}, body=None)
    assert reply["type"] == "pong"
    ack = await client.request(type="send", to=ALL, body="hi", priority="high", to_all=5)
    assert ack["type"] == "ack"


async def test_binary_frame_is_binary_not_supported(layer, connect, alice):
    client = await connect(alice)
    await client.send_bytes(b'{"type": "ping"}')
    await expect_frame_error(client, protocol.BINARY_NOT_SUPPORTED)
    await still_usable(client)


async def test_frame_over_the_size_limit_is_too_large(layer, connect, settings, alice):
    settings.CHAT_MAX_FRAME_BYTES = 1024
    client = await connect(alice)
    await client.send(type="send", to=ALL, body="x" * 1100, ref="big")
    await expect_frame_error(client, protocol.TOO_LARGE)
    # 400 characters, but 1600 bytes of UTF-8.
    await client.send(type="send", to=ALL, body="😀" * 400, ref="big2")
    await expect_frame_error(client, protocol.TOO_LARGE)
    await still_usable(client)
    assert await stored_bodies() == []


async def test_body_over_the_length_limit_is_too_large(layer, connect, settings, alice, bob):
    alice1, bob1 = await connect(alice), await connect(bob)
    await expect_error(alice1, protocol.TOO_LARGE, type="send", to=ALL, body="😀" * 4001)
    settings.CHAT_MAX_BODY_CHARS = 10
    await expect_error(alice1, protocol.TOO_LARGE, type="send", to=ALL, body="x" * 11, ref="e2")
    await send_ok(alice1, ALL, "x" * 10)
    assert await stored_bodies() == ["x" * 10]
    await bob1.expect("message", body="x" * 10)
    await bob1.assert_nothing("message")


async def test_empty_or_whitespace_body_is_empty_body(layer, connect, alice, bob):
    alice1, bob1 = await connect(alice), await connect(bob)
    for body in ["", " ", "\n\t ", "\u3000"]:
        await expect_error(alice1, protocol.EMPTY_BODY, type="send", to=to_user("bob"), body=body)
    await bob1.assert_nothing("message")
    assert await stored_bodies() == []


async def test_group_name_outside_the_rules_is_bad_group_in_every_command(
    layer, connect, settings, alice
):
    settings.CHAT_MAX_ERRORS_PER_MINUTE = 1000
    client = await connect(alice)
    for group in ["", " A", "A ", "a/b", "x" * 65, "😀", "a\x00"]:
        await expect_error(client, protocol.BAD_GROUP, type="join", group=group, ref="j")
        await expect_error(client, protocol.BAD_GROUP, type="leave", group=group, ref="l")
        await expect_error(client, protocol.BAD_GROUP, type="members", group=group, ref="m")
        await expect_error(client, protocol.BAD_GROUP, type="history", of=to_group(group), ref="h")
        await expect_error(
            client, protocol.BAD_GROUP, type="send", to=to_group(group), body="hi", ref="s"
        )
    assert await sync_to_async(ChatGroup.objects.count)() == 0


async def test_direct_message_to_a_user_that_does_not_exist_is_no_such_user(
    layer, connect, alice, bob
):
    alice1, bob1 = await connect(alice), await connect(bob)
    for name in ["nobody", "Alice", "alice\n", "bad name", "x" * 151, "a\x00"]:
        await expect_error(alice1, protocol.NO_SUCH_USER, type="send", to=to_user(name), body="hi")
    await bob1.assert_nothing("message")
    assert await stored_bodies() == []


async def test_send_to_a_group_not_joined_is_not_member_and_reaches_nobody(
    layer, connect, alice, bob
):
    await make_member(bob, "A")
    alice1, bob1 = await connect(alice), await connect(bob)
    await expect_error(alice1, protocol.NOT_MEMBER, type="send", to=to_group("A"), body="hi")
    await expect_error(
        alice1, protocol.NOT_MEMBER, type="send", to=to_group("Nowhere"), body="hi", ref="e2"
    )
    await bob1.assert_nothing("message")
    assert await stored_bodies() == []


async def test_sending_faster_than_the_rate_is_rate_limited_and_stores_nothing(
    layer, connect, settings, alice, bob
):
    settings.CHAT_RATE_BURST = command_cost("connect") + 2  # the socket, then two sends
    settings.CHAT_RATE_PER_SECOND = 0.001
    alice1, bob1 = await connect(alice), await connect(bob)
    first = await send_ok(alice1, to_user("bob"), "one")
    second = await send_ok(alice1, to_user("bob"), "two")
    await expect_error(alice1, protocol.RATE_LIMITED, type="send", to=to_user("bob"), body="3")
    assert await stored_bodies() == ["one", "two"]
    await bob1.expect("message", id=first["id"])
    await bob1.expect("message", id=second["id"])
    await bob1.assert_nothing("message")
    # The socket stays open and answers; every command spends from the budget.
    await expect_error(alice1, protocol.RATE_LIMITED, type="ping", ref="p")


async def test_every_command_spends_from_the_budget_reads_cost_more(
    layer, connect, settings, alice
):
    """300 requests for 100 messages each: the budget answers a few, not all."""
    settings.CHAT_RATE_BURST = command_cost("connect") + 20
    settings.CHAT_RATE_PER_SECOND = 0.001
    settings.CHAT_MAX_ERRORS_PER_MINUTE = 1000
    client = await connect(alice)
    for index in range(300):
        await client.send(type="history", of=ALL, limit=100, ref=f"h{index}")
    replies = [await client.answer(f"h{index}") for index in range(300)]
    answered = [r for r in replies if r["type"] == "history"]
    refused = [r for r in replies if r["type"] == "error"]
    assert len(answered) == 20 // command_cost("history")
    assert {r["code"] for r in refused} == {protocol.RATE_LIMITED}
    assert command_cost("sync") > command_cost("ping") < command_cost("history")


async def test_a_command_past_the_budget_is_rate_limited_and_does_nothing(
    layer, connect, settings, alice, bob
):
    settings.CHAT_RATE_BURST = command_cost("connect") + command_cost("join")
    settings.CHAT_RATE_PER_SECOND = 0.001
    alice1, bob1 = await connect(alice), await connect(bob)
    await join(bob1, "A")
    await join(alice1, "A")
    await expect_error(alice1, protocol.RATE_LIMITED, type="leave", group="A")
    await expect_error(alice1, protocol.RATE_LIMITED, type="sync", since=0, ref="s")
    await expect_error(alice1, protocol.RATE_LIMITED, type="ping", ref="p")
    assert await member_names("A") == ["alice", "bob"]


async def test_join_and_leave_cycles_cannot_flood_a_groups_members(
    layer, connect, settings, alice, bob
):
    """100 join/leave cycles: the budget, not the client, sets how many notices go out."""
    settings.CHAT_MAX_ERRORS_PER_MINUTE = 1000
    alice1, bob1 = await connect(alice), await connect(bob)
    await join(bob1, "A")
    started = asyncio.get_running_loop().time()
    for index in range(100):
        await alice1.send(type="join", group="A", ref=f"j{index}")
        await alice1.send(type="leave", group="A", ref=f"l{index}")
    await alice1.answer("l99")
    took = asyncio.get_running_loop().time() - started
    events = await bob1.collect(max(0.5, settings.CHAT_NOTICE_DELAY * 10))
    notices = [e for e in events if e["type"] in ("joined", "left")]
    tokens = settings.CHAT_RATE_BURST + settings.CHAT_RATE_PER_SECOND * (took + 1)
    assert 0 < len(notices) <= tokens / command_cost("join"), (len(notices), took)
    # Which of alice's commands the budget let through decides whether she
    # ended in the group; bob stays.
    assert "bob" in await member_names("A")


async def test_joins_and_leaves_have_a_budget_of_their_own(layer, connect, settings, alice, bob):
    """A generous command budget does not let join/leave cycles flood a group's members."""
    settings.CHAT_RATE_BURST = 1000
    settings.CHAT_RATE_PER_SECOND = 1000
    settings.CHAT_MAX_ERRORS_PER_MINUTE = 1000
    settings.CHAT_MEMBERSHIP_CHANGES_PER_MINUTE = 6
    alice1, bob1 = await connect(alice), await connect(bob)
    await join(bob1, "A")
    for index in range(50):
        await alice1.send(type="join", group="A", ref=f"j{index}")
        await alice1.send(type="leave", group="A", ref=f"l{index}")
    await alice1.answer("l49")
    events = await bob1.collect(max(0.5, settings.CHAT_NOTICE_DELAY * 10))
    notices = [e for e in events if e["type"] in ("joined", "left")]
    # Six changes, and at most one more refilled while the test runs (one every 10 s).
    assert 0 < len(notices) <= 7, notices
    refused = await alice1.answer("j3")
    assert refused["type"] == "error" and refused["code"] == protocol.RATE_LIMITED, refused
    assert "joining and leaving" in refused["message"]
    assert "bob" in await member_names("A")


@sync_to_async
def member_names(group: str) -> list[str]:
    return sorted(ChatGroup.objects.get(name=group).members.values_list("username", flat=True))


async def test_rate_is_per_user_across_sockets(layer, connect, settings, alice, bob):
    settings.CHAT_RATE_BURST = 2 * command_cost("connect") + 1  # two sockets, one send
    settings.CHAT_RATE_PER_SECOND = 0.001
    alice1, alice2, bob1 = await connect(alice), await connect(alice), await connect(bob)
    await send_ok(alice1, ALL, "one")
    await expect_error(alice2, protocol.RATE_LIMITED, type="send", to=ALL, body="two")
    await send_ok(bob1, ALL, "bob's own bucket")


async def test_store_failure_is_unavailable_stores_nothing_and_reaches_nobody(
    layer, connect, settings, alice, bob
):
    settings.CHAT_MAX_ERRORS_PER_MINUTE = 1
    alice1, alice2, bob1 = await connect(alice), await connect(alice), await connect(bob)

    with refusing_message_inserts():
        for index in range(3):  # the server's fault: never counted against the socket
            await expect_error(
                alice1,
                protocol.UNAVAILABLE,
                type="send",
                to=to_user("bob"),
                body="lost",
                ref=f"u{index}",
            )
    assert await stored_bodies() == []
    await bob1.assert_nothing("message")
    await alice2.assert_nothing("message", timeout=0.05)
    await alice1.assert_nothing("message", timeout=0.05)
    ack = await send_ok(alice1, to_user("bob"), "stored now")
    await bob1.expect("message", id=ack["id"])


async def test_who_and_members_when_presence_fails_are_unavailable(
    layer, connect, settings, alice, monkeypatch
):
    settings.CHAT_MAX_ERRORS_PER_MINUTE = 1
    client = await connect(alice)
    await join(client, "A")
    hub = await current_worker().hub()

    async def failing_online():
        raise ConnectionError("presence store is down")

    monkeypatch.setattr(hub.presence, "online", failing_online)
    for index in range(2):  # the server's fault: never counted against the socket
        await expect_error(client, protocol.UNAVAILABLE, type="who", ref=f"w{index}")
        await expect_error(client, protocol.UNAVAILABLE, type="members", group="A", ref=f"m{index}")
    await still_usable(client)


# -- misbehaviour and hostile input --------------------------------------------


async def test_one_bad_frame_of_each_kind_never_closes_the_socket(layer, connect, alice):
    client = await connect(alice)
    await client.send_text("garbage")
    await client.send_bytes(b"\x00\xff")
    await client.send(type="nope", ref="n")
    await client.send(type="send", to=ALL, body=" ", ref="e")
    codes = [(await client.expect("error"))["code"] for _ in range(4)]
    assert codes == ["bad_json", "binary_not_supported", "bad_command", "empty_body"]
    await still_usable(client)
    assert not client.closed


async def test_more_errors_a_minute_than_allowed_closes_with_1008(layer, connect, settings, alice):
    settings.CHAT_MAX_ERRORS_PER_MINUTE = 3
    client = await connect(alice)
    for _ in range(3):
        await client.send_text("garbage")
        await expect_frame_error(client, protocol.BAD_JSON)
    await still_usable(client)
    await client.send(type="join", group=" bad", ref="last")
    await client.expect("error", ref="last", code=protocol.BAD_GROUP)
    assert await client.expect_close() == protocol.CLOSE_POLICY_VIOLATION


async def test_frames_after_the_1008_close_are_not_acted_on(layer, connect, settings, alice, bob):
    settings.CHAT_MAX_ERRORS_PER_MINUTE = 1
    alice1, bob1 = await connect(alice), await connect(bob)
    for _ in range(2):
        await alice1.send_text("garbage")
    assert await alice1.expect_close() == protocol.CLOSE_POLICY_VIOLATION
    # The client has not seen the close yet and keeps sending.
    await alice1.communicator.send_to(
        text_data=json.dumps({"type": "send", "to": ALL, "body": "after close"})
    )
    await alice1.communicator.send_to(text_data=json.dumps({"type": "join", "group": "A"}))
    await bob1.assert_nothing("message")
    assert await stored_bodies() == []
    assert await sync_to_async(ChatGroup.objects.count)() == 0


async def test_errors_older_than_a_minute_are_forgiven(
    layer, connect, settings, alice, monkeypatch
):
    settings.CHAT_MAX_ERRORS_PER_MINUTE = 2
    client = await connect(alice)
    now = [1000.0]
    monkeypatch.setattr(
        "chat.sockets.errors.time", type("Clock", (), {"monotonic": lambda: now[0]})
    )
    for _ in range(2):
        await client.send_text("garbage")
        await expect_frame_error(client, protocol.BAD_JSON)
    now[0] += 61
    for _ in range(2):
        await client.send_text("garbage")
        await expect_frame_error(client, protocol.BAD_JSON)
    await still_usable(client)
    await client.send_text("garbage")
    await expect_frame_error(client, protocol.BAD_JSON)
    assert await client.expect_close() == protocol.CLOSE_POLICY_VIOLATION


HOSTILE_FRAMES = [
    ('{"type": "ping", "x": ' + "[" * 5000 + "]" * 5000 + "}", protocol.BAD_JSON),
    ('{"type": "ping", "x": ' + '{"a":' * 3000 + "1" + "}" * 3000 + "}", protocol.BAD_JSON),
    ("[" * 200_000, protocol.BAD_JSON),
    ('{"type": "sync", "since": NaN}', protocol.BAD_JSON),
    ('{"type": "sync", "since": Infinity}', protocol.BAD_JSON),
    ('{"type": "sync", "since": -Infinity}', protocol.BAD_JSON),
    ('{"type": "sync", "since": 1e999}', protocol.BAD_JSON),
    ('{"type": "sync", "since": 123456789012345678901234567890}', protocol.BAD_COMMAND),
    ('{"type": "sync", "since": -123456789012345678901234567890}', protocol.BAD_COMMAND),
    ('{"type": "sync", "since": 18446744073709551615}', protocol.BAD_COMMAND),
    ('{"type": "send", "to": {"all": true}, "body": "\\ud800"}', protocol.BAD_JSON),
    ('{"type": "send", "to": {"all": true}, "body": "\\udfff\\ud800"}', protocol.BAD_JSON),
    ('{"type": "ping", "ref": "\\ud83d"}', protocol.BAD_JSON),
    ('{"type": "send", "to": {"all": true}, "body": "\ud800"}', protocol.BAD_JSON),
    ('{"type": "send", "to": {"all": true}, "body": "a\\u0000b"}', protocol.BAD_COMMAND),
    ('{"type": "pi\\u0000ng"}', protocol.BAD_COMMAND),
    ('{"type": "join", "group": "A\\u0000"}', protocol.BAD_GROUP),
    ('{"type": "send", "to": {"user": "\\u0000"}, "body": "hi"}', protocol.NO_SUCH_USER),
    ('{"type": "send", "to": {"group": {"group": {"group": "A"}}}, "body": "hi"}', "bad_command"),
    ('{"type": {"type": "ping"}}', protocol.BAD_COMMAND),
    ('{"type": "history", "of": [], "limit": []}', protocol.BAD_COMMAND),
    ('{"type": "members", "group": ["A"]}', protocol.BAD_COMMAND),
    ("\x00", protocol.BAD_JSON),
    ("\ufeff{}", protocol.BAD_JSON),
]


async def test_hostile_frames_get_an_error_and_never_crash_the_socket(
    layer, connect, settings, alice, bob
):
    settings.CHAT_MAX_ERRORS_PER_MINUTE = 1000
    settings.CHAT_MAX_FRAME_BYTES = 1_000_000
    settings.CHAT_RATE_BURST = 10_000  # a ping after each frame: not what is tested here
    alice1, bob1 = await connect(alice), await connect(bob)
    for text, code in HOSTILE_FRAMES:
        await alice1.send_text(text)
        error = await alice1.expect("error")
        assert error["code"] == code, (text[:80], error)
        await still_usable(alice1)
    await bob1.assert_nothing("message")
    assert await stored_bodies() == []


async def test_nul_in_a_ref_is_echoed_as_given(layer, connect, alice):
    client = await connect(alice)
    await client.send(type="ping", ref="a\x00b")
    assert (await client.expect("pong"))["ref"] == "a\x00b"


async def test_a_socket_dispatches_in_order_in_its_own_task() -> None:
    """No receive task per socket (memory), and the messages keep their order."""
    import asyncio

    from channels.exceptions import StopConsumer

    from chat.sockets.json import JsonFormat
    from chat.sockets.socket import ChatSocket

    seen: list[tuple[str, Any]] = []
    receivers: list[Any] = []

    class Probe(ChatSocket):
        async def dispatch(self, message: dict[str, Any]) -> None:
            seen.append((message["type"], asyncio.current_task()))
            if message["type"] == "websocket.disconnect":
                raise StopConsumer

    messages = iter(
        [
            {"type": "websocket.connect"},
            {"type": "websocket.receive", "text": "x"},
            {"type": "websocket.disconnect", "code": 1000},
        ]
    )

    async def receive() -> dict[str, Any]:
        receivers.append(asyncio.current_task())
        return next(messages)

    async def send(message: dict[str, Any]) -> None:
        pass

    await Probe(JsonFormat())({"type": "websocket"}, receive, send)
    assert [kind for kind, _ in seen] == [
        "websocket.connect",
        "websocket.receive",
        "websocket.disconnect",
    ]
    here = asyncio.current_task()
    assert all(task is here for _, task in seen)
    assert receivers and all(task is here for task in receivers)
