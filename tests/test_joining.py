"""chat.joining: joins that arrive together, stored in one transaction."""

from __future__ import annotations

import asyncio

import pytest
from channels.db import database_sync_to_async
from django.db import connection
from django.test.utils import CaptureQueriesContext

from chat.coalesce import Coalescer
from chat.groups import MembershipChange, group_join
from chat.joining import JoinRequest, group_join_many
from chat.models import ChatGroup, Membership
from tests.conftest import _make_user

pytestmark = pytest.mark.django_db(transaction=True)


def _members(name: str) -> set[str]:
    return {m.user.username for m in Membership.objects.filter(group__name=name)}


def test_a_batch_answers_each_join_as_group_join_would(alice, bob, carol):
    group_join(user=bob, name="Old")

    changes = group_join_many(
        [
            JoinRequest(alice, "New"),
            JoinRequest(bob, "new"),  # same group, another spelling
            JoinRequest(bob, "Old"),  # already a member
            JoinRequest(carol, "OLD"),
            JoinRequest(alice, "New"),  # a second socket of the same user
        ]
    )

    new = ChatGroup.objects.get(key="new")
    old = ChatGroup.objects.get(key="old")
    assert new.name == "New"  # the first spelling creates it
    assert changes == [
        MembershipChange(new.pk, "New", alice.pk, "alice", True, created=True),
        MembershipChange(new.pk, "New", bob.pk, "bob", True),
        MembershipChange(old.pk, "Old", bob.pk, "bob", False),
        MembershipChange(old.pk, "Old", carol.pk, "carol", True),
        MembershipChange(new.pk, "New", alice.pk, "alice", False),
    ]
    assert _members("New") == {"alice", "bob"}
    assert _members("Old") == {"bob", "carol"}


def test_a_batch_costs_the_same_statements_whatever_its_size(transactional_db):
    users = [_make_user(f"u{i}") for i in range(60)]
    group_join(user=users[0], name="warm")

    def statements(batch: list[JoinRequest]) -> int:
        with CaptureQueriesContext(connection) as queries:
            group_join_many(batch)
        return len(queries)

    few = statements([JoinRequest(u, "A") for u in users[:3]])
    many = statements([JoinRequest(u, "B") for u in users[3:60]])

    assert few == many
    # Begin, the groups, new groups, the memberships there, new memberships, commit.
    assert many <= 6
    assert len(_members("B")) == 57


def test_a_join_alone_goes_through_group_join(alice):
    [change] = group_join_many([JoinRequest(alice, "Solo")])

    assert change.changed and change.created
    assert _members("Solo") == {"alice"}


def test_a_batch_that_meets_a_concurrent_change_is_retried_one_join_at_a_time(alice, bob):
    """Between the batch's read of the groups and its insert, the group comes into being.

    On PostgreSQL another worker can do that (or remove an emptied group);
    SQLite never lets two writers overlap, so here it happens on the batch's
    own connection: the insert fails the same way (IntegrityError), the
    whole batch is rolled back, and the Coalescer runs each join alone
    through `group_join`, which handles those races.
    """
    original_filter = ChatGroup.objects.filter
    raced = False

    def filter_then_create(*args, **kwargs):
        nonlocal raced
        found = list(original_filter(*args, **kwargs))
        if not raced and not found:
            raced = True
            ChatGroup.objects.create(name="Going")
        return found

    batches: list[int] = []

    def recording(requests: list[JoinRequest]) -> list[MembershipChange]:
        batches.append(len(requests))
        return group_join_many(requests)

    async def scenario() -> list[MembershipChange | BaseException]:
        join = Coalescer(database_sync_to_async(recording))
        return await asyncio.gather(
            join(JoinRequest(alice, "Going")),
            join(JoinRequest(bob, "Going")),
            return_exceptions=True,
        )

    ChatGroup.objects.filter = filter_then_create  # type: ignore[method-assign]
    try:
        outcomes = asyncio.run(scenario())
    finally:
        ChatGroup.objects.filter = original_filter  # type: ignore[method-assign]

    assert raced
    assert batches == [2, 1, 1]
    assert [(o.username, o.changed, o.created) for o in outcomes] == [  # type: ignore[union-attr]
        ("alice", True, True),
        ("bob", True, False),
    ]
    assert ChatGroup.objects.filter(key="going").count() == 1
    assert _members("Going") == {"alice", "bob"}


def test_joins_arriving_together_share_one_batch(transactional_db):
    users = [_make_user(f"c{i}") for i in range(30)]
    batches: list[int] = []

    def recording(requests: list[JoinRequest]) -> list[MembershipChange]:
        batches.append(len(requests))
        return group_join_many(requests)

    async def scenario() -> list[MembershipChange]:
        join = Coalescer(database_sync_to_async(recording))
        return await asyncio.gather(*(join(JoinRequest(u, "Rush")) for u in users))

    changes = asyncio.run(scenario())

    assert [c.username for c in changes] == [u.username for u in users]
    assert sum(c.created for c in changes) == 1
    assert sum(batches) == 30
    assert len(batches) <= 2  # the first alone, then everyone who came meanwhile
    assert len(_members("Rush")) == 30
