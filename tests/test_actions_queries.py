"""chat.actions.queries without a socket: the read-only commands and the greeting."""

from __future__ import annotations

import pytest

from chat import protocol
from chat.actions import membership, queries, sending
from chat.protocol import (
    Address,
    ChatError,
    Conversations,
    Groups,
    History,
    Join,
    Members,
    Ping,
    Send,
    Sync,
    Users,
    Who,
)
from tests.actions_support import actor, bench  # noqa: F401

pytestmark = pytest.mark.django_db(transaction=True)


async def test_history_and_sync_list_what_the_user_may_see(bench, alice, bob):  # noqa: F811
    to_bob = await sending.send(
        bench.services, actor(alice), Send(to=Address("user", "bob"), body="a")
    )
    to_all = await sending.send(bench.services, actor(bob), Send(to=Address("all"), body="b"))
    history = await queries.history(
        bench.services, actor(bob), History(of=Address("user", "alice"))
    )
    assert [m["id"] for m in history["messages"]] == [to_bob["id"]]
    assert history["of"] == {"user": "alice"} and history["more"] is False
    synced = await queries.sync(bench.services, actor(bob), Sync(since=0, ref="s"))
    assert [m["id"] for m in synced["messages"]] == [to_bob["id"], to_all["id"]]
    assert synced["ref"] == "s"


async def test_history_of_nobody_is_no_such_user(bench, alice):  # noqa: F811
    with pytest.raises(ChatError) as info:
        await queries.history(bench.services, actor(alice), History(of=Address("user", "nobody")))
    assert info.value.code == protocol.NO_SUCH_USER


async def test_who_pages_the_online_names(bench, alice):  # noqa: F811
    bench.outbox.online_users = ("carol", "alice", "bob")
    reply = await queries.who(bench.services, actor(alice), Who(limit=2))
    assert reply == {"type": "who", "online": ["alice", "bob"], "more": True, "next": "bob"}


async def test_members_with_presence_and_last_seen(bench, alice, bob):  # noqa: F811
    await membership.join(bench.services, actor(alice), Join(group="G"))
    await membership.join(bench.services, actor(bob), Join(group="G"))
    bench.outbox.online_users = ("alice",)
    await bench.parts.presence.note_seen("bob", "2026-01-01T00:00:00.000Z")
    reply = await queries.members(bench.services, actor(alice), Members(group="g"))
    assert reply["group"] == "G"
    assert reply["members"] == [
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
            "last_seen": "2026-01-01T00:00:00.000Z",
            "read_id": 0,
            "role": "member",
        },
    ]


async def test_members_of_a_group_one_is_not_in_is_not_member(bench, alice, bob):  # noqa: F811
    await membership.join(bench.services, actor(bob), Join(group="G"))
    with pytest.raises(ChatError) as info:
        await queries.members(bench.services, actor(alice), Members(group="G"))
    assert info.value.code == protocol.NOT_MEMBER


async def test_conversations_refuse_a_cursor_they_did_not_make(bench, alice):  # noqa: F811
    with pytest.raises(ChatError) as info:
        await queries.conversations(bench.services, actor(alice), Conversations(before="nope"))
    assert info.value.code == protocol.BAD_COMMAND
    reply = await queries.conversations(bench.services, actor(alice), Conversations())
    assert [item["of"] for item in reply["items"]] == [{"all": True}] and reply["more"] is False


async def test_users_and_groups_find_by_prefix(bench, alice, bob):  # noqa: F811
    await membership.join(bench.services, actor(bob), Join(group="Bakers"))
    bench.outbox.online_users = ("bob",)
    users = await queries.users(bench.services, actor(alice), Users(q="b"))
    assert users["users"] == [{"user": "bob", "name": "bob", "online": True, "last_seen": None}]
    groups = await queries.groups(bench.services, actor(alice), Groups(q="bak"))
    assert groups["groups"] == [
        {"group": "Bakers", "members": 1, "online": None, "member": False, "private": False}
    ]


async def test_ping_and_hello(bench, alice):  # noqa: F811
    assert await queries.ping(bench.services, actor(alice), Ping(ref="p")) == {
        "type": "pong",
        "ref": "p",
    }
    bench.outbox.online_users = ("alice",)
    hello = await queries.hello(bench.services, actor(alice), [(1, "G")])
    assert hello == {
        "type": "hello",
        "user": "alice",
        "name": "alice",
        "online": ("alice",),
        "groups": ["G"],
        "last_id": 0,
        "last_rev": 0,
        "edit_window": 3600,
    }
