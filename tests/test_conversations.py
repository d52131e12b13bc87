"""chat.conversations called directly, and the migration that made group names
unique ignoring case."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.test.utils import CaptureQueriesContext

from chat.conversations import ReadRequest, read_positions_move, users_matching
from chat.groups import group_join
from chat.messaging import message_send
from chat.models import ReadPosition
from chat.profiles import set_name
from chat.protocol import Address, ChatError

pytestmark = pytest.mark.django_db(transaction=True)


def test_reads_arriving_together_are_written_in_one_statement(alice, bob, carol):
    to_alice = [
        message_send(sender=sender, to=Address("user", "alice"), body="hi").id
        for sender in (bob, carol)
    ]

    with CaptureQueriesContext(connection) as queries:
        moves = read_positions_move(
            [
                ReadRequest(alice, Address("user", "bob"), to_alice[0]),
                ReadRequest(alice, Address("user", "carol"), to_alice[1] + 50),
                ReadRequest(alice, Address("group", "nowhere"), 1),
            ]
        )

    writes = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("INSERT")]
    assert len(writes) == 1
    assert [m.id for m in moves[:2]] == [to_alice[0], to_alice[1]]  # clamped
    assert isinstance(moves[2], ChatError) and moves[2].code == "not_member"
    stored = dict(ReadPosition.objects.values_list("conversation", "message_id"))
    assert stored == {f"user:{bob.pk}": to_alice[0], f"user:{carol.pk}": to_alice[1]}


def test_a_read_position_never_moves_back(alice, bob):
    first = message_send(sender=bob, to=Address("user", "alice"), body="1").id
    second = message_send(sender=bob, to=Address("user", "alice"), body="2").id

    [ahead] = read_positions_move([ReadRequest(alice, Address("user", "bob"), second)])
    [behind] = read_positions_move([ReadRequest(alice, Address("user", "bob"), first)])

    assert (ahead.id, ahead.advanced) == (second, True)
    assert (behind.id, behind.advanced) == (second, False)
    assert ReadPosition.objects.get().message_id == second


def test_the_migration_merges_groups_differing_only_in_case_into_the_oldest(alice, bob):
    executor = MigrationExecutor(connection)
    executor.migrate([("chat", "0003_name_skeleton")])
    old = executor.loader.project_state([("chat", "0003_name_skeleton")]).apps
    ChatGroup, Membership, Message = (
        old.get_model("chat", name) for name in ("ChatGroup", "Membership", "Message")
    )
    first = ChatGroup.objects.create(name="Design Team")
    second = ChatGroup.objects.create(name="design team")
    Membership.objects.create(group=first, user_id=alice.pk)
    Membership.objects.create(group=second, user_id=alice.pk)
    Membership.objects.create(group=second, user_id=bob.pk)
    moved = Message.objects.create(
        kind="group", sender_id=bob.pk, group=second, body="hi", created_at="2026-01-01T00:00Z"
    )

    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())

    from chat.models import ChatGroup as Group
    from chat.models import Message as Stored

    [group] = Group.objects.all()
    assert (group.pk, group.name, group.key) == (first.pk, "Design Team", "design team")
    assert sorted(group.members.values_list("username", flat=True)) == ["alice", "bob"]
    assert Stored.objects.get(pk=moved.pk).group_id == first.pk
    assert group_join(user=bob, name="DESIGN TEAM").group == "Design Team"


def test_users_matching_is_one_query_the_exact_username_first_then_online_then_by_name(bob):
    """One query however many match; a name match online before the others found by name; an
    online name that is no user (deleted a moment ago) is not listed.
    """
    users = get_user_model().objects
    for i in range(8):
        set_name(users.create_user(username=f"p{i}"), f"Lee {i}")
    users.create_user(username="Lee")
    set_name(bob, "Bob Leeward")
    with CaptureQueriesContext(connection) as queries:
        found = users_matching(prefix="lee", limit=3, online=frozenset({"p2", "carol"}))
    assert len(queries) == 1
    assert found == [("Lee", "Lee", False), ("p2", "Lee 2", True), ("bob", "Bob Leeward", False)]
