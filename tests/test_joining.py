"""chat.joining: joins that arrive together, stored in one transaction."""

from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from django.db import connection
from django.test.utils import CaptureQueriesContext

from chat.coalesce import Coalescer
from chat.groups import MembershipChange, group_join, remove_if_empty
from chat.joining import JoinRequest, group_join_many
from chat.models import ChatGroup, Membership
from chat.protocol import BAD_GROUP, TOO_MANY_GROUPS, ChatError
from chat.worker import current_worker
from tests.conftest import _make_user, make_user

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
    users = [_make_user(f"u{i}") for i in range(61)]
    group_join(user=users[60], name="A")
    group_join(user=users[60], name="B")

    def statements(batch: list[JoinRequest]) -> int:
        with CaptureQueriesContext(connection) as queries:
            group_join_many(batch)
        return len(queries)

    few = statements([JoinRequest(u, "A") for u in users[:3]])
    many = statements([JoinRequest(u, "B") for u in users[3:60]])

    assert few == many
    # The groups, the users locked for the cap, their memberships there and
    # their counts, the new memberships (and on PostgreSQL the savepoint).
    assert many <= 7
    assert len(_members("B")) == 58


def test_a_join_alone_goes_through_group_join(alice):
    [change] = group_join_many([JoinRequest(alice, "Solo")])

    assert change.changed and change.created
    assert _members("Solo") == {"alice"}


def test_a_batch_that_meets_a_concurrent_change_is_retried_one_join_at_a_time(alice, bob, carol):
    """Between the batch's read of the group and its insert, the group is removed.

    On PostgreSQL another worker can do that (its last member leaves);
    SQLite never lets two writers overlap, so here it happens on the batch's
    own connection: the insert fails the same way (IntegrityError, on the
    foreign key at commit), the whole batch is rolled back, and the
    Coalescer runs each join alone through `group_join`, which retries it.
    """
    group_join(user=carol, name="Going")
    original_filter = ChatGroup.objects.filter
    raced = False

    def filter_then_remove(*args, **kwargs):
        nonlocal raced
        if raced:
            return original_filter(*args, **kwargs)
        found = list(original_filter(*args, **kwargs))
        if found:
            raced = True
            Membership.objects.filter(group=found[0]).delete()
            assert remove_if_empty(found[0].pk)
        return found

    batches: list[int] = []

    def recording(requests: list[JoinRequest]) -> list[MembershipChange | ChatError]:
        batches.append(len(requests))
        return group_join_many(requests)

    async def scenario() -> list[MembershipChange | BaseException]:
        join = Coalescer(database_sync_to_async(recording))
        return await asyncio.gather(
            join(JoinRequest(alice, "Going")),
            join(JoinRequest(bob, "Going")),
            return_exceptions=True,
        )

    ChatGroup.objects.filter = filter_then_remove  # type: ignore[method-assign]
    try:
        outcomes = asyncio.run(scenario())
    finally:
        ChatGroup.objects.filter = original_filter  # type: ignore[method-assign]

    assert raced
    assert batches == [2, 1, 1]
    assert [(o.username, o.changed) for o in outcomes] == [  # type: ignore[union-attr]
        ("alice", True),
        ("bob", True),
    ]
    assert ChatGroup.objects.filter(key="going").count() == 1
    assert _members("Going") == {"alice", "bob", "carol"}


def test_joins_past_the_cap_are_refused_and_the_rest_of_the_batch_stored(
    settings, alice, bob, carol
):
    settings.CHAT_GROUPS_PER_USER = 2
    group_join(user=alice, name="X")
    group_join(user=carol, name="Y")
    group_join(user=carol, name="Z")

    answers = group_join_many(
        [JoinRequest(alice, "Y"), JoinRequest(bob, "Y"), JoinRequest(alice, "Z")]
    )

    assert isinstance(answers[0], MembershipChange) and answers[0].changed
    assert isinstance(answers[1], MembershipChange) and answers[1].changed
    assert isinstance(answers[2], ChatError) and answers[2].code == TOO_MANY_GROUPS
    assert _members("Y") == {"alice", "bob", "carol"}
    assert _members("Z") == {"carol"}


def test_a_new_group_in_a_batch_is_held_to_the_rules_for_new_names(alice, bob):
    group_join(user=bob, name="Open")

    answers = group_join_many(
        [JoinRequest(alice, "Open"), JoinRequest(alice, "Pay\u200bpal"), JoinRequest(bob, "Fresh")]
    )

    assert isinstance(answers[0], MembershipChange) and answers[0].changed
    assert isinstance(answers[1], ChatError) and answers[1].code == BAD_GROUP
    assert isinstance(answers[2], MembershipChange) and answers[2].created
    assert not ChatGroup.objects.filter(name="Pay\u200bpal").exists()
    assert _members("Open") == {"alice", "bob"}


def test_joins_arriving_together_share_one_batch(transactional_db):
    users = [_make_user(f"c{i}") for i in range(30)]
    group_join(user=_make_user("founder"), name="Rush")
    batches: list[int] = []

    def recording(requests: list[JoinRequest]) -> list[MembershipChange | ChatError]:
        batches.append(len(requests))
        return group_join_many(requests)

    async def scenario() -> list[MembershipChange]:
        join = Coalescer(database_sync_to_async(recording))
        return await asyncio.gather(*(join(JoinRequest(u, "Rush")) for u in users))

    changes = asyncio.run(scenario())

    assert [(c.username, c.changed) for c in changes] == [(u.username, True) for u in users]
    assert sum(batches) == 30
    assert len(batches) <= 2  # the first alone, then everyone who came meanwhile
    assert len(_members("Rush")) == 31


async def test_sockets_joining_together_share_a_transaction_and_each_joined_is_stored(
    layer, connect
):
    """Through the socket: a `joined` reply comes after its batch committed."""
    users = [await make_user(f"s{i}") for i in range(12)]
    await sync_to_async(group_join)(user=await make_user("founder"), name="Rush")
    clients = [await connect(user) for user in users]
    batches: list[int] = []

    def recording(requests: list[JoinRequest]) -> list[MembershipChange | ChatError]:
        batches.append(len(requests))
        return group_join_many(requests)

    current_worker().join_group = Coalescer(database_sync_to_async(recording))

    @sync_to_async
    def stored(username: str) -> bool:
        return Membership.objects.filter(group__key="rush", user__username=username).exists()

    for index, client in enumerate(clients):
        await client.send(type="join", group="Rush", ref=f"j{index}")
    for index, client in enumerate(clients):
        reply = await client.expect("joined", ref=f"j{index}")
        assert reply["user"] == f"s{index}"
        assert await stored(f"s{index}")
    assert sum(batches) == 12
    assert len(batches) < 12
