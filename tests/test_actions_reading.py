"""chat.actions.reading without a socket: read positions, receipts and typing."""

from __future__ import annotations

import pytest

from chat import protocol
from chat.actions import membership, reading, sending
from chat.models import group_key
from chat.protocol import Address, ChatError, Join, Read, Send, Typing
from tests.actions_support import actor, bench  # noqa: F401

pytestmark = pytest.mark.django_db(transaction=True)


async def test_reading_a_direct_message_tells_my_other_sockets_and_the_sender(bench, alice, bob):  # noqa: F811
    ack = await sending.send(
        bench.services, actor(bob), Send(to=Address("user", "alice"), body="hi")
    )
    reply = await reading.read(
        bench.services, actor(alice), Read(of=Address("user", "bob"), id=ack["id"], ref="r")
    )
    assert reply == {"type": "read", "of": {"user": "bob"}, "id": ack["id"], "ref": "r"}
    assert bench.outbox.told == [
        (("user", alice.pk, "conn-1"), {"type": "read", "of": {"user": "bob"}, "id": ack["id"]}),
        (
            ("user", bob.pk, None),
            {"type": "receipt", "of": {"user": "alice"}, "user": "alice", "id": ack["id"]},
        ),
    ]


async def test_a_read_that_does_not_move_the_position_tells_nobody(bench, alice, bob):  # noqa: F811
    ack = await sending.send(
        bench.services, actor(bob), Send(to=Address("user", "alice"), body="hi")
    )
    await reading.read(bench.services, actor(alice), Read(of=Address("user", "bob"), id=ack["id"]))
    bench.outbox.told.clear()
    reply = await reading.read(bench.services, actor(alice), Read(of=Address("user", "bob"), id=1))
    assert reply["id"] == ack["id"]  # positions never move back
    assert bench.outbox.told == []


async def test_a_group_receipt_goes_through_the_throttle(bench, alice, bob):  # noqa: F811
    await membership.join(bench.services, actor(alice), Join(group="G"))
    await membership.join(bench.services, actor(bob), Join(group="G"))
    ack = await sending.send(bench.services, actor(bob), Send(to=Address("group", "G"), body="hi"))
    bench.outbox.told.clear()
    await reading.read(bench.services, actor(alice), Read(of=Address("group", "g"), id=ack["id"]))
    group_id = bench.parts.group_named[group_key("G")][0]
    assert bench.outbox.told[-1] == (
        ("group receipt", group_id, alice.pk),
        {"type": "receipt", "of": {"group": "G"}, "user": "alice", "id": ack["id"]},
    )


async def test_reading_a_group_one_is_not_in_is_not_member(bench, alice):  # noqa: F811
    with pytest.raises(ChatError) as info:
        await reading.read(bench.services, actor(alice), Read(of=Address("group", "G"), id=1))
    assert info.value.code == protocol.NOT_MEMBER


async def test_typing_to_a_user_goes_to_that_user_by_name(bench, alice):  # noqa: F811
    assert (
        await reading.typing(bench.services, actor(alice), Typing(to=Address("user", "bob")))
        is None
    )
    assert bench.outbox.told == [
        (("username", "bob"), {"type": "typing", "user": "alice", "to": {"user": "alice"}})
    ]


async def test_typing_to_oneself_tells_nobody(bench, alice):  # noqa: F811
    await reading.typing(bench.services, actor(alice), Typing(to=Address("user", "alice")))
    assert bench.outbox.told == []


async def test_typing_to_a_group_needs_membership_known_to_this_worker(bench, alice, bob):  # noqa: F811
    with pytest.raises(ChatError) as info:
        await reading.typing(bench.services, actor(alice), Typing(to=Address("group", "G")))
    assert info.value.code == protocol.NOT_MEMBER
    await membership.join(bench.services, actor(bob), Join(group="G"))
    with pytest.raises(ChatError) as info:  # the group is known, alice is not in it
        await reading.typing(bench.services, actor(alice), Typing(to=Address("group", "g")))
    assert info.value.code == protocol.NOT_MEMBER
    await membership.join(bench.services, actor(alice), Join(group="G"))
    bench.outbox.told.clear()
    await reading.typing(bench.services, actor(alice), Typing(to=Address("group", "g")))
    group_id = bench.parts.group_named[group_key("G")][0]
    assert bench.outbox.told == [
        (("group", group_id, alice.pk), {"type": "typing", "user": "alice", "to": {"group": "G"}})
    ]
