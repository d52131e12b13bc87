"""chat.groups called directly: join, leave, members, a user's groups."""

from __future__ import annotations

import threading

import pytest
from django.db import connection, connections
from django.test.utils import CaptureQueriesContext

from chat.groups import (
    MembershipChange,
    group_join,
    group_leave,
    group_member_names,
    group_members,
    groups_of_users,
    user_groups,
)
from chat.messaging import message_history, message_send
from chat.models import ChatGroup, Membership, Message
from chat.protocol import NOT_MEMBER, Address, ChatError

pytestmark = pytest.mark.django_db(transaction=True)


def test_first_join_creates_the_group_and_the_membership(alice):
    change = group_join(user=alice, name="A")

    group = ChatGroup.objects.get(name="A")
    assert change.group_id == group.pk
    assert change.group == "A"
    assert (change.user_id, change.username) == (alice.pk, "alice")
    assert change.changed is True
    assert list(group.members.all()) == [alice]


def test_joining_again_changes_nothing(alice):
    first = group_join(user=alice, name="A")

    again = group_join(user=alice, name="A")

    assert again.changed is False
    assert again.group_id == first.group_id
    assert Membership.objects.filter(user=alice).count() == 1
    assert ChatGroup.objects.count() == 1


def test_second_member_joins_the_existing_group(alice, bob):
    first = group_join(user=alice, name="A")

    second = group_join(user=bob, name="A")

    assert second.changed is True
    assert second.group_id == first.group_id
    assert ChatGroup.objects.count() == 1


def test_names_differing_only_in_case_are_one_group_with_the_creators_spelling(alice, bob):
    created = group_join(user=alice, name="Design Team")
    joined = group_join(user=bob, name="design TEAM")

    assert created.created is True
    assert joined.created is False
    assert joined.group_id == created.group_id
    assert joined.group == "Design Team"
    assert group_members(user=bob, name="DESIGN team") == ("Design Team", ["alice", "bob"])
    assert ChatGroup.objects.count() == 1


def test_a_message_to_another_case_is_stored_and_shown_in_the_creators_spelling(alice, bob):
    group_join(user=alice, name="Design Team")
    group_join(user=bob, name="design team")

    stored = message_send(sender=bob, to=Address("group", "DESIGN TEAM"), body="hi")

    assert stored.event["to"] == {"group": "Design Team"}
    history = message_history(user=alice, of=Address("group", "design team"), before=None, limit=5)
    assert [m["to"] for m in history] == [{"group": "Design Team"}]


def test_leaving_by_another_case_leaves_the_group(alice):
    group_join(user=alice, name="Design Team")

    change = group_leave(user=alice, name="design team")

    assert change.group == "Design Team"


def test_leave_ends_the_membership_and_keeps_the_group(alice, bob):
    group_join(user=alice, name="A")
    group_join(user=bob, name="A")

    change = group_leave(user=alice, name="A")

    assert change.changed is True
    assert (change.group, change.username) == ("A", "alice")
    assert not Membership.objects.filter(user=alice).exists()
    assert group_member_names(user=bob, name="A") == ["bob"]


def test_leaving_a_group_one_is_not_in_is_not_member(alice, bob):
    group_join(user=bob, name="A")

    with pytest.raises(ChatError) as refused:
        group_leave(user=alice, name="A")

    assert refused.value.code == NOT_MEMBER
    assert group_member_names(user=bob, name="A") == ["bob"]


def test_leaving_a_group_that_does_not_exist_is_not_member(alice):
    with pytest.raises(ChatError) as refused:
        group_leave(user=alice, name="nowhere")

    assert refused.value.code == NOT_MEMBER


def test_leaving_twice_is_not_member_the_second_time(alice):
    group_join(user=alice, name="A")
    group_leave(user=alice, name="A")

    with pytest.raises(ChatError) as refused:
        group_leave(user=alice, name="A")

    assert refused.value.code == NOT_MEMBER


def test_member_names_are_sorted_usernames(alice, bob, carol):
    for user in (carol, alice, bob):
        group_join(user=user, name="A")

    assert group_member_names(user=bob, name="A") == ["alice", "bob", "carol"]


def test_only_members_may_list_members(alice, bob):
    group_join(user=alice, name="A")

    with pytest.raises(ChatError) as refused:
        group_member_names(user=bob, name="A")

    assert refused.value.code == NOT_MEMBER


