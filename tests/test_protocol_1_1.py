"""Protocol 1.1 at protocol level, on the in-memory layer and on a real Redis:
`conversations`, `read`, `receipt`, `typing`, `users`, `groups`, `last_seen`,
case-insensitive group names and `created` on the joiner's `joined`.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.db.backends.utils import CursorWrapper

from chat.models import ReadPosition
from tests.chatclient import ChatTestClient
from tests.conftest import make_user

pytestmark = pytest.mark.django_db(transaction=True)

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
ALL = {"all": True}


async def send_ok(client: ChatTestClient, to: dict[str, Any], body: str) -> int:
    ack = await client.request(type="send", to=to, body=body)
    assert ack["type"] == "ack", ack
    return int(ack["id"])


async def error_of(client: ChatTestClient, **command: Any) -> str:
    reply = await client.request(**command)
    assert reply["type"] == "error", reply
    assert reply["message"]
    return str(reply["code"])


# -- conversations -------------------------------------------------------------


async def test_an_offline_direct_message_is_listed_with_its_unread_count(
    layer, connect, alice, bob
):
    bob_socket = await connect(bob)
    await send_ok(bob_socket, {"user": "alice"}, "first")
    last = await send_ok(bob_socket, {"user": "alice"}, "are you there?")
    await bob_socket.close()

    alice_socket = await connect(alice)
    reply = await alice_socket.request(type="conversations")

    assert reply["type"] == "conversations" and reply["more"] is False
    assert "next" not in reply
    by_address = {str(item["of"]): item for item in reply["items"]}
    bobs = by_address[str({"user": "bob"})]
    assert bobs["unread"] == 2 and bobs["read_id"] == 0 and bobs["their_read_id"] == 0
    assert bobs["last"]["id"] == last and bobs["last"]["body"] == "are you there?"
    assert by_address[str(ALL)] == {
        "of": ALL,
        "last": None,
        "unread": 0,
        "read_id": 0,
        "mentions": 0,
        "their_read_id": None,
    }
    # Newest last message first; everyone, with nothing in it, comes after.
    assert reply["items"][0]["of"] == {"user": "bob"}


async def test_conversations_list_groups_notes_to_self_newest_first_and_page(
    layer, connect, alice, bob
):
    alice_socket = await connect(alice)
    assert (await alice_socket.request(type="join", group="Quiet"))["type"] == "joined"
    await send_ok(alice_socket, {"user": "alice"}, "note to self")
    await send_ok(alice_socket, ALL, "hello all")
    await send_ok(alice_socket, {"user": "bob"}, "hi bob")

    first = await alice_socket.request(type="conversations", limit=2)
    assert [item["of"] for item in first["items"]] == [{"user": "bob"}, ALL]
    assert first["more"] is True and isinstance(first["next"], str)
    rest = await alice_socket.request(type="conversations", limit=2, before=first["next"])
    assert [item["of"] for item in rest["items"]] == [{"user": "alice"}, {"group": "Quiet"}]
    assert rest["items"][1]["last"] is None
    assert rest["more"] is False
    # Own messages are never unread.
    assert all(item["unread"] == 0 for item in first["items"] + rest["items"])


async def test_conversations_validates_its_fields(layer, connect, alice):
    alice_socket = await connect(alice)
    assert await error_of(alice_socket, type="conversations", limit=0) == "bad_command"
    assert await error_of(alice_socket, type="conversations", limit=101) == "bad_command"
    assert await error_of(alice_socket, type="conversations", before=5) == "bad_command"
    assert await error_of(alice_socket, type="conversations", before="nonsense") == "bad_command"


# -- read and receipt ----------------------------------------------------------


async def test_read_moves_forward_is_clamped_and_reaches_every_socket_of_the_user(
    layer, connect, alice, bob
):
    bob_socket = await connect(bob)
    first = await send_ok(bob_socket, {"user": "alice"}, "one")
    second = await send_ok(bob_socket, {"user": "alice"}, "two")
    alice_tab, alice_phone = await connect(alice), await connect(alice)

    reply = await alice_tab.request(type="read", of={"user": "bob"}, id=second + 1000)
    assert reply == {"type": "read", "of": {"user": "bob"}, "id": second, "ref": reply["ref"]}
    other = await alice_phone.expect("read", of={"user": "bob"})
    assert other["id"] == second and "ref" not in other
    receipt = await bob_socket.expect("receipt")
    assert receipt == {"type": "receipt", "of": {"user": "alice"}, "user": "alice", "id": second}

    back = await alice_tab.request(type="read", of={"user": "bob"}, id=first)
    assert back["id"] == second  # only forward
    await bob_socket.assert_nothing("receipt")

    listed = await alice_phone.request(type="conversations")
    bobs = next(item for item in listed["items"] if item["of"] == {"user": "bob"})
    assert bobs["read_id"] == second and bobs["unread"] == 0
    stored = await database_sync_to_async(ReadPosition.objects.get)(user=alice)
    assert stored.message_id == second


async def test_conversations_say_how_far_the_other_party_has_read_a_direct_conversation(
    layer, connect, alice, bob, carol
):
    """After a reload, "Seen" comes from `their_read_id`, not from a live receipt."""
    alice_socket, bob_socket = await connect(alice), await connect(bob)
    first = await send_ok(alice_socket, {"user": "bob"}, "one")
    await send_ok(alice_socket, {"user": "bob"}, "two")
    await send_ok(alice_socket, {"user": "carol"}, "to carol, unread")
    await send_ok(alice_socket, {"user": "alice"}, "note to self")
    assert (await alice_socket.request(type="join", group="G"))["type"] == "joined"
    await bob_socket.request(type="read", of={"user": "alice"}, id=first)
    # alice's own reads move her read_id, never the other party's position.
    await alice_socket.request(type="read", of={"user": "carol"}, id=first + 10)

    reply = await alice_socket.request(type="conversations")
    theirs = {str(item["of"]): item["their_read_id"] for item in reply["items"]}
    assert theirs == {
        str({"user": "bob"}): first,
        str({"user": "carol"}): 0,
        str({"user": "alice"}): 0,
        str({"group": "G"}): None,
        str(ALL): None,
    }
    bobs = await bob_socket.request(type="conversations")
    alices = next(item for item in bobs["items"] if item["of"] == {"user": "alice"})
    assert (alices["read_id"], alices["their_read_id"]) == (first, 0)


async def test_members_say_how_far_each_member_has_read_the_group(
    layer, connect, alice, bob, carol
):
    sockets = [await connect(user) for user in (alice, bob, carol)]
    for client in sockets:
        assert (await client.request(type="join", group="Readers"))["type"] == "joined"
    alice_socket, bob_socket, carol_socket = sockets
    first = await send_ok(alice_socket, {"group": "Readers"}, "one")
    second = await send_ok(alice_socket, {"group": "Readers"}, "two")
    await bob_socket.request(type="read", of={"group": "readers"}, id=second)
    await carol_socket.request(type="read", of={"group": "Readers"}, id=first)
    # A read of another conversation with the same id is not a read of this group.
    await carol_socket.request(type="read", of={"user": "alice"}, id=second)

    members = await alice_socket.request(type="members", group="readers")
    assert {m["user"]: m["read_id"] for m in members["members"]} == {
        "alice": 0,
        "bob": second,
        "carol": first,
    }
    page = await alice_socket.request(type="members", group="Readers", after="alice", limit=1)
    assert [(m["user"], m["read_id"]) for m in page["members"]] == [("bob", second)]


async def test_read_of_a_group_not_joined_is_not_member_and_of_nobody_no_such_user(
    layer, connect, alice
):
    alice_socket = await connect(alice)
    assert await error_of(alice_socket, type="read", of={"group": "Nope"}, id=1) == "not_member"
    assert await error_of(alice_socket, type="read", of={"user": "ghost"}, id=1) == "no_such_user"
    assert await error_of(alice_socket, type="read", of={"user": "bob"}, id=-1) == "bad_command"
    assert await error_of(alice_socket, type="read", of={"user": "bob"}) == "bad_command"


async def test_group_receipts_reach_online_members_at_most_once_a_second_latest_winning(
    layer, connect, alice, bob, carol
):
    alice_socket, bob_socket, carol_socket = (
        await connect(alice),
        await connect(bob),
        await connect(carol),
    )
    for client in (alice_socket, bob_socket, carol_socket):
        assert (await client.request(type="join", group="Team"))["type"] == "joined"
    ids = [await send_ok(alice_socket, {"group": "team"}, f"m{n}") for n in range(3)]

    await bob_socket.request(type="read", of={"group": "TEAM"}, id=ids[0])
    await bob_socket.request(type="read", of={"group": "Team"}, id=ids[1])
    await bob_socket.request(type="read", of={"group": "Team"}, id=ids[2])

    first = await carol_socket.expect("receipt")
    assert first == {"type": "receipt", "of": {"group": "Team"}, "user": "bob", "id": ids[0]}
    latest = await carol_socket.expect("receipt", timeout=5)
    assert latest["id"] == ids[2]
    await carol_socket.assert_nothing("receipt", timeout=1.5)
    await alice_socket.expect("receipt", id=ids[2], timeout=5)
    await bob_socket.assert_nothing("receipt")


async def test_reads_of_everyone_send_no_receipts(layer, connect, alice, bob):
    alice_socket, bob_socket = await connect(alice), await connect(bob)
    last = await send_ok(alice_socket, ALL, "hello")

    reply = await bob_socket.request(type="read", of=ALL, id=last)

    assert reply["id"] == last
    await alice_socket.assert_nothing("receipt")


# -- typing --------------------------------------------------------------------


async def test_typing_reaches_the_recipient_and_the_groups_other_members_only(
    layer, connect, alice, bob, carol
):
    alice_socket, bob_socket, carol_socket = (
        await connect(alice),
        await connect(bob),
        await connect(carol),
    )

    await alice_socket.send(type="typing", to={"user": "bob"})
    assert await bob_socket.expect("typing") == {
        "type": "typing",
        "to": {"user": "alice"},
        "user": "alice",
    }
    await carol_socket.assert_nothing("typing")

    for client in (alice_socket, bob_socket):
        assert (await client.request(type="join", group="Design Team"))["type"] == "joined"
    await alice_socket.send(type="typing", to={"group": "design team"})
    event = await bob_socket.expect("typing")
    assert event == {"type": "typing", "to": {"group": "Design Team"}, "user": "alice"}
    await alice_socket.assert_nothing("typing")
    await carol_socket.assert_nothing("typing")


async def test_typing_to_everyone_is_bad_command_and_to_a_foreign_group_not_member(
    layer, connect, alice
):
    alice_socket = await connect(alice)
    assert await error_of(alice_socket, type="typing", to=ALL) == "bad_command"
    assert await error_of(alice_socket, type="typing", to={"group": "Elsewhere"}) == "not_member"
    assert await error_of(alice_socket, type="typing") == "bad_command"


async def test_typing_never_touches_the_database(layer, connect, alice, bob, monkeypatch):
    alice_socket, bob_socket = await connect(alice), await connect(bob)
    for client in (alice_socket, bob_socket):
        assert (await client.request(type="join", group="G"))["type"] == "joined"
    statements: list[str] = []
    real_execute = CursorWrapper.execute

    def counting_execute(self, sql, params=None):
        statements.append(sql)
        return real_execute(self, sql, params)

    monkeypatch.setattr(CursorWrapper, "execute", counting_execute)

    await alice_socket.send(type="typing", to={"user": "bob"})
    await bob_socket.expect("typing", to={"user": "alice"})
    await alice_socket.send(type="typing", to={"group": "G"})
    await bob_socket.expect("typing", to={"group": "G"})

    assert statements == []


# -- users, groups, last_seen ---------------------------------------------------


async def test_users_lists_online_first_with_last_seen_and_guests_only_while_online(
    layer, connect, alice, bob, carol
):
    await make_user("bobby")
    guest = await make_user("guest-12345")
    gone = await make_user("guest-99999")
    carol_socket = await connect(carol)
    await carol_socket.close()
    alice_socket = await connect(alice)
    await connect(bob)
    await connect(guest)

    reply = await alice_socket.request(type="users", q="")
    users = reply["users"]
    online = [u["user"] for u in users if u["online"]]
    assert set(online) == {"alice", "bob", "guest-12345"}
    assert [u["online"] for u in users] == sorted((u["online"] for u in users), reverse=True)
    assert gone.username not in [u["user"] for u in users]
    assert all(u["last_seen"] is None for u in users if u["online"])
    carols = next(u for u in users if u["user"] == "carol")
    assert ISO_UTC.match(carols["last_seen"])

    bobs = await alice_socket.request(type="users", q="BOB", limit=5)
    assert [u["user"] for u in bobs["users"]] == ["bob", "bobby"]
    assert bobs["users"][1] == {
        "user": "bobby",
        "name": "bobby",
        "online": False,
        "last_seen": None,
    }
    assert await error_of(alice_socket, type="users", limit=51) == "bad_command"
    assert await error_of(alice_socket, type="users", q=5) == "bad_command"


async def test_presence_offline_and_members_carry_last_seen(layer, connect, alice, bob):
    alice_socket, bob_socket = await connect(alice), await connect(bob)
    for client in (alice_socket, bob_socket):
        assert (await client.request(type="join", group="G"))["type"] == "joined"
    # A flap within one notice batch may cause no notice at all: let bob be online first.
    await alice_socket.expect("presence", user="bob", online=True)

    await bob_socket.close()
    offline = await alice_socket.expect("presence", user="bob", online=False)
    assert ISO_UTC.match(offline["last_seen"])

    members = await alice_socket.request(type="members", group="g")
    assert members["group"] == "G"
    assert members["members"] == [
        {
            "user": "alice",
            "name": "alice",
            "online": True,
            "last_seen": None,
            "read_id": 0,
            "role": "owner",
        },
        {
            "user": "bob",
            "name": "bob",
            "online": False,
            "last_seen": offline["last_seen"],
            "read_id": 0,
            "role": "member",
        },
    ]


async def test_groups_are_found_by_prefix_with_members_online_and_membership(
    layer, connect, alice, bob
):
    alice_socket, bob_socket = await connect(alice), await connect(bob)
    assert (await alice_socket.request(type="join", group="Design Team"))["type"] == "joined"
    assert (await bob_socket.request(type="join", group="Devs"))["type"] == "joined"
    assert (await bob_socket.request(type="join", group="design team"))["type"] == "joined"
    await alice_socket.expect("presence", user="bob", online=True)
    await bob_socket.close()
    await alice_socket.expect("presence", user="bob", online=False)

    reply = await alice_socket.request(type="groups", q="de")

    assert reply["groups"] == [
        {"group": "Design Team", "members": 2, "online": 1, "member": True, "private": False},
        {"group": "Devs", "members": 1, "online": None, "member": False, "private": False},
    ]
    assert await error_of(alice_socket, type="groups", limit=0) == "bad_command"


# -- group names and joined ------------------------------------------------------


async def test_join_says_created_only_to_the_creator_and_case_variants_are_one_group(
    layer, connect, alice, bob
):
    alice_socket, bob_socket = await connect(alice), await connect(bob)

    created = await alice_socket.request(type="join", group="Design Team")
    assert created["created"] is True and created["group"] == "Design Team"
    joined = await bob_socket.request(type="join", group="design team")
    assert "created" not in joined and joined["group"] == "Design Team"
    told = await alice_socket.expect("joined", user="bob")
    assert told == {"type": "joined", "group": "Design Team", "user": "bob", "private": False}

    await send_ok(bob_socket, {"group": "DESIGN TEAM"}, "hello")
    message = await alice_socket.expect("message")
    assert message["to"] == {"group": "Design Team"}
