"""CHAT_GROUPS_PER_USER: memberships per user are capped (issue 24, finding 5).

Every socket of a user subscribes to each of their groups and `hello` lists
them, so the number is bounded: a join past it is `too_many_groups`.
"""

from __future__ import annotations

import pytest

from chat.groups import add_membership, group_join, group_leave, user_groups
from chat.models import ChatGroup
from chat.protocol import TOO_MANY_GROUPS, ChatError

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def cap_of_three(settings):
    settings.CHAT_GROUPS_PER_USER = 3


def test_a_join_past_the_cap_is_too_many_groups_and_makes_no_group(cap_of_three, alice):
    for name in ("A", "B", "C"):
        group_join(user=alice, name=name)

    with pytest.raises(ChatError) as refused:
        group_join(user=alice, name="D")

    assert refused.value.code == TOO_MANY_GROUPS
    assert "3 groups" in refused.value.message
    assert [name for _, name in user_groups(user=alice)] == ["A", "B", "C"]
    assert not ChatGroup.objects.filter(name="D").exists()


def test_at_the_cap_an_existing_membership_is_joined_again_and_a_leave_makes_room(
    cap_of_three, alice
):
    for name in ("A", "B", "C"):
        group_join(user=alice, name=name)

    assert group_join(user=alice, name="b").changed is False
    group_leave(user=alice, name="A")
    assert group_join(user=alice, name="D").changed is True


def test_the_cap_holds_for_every_way_of_adding_a_member(cap_of_three, alice, bob):
    for name in ("A", "B", "C"):
        group_join(user=alice, name=name)
    existing = group_join(user=bob, name="Bobs")

    with pytest.raises(ChatError) as refused:
        add_membership(group_id=existing.group_id, user_id=alice.pk)

    assert refused.value.code == TOO_MANY_GROUPS


def test_zero_turns_the_cap_off(settings, alice):
    settings.CHAT_GROUPS_PER_USER = 0

    for n in range(12):
        group_join(user=alice, name=f"G{n}")

    assert len(user_groups(user=alice)) == 12


async def test_a_join_past_the_cap_is_answered_and_the_socket_stays(
    layer, connect, alice, settings
):
    settings.CHAT_GROUPS_PER_USER = 2
    alice_socket = await connect(alice)
    for name in ("A", "B"):
        assert (await alice_socket.request(type="join", group=name))["type"] == "joined"

    refused = await alice_socket.request(type="join", group="C")

    assert (refused["type"], refused["code"]) == ("error", TOO_MANY_GROUPS)
    assert (await alice_socket.request(type="ping"))["type"] == "pong"