def test_listing_members_of_a_missing_group_is_not_member(alice):
    with pytest.raises(ChatError) as refused:
        group_member_names(user=alice, name="nowhere")

    assert refused.value.code == NOT_MEMBER


def test_user_groups_lists_own_groups_by_name(alice, bob):
    b = group_join(user=alice, name="B")
    a = group_join(user=alice, name="A")
    c = group_join(user=bob, name="C")

    assert user_groups(user=alice) == [(a.group_id, "A"), (b.group_id, "B")]
    assert user_groups(user=bob) == [(c.group_id, "C")]


def test_groups_of_users_reads_many_users_by_id_in_one_query(alice, bob, carol):
    b = group_join(user=alice, name="B")
    a = group_join(user=alice, name="A")
    group_join(user=bob, name="B")

    with CaptureQueriesContext(connection) as queries:
        groups = groups_of_users([alice.pk, bob.pk, carol.pk, alice.pk])

    assert groups == {
        alice.pk: [(a.group_id, "A"), (b.group_id, "B")],
        bob.pk: [(b.group_id, "B")],
        carol.pk: [],
    }
    assert len(queries) == 1


def test_user_groups_forgets_a_group_after_leaving(alice):
    group_join(user=alice, name="A")
    group_leave(user=alice, name="A")

    assert user_groups(user=alice) == []


def run_together(calls) -> list:
    """Run the calls in threads released at the same moment; their results in order."""
    barrier = threading.Barrier(len(calls))
    results: list = [None] * len(calls)

    def run(index: int, call) -> None:
        try:
            barrier.wait(timeout=10)
            results[index] = call()
        except BaseException as exc:
            results[index] = exc
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads), "a join hung"
    return results


def test_concurrent_joins_of_one_user_change_membership_once(alice):
    for name in ("A", "B", "C"):
        results = run_together([lambda name=name: group_join(user=alice, name=name)] * 4)

        assert all(isinstance(r, MembershipChange) for r in results), results
        assert [r.changed for r in results].count(True) == 1
        assert len({r.group_id for r in results}) == 1
    assert Membership.objects.filter(user=alice).count() == 3


def test_concurrent_first_joins_by_different_users_create_one_group(alice, bob, carol):
    results = run_together(
        [lambda user=user: group_join(user=user, name="new") for user in (alice, bob, carol)]
    )

    assert all(isinstance(r, MembershipChange) and r.changed for r in results), results
    assert ChatGroup.objects.filter(name="new").count() == 1
    assert group_member_names(user=alice, name="new") == ["alice", "bob", "carol"]


def test_the_last_member_leaving_an_empty_group_removes_it(alice, bob):
    group_join(user=alice, name="A")
    group_join(user=bob, name="A")
    group_leave(user=alice, name="A")
    assert ChatGroup.objects.filter(name="A").exists()  # bob is still in it

    group_leave(user=bob, name="A")

    assert not ChatGroup.objects.filter(name="A").exists()


def test_join_and_leave_cycles_leave_no_groups_behind(alice):
    for index in range(20):
        group_join(user=alice, name=f"spam {index}")
        group_leave(user=alice, name=f"spam {index}")

    assert ChatGroup.objects.count() == 0


def test_a_group_with_messages_stays_after_its_last_member_leaves(alice):
    group_join(user=alice, name="A")
    message_send(sender=alice, to=Address("group", "A"), body="kept for the record")

    group_leave(user=alice, name="A")

    assert ChatGroup.objects.filter(name="A").exists()
    assert Message.objects.filter(group__name="A").count() == 1


def test_joining_a_group_removed_meanwhile_creates_it_again(alice, bob, monkeypatch):
    """A join that found the group just before its last member left still joins."""
    group_join(user=bob, name="A")
    import chat.groups

    real = chat.groups._group_named
    calls = 0

    def found_then_emptied(name):
        nonlocal calls
        calls += 1
        found = real(name)
        if calls == 1:
            group_leave(user=bob, name="A")  # removes the group under this join
        return found

    monkeypatch.setattr(chat.groups, "_group_named", found_then_emptied)

    change = group_join(user=alice, name="A")

    assert change.changed is True
    assert list(ChatGroup.objects.get(name="A").members.all()) == [alice]
