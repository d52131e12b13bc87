"""Display names (protocol 1.2 `profile`): checked, stored, told to everyone online."""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async
from django.contrib.auth import get_user_model

from chat import protocol
from chat.actions import naming, parse, queries, sending
from chat.profiles import set_name
from chat.protocol import Address, ChatError, History, Profile, Send, Users
from tests.actions_support import actor, bench  # noqa: F401

pytestmark = pytest.mark.django_db(transaction=True)


async def test_a_name_is_stored_trimmed_and_told_to_everyone_but_the_changing_socket(
    bench,  # noqa: F811
    alice,
):
    _, command = parse(
        {"type": "profile", "name": "  Alice Liddell ", "ref": "p"}, max_body_chars=10
    )
    reply = await naming.profile(bench.services, actor(alice), command)
    assert reply == {"type": "profile", "user": "alice", "name": "Alice Liddell", "ref": "p"}
    assert bench.outbox.told == [
        (
            ("renamed", alice.pk, "conn-1"),
            {"type": "profile", "user": "alice", "name": "Alice Liddell"},
        )
    ]
    hello = await queries.hello(bench.services, actor(alice), [])
    assert hello["name"] == "Alice Liddell"


async def test_names_need_not_be_unique_and_may_look_alike(bench, alice, bob):  # noqa: F811
    await naming.profile(bench.services, actor(alice), Profile(name="Sam"))
    await naming.profile(bench.services, actor(bob), Profile(name="Sam"))
    found = await queries.users(bench.services, actor(alice), Users(q="", limit=10))
    assert {(u["user"], u["name"]) for u in found["users"]} >= {("alice", "Sam"), ("bob", "Sam")}
    # A Cyrillic a (U+0430) for the Latin one: refused for group names, fine here.
    reply = await naming.profile(bench.services, actor(bob), Profile(name="S\u0430m"))
    assert reply["name"] == "S\u0430m"


async def test_someone_without_a_name_is_called_by_their_username(bench, alice):  # noqa: F811
    hello = await queries.hello(bench.services, actor(alice), [])
    assert hello["name"] == "alice"
    ack = await sending.send(bench.services, actor(alice), Send(to=Address("all"), body="hi"))
    [stored] = await bench.parts.delivered_at_least(1)
    assert stored.id == ack["id"] and stored.event["from_name"] == "alice"


async def test_messages_carry_the_senders_name_now(bench, alice, bob):  # noqa: F811
    await sending.send(bench.services, actor(alice), Send(to=Address("user", "bob"), body="one"))
    # Changed through another copy of the user (another socket): the sending
    # socket's user object must not keep the old name.
    other_copy = await database_sync_to_async(get_user_model().objects.get)(pk=alice.pk)
    await database_sync_to_async(set_name)(other_copy, "Alice")
    await sending.send(bench.services, actor(alice), Send(to=Address("user", "bob"), body="two"))
    first, second = await bench.parts.delivered_at_least(2)
    assert (first.event["from_name"], second.event["from_name"]) == ("alice", "Alice")
    history = await queries.history(
        bench.services, actor(bob), History(of=Address("user", "alice"), limit=10)
    )
    assert [m["from_name"] for m in history["messages"]] == ["Alice", "Alice"]


@pytest.mark.parametrize(
    ("frame", "says"),
    [
        ({"type": "profile"}, "name"),
        ({"type": "profile", "name": 5}, "string"),
        ({"type": "profile", "name": ""}, "empty"),
        ({"type": "profile", "name": "   "}, "empty"),
        ({"type": "profile", "name": "x" * 65}, "64"),
        ({"type": "profile", "name": "evil\u202eexe.txt"}, "U+202E"),
        ({"type": "profile", "name": "zero\u200bwidth"}, "U+200B"),
        ({"type": "profile", "name": "two\nlines"}, "U+000A"),
        ({"type": "profile", "name": "tab\there"}, "U+0009"),
    ],
)
def test_a_bad_name_is_a_bad_command_saying_why(frame, says):
    with pytest.raises(ChatError) as refused:
        parse(frame, max_body_chars=10)
    assert refused.value.code == protocol.BAD_COMMAND
    assert says in refused.value.message


def test_sixty_four_characters_of_any_script_are_a_name():
    _, command = parse({"type": "profile", "name": "名" * 64}, max_body_chars=10)
    assert command == Profile(name="名" * 64)
