"""chat.actions.changing without a socket: who is told of an edit, a deletion, a reaction."""

from __future__ import annotations

import pytest

from chat import protocol
from chat.actions import changing, sending
from chat.protocol import Address, ChatError, Delete, Edit, React, Send, Unreact
from tests.actions_support import actor, bench  # noqa: F401

pytestmark = pytest.mark.django_db(transaction=True)


async def test_an_edit_tells_the_messages_audience_but_the_editing_connection(
    bench,  # noqa: F811
    alice,
    bob,
):
    ack = await sending.send(
        bench.services, actor(alice), Send(to=Address("user", "bob"), body="helo")
    )
    reply = await changing.edit(
        bench.services, actor(alice), Edit(id=ack["id"], body="hello", ref="e")
    )
    assert reply["type"] == "edited" and reply["ref"] == "e"
    assert reply["message"]["body"] == "hello"
    [(audience, event)] = bench.outbox.told
    kind, users, group, everyone, excluded = audience
    assert (kind, set(users), group, everyone, excluded) == (
        "message",
        {alice.pk, bob.pk},
        None,
        False,
        "conn-1",
    )
    assert event["type"] == "edited" and "ref" not in event
    assert event["message"]["body"] == "hello"


async def test_only_the_author_edits(bench, alice, bob):  # noqa: F811
    ack = await sending.send(bench.services, actor(alice), Send(to=Address("all"), body="hi"))
    with pytest.raises(ChatError) as info:
        await changing.edit(bench.services, actor(bob), Edit(id=ack["id"], body="mine"))
    assert info.value.code == protocol.NOT_YOURS
    assert bench.outbox.told == []


async def test_a_repeated_reaction_is_answered_and_tells_nobody(bench, alice, bob):  # noqa: F811
    ack = await sending.send(bench.services, actor(alice), Send(to=Address("all"), body="hi"))
    await changing.react(bench.services, actor(bob), React(id=ack["id"], emoji="👍"))
    assert [audience[:4] for audience, _ in bench.outbox.told] == [("message", (), None, True)]
    bench.outbox.told.clear()
    again = await changing.react(bench.services, actor(bob), React(id=ack["id"], emoji="👍"))
    assert again["type"] == "reaction"
    assert bench.outbox.told == []
    await changing.unreact(bench.services, actor(bob), Unreact(id=ack["id"], emoji="👍"))
    assert len(bench.outbox.told) == 1


async def test_a_deletion_tells_the_audience(bench, alice, bob):  # noqa: F811
    ack = await sending.send(
        bench.services, actor(alice), Send(to=Address("user", "bob"), body="oops")
    )
    reply = await changing.delete(bench.services, actor(alice), Delete(id=ack["id"]))
    assert reply["type"] == "deleted"
    [(audience, event)] = bench.outbox.told
    assert set(audience[1]) == {alice.pk, bob.pk} and event["type"] == "deleted"
