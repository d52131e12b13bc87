"""chat.actions.membership without a socket: who is told of a join or a leave."""

from __future__ import annotations

import pytest

from chat import protocol
from chat.actions import membership
from chat.models import group_key
from chat.protocol import ChatError, Join, Leave
from chat.ratelimit import MemoryRateLimiter
from tests.actions_support import actor, bench  # noqa: F401

pytestmark = pytest.mark.django_db(transaction=True)


async def test_first_join_creates_the_group_and_tells_its_members(bench, alice):  # noqa: F811
    reply = await membership.join(bench.services, actor(alice), Join(group="Book Club", ref="j"))
    assert reply == {
        "type": "joined",
        "group": "Book Club",
        "user": "alice",
        "created": True,
        "private": False,
        "ref": "j",
    }
    group_id, name = bench.parts.group_named[group_key("book club")]
    assert name == "Book Club"
    assert bench.outbox.told == [
        (
            ("members of", group_id, alice.pk, "conn-1"),
            {"type": "joined", "group": "Book Club", "user": "alice", "private": False},
        )
    ]
    assert group_id in bench.outbox.groups_here(alice.pk)


async def test_joining_again_tells_nobody(bench, alice):  # noqa: F811
    await membership.join(bench.services, actor(alice), Join(group="G"))
    bench.outbox.told.clear()
    reply = await membership.join(bench.services, actor(alice, "conn-2"), Join(group="g"))
    assert reply == {"type": "joined", "group": "G", "user": "alice", "private": False}
    assert bench.outbox.told == []


async def test_leave_tells_the_group_and_forgets_the_membership(bench, alice, bob):  # noqa: F811
    await membership.join(bench.services, actor(bob), Join(group="G"))
    await membership.join(bench.services, actor(alice), Join(group="G"))
    group_id = bench.parts.group_named[group_key("G")][0]
    bench.outbox.told.clear()
    reply = await membership.leave(bench.services, actor(alice), Leave(group="G"))
    assert reply == {"type": "left", "group": "G", "user": "alice"}
    assert bench.outbox.told == [
        (
            ("members of", group_id, alice.pk, "conn-1"),
            {"type": "left", "group": "G", "user": "alice"},
        )
    ]
    assert group_id not in bench.outbox.groups_here(alice.pk)


async def test_leaving_a_group_one_is_not_in_is_not_member(bench, alice):  # noqa: F811
    with pytest.raises(ChatError) as info:
        await membership.leave(bench.services, actor(alice), Leave(group="G"))
    assert info.value.code == protocol.NOT_MEMBER
    assert bench.outbox.told == []


async def test_membership_budget_refuses_before_anything_changes(bench, alice):  # noqa: F811
    bench.parts.membership_limiter = MemoryRateLimiter(burst=1, per_second=0.001)
    await membership.join(bench.services, actor(alice), Join(group="G"))
    bench.outbox.told.clear()
    with pytest.raises(ChatError) as info:
        await membership.leave(bench.services, actor(alice), Leave(group="G"))
    assert info.value.code == protocol.RATE_LIMITED
    assert bench.outbox.told == []
