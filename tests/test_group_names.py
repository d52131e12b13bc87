"""Group names that look like another group's, or hide invisible characters, are refused.

Issue 24, finding 8: `Team` with a combining grapheme joiner, with a
variation selector, in fullwidth letters or with a Cyrillic ie (U+0435) were all
accepted beside `Team`. New names are held to the look-alike rule of user
names (TR39 skeletons, chat.lookalikes), kept unique in `ChatGroup.skeleton`.
"""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection
from django.db.migrations.executor import MigrationExecutor

from chat.groups import group_join
from chat.models import ChatGroup
from chat.protocol import BAD_GROUP, ChatError

pytestmark = pytest.mark.django_db(transaction=True)

INVISIBLE = [
    pytest.param("Team\u034f", id="combining-grapheme-joiner"),
    pytest.param("Team\ufe0f", id="variation-selector"),
    pytest.param("Te\u200bam", id="zero-width-space"),
    pytest.param("Te\u00adam", id="soft-hyphen"),
]
ALIKE = [
    pytest.param("\uff34\uff45\uff41\uff4d", id="fullwidth"),
    pytest.param("T\u0435am", id="cyrillic-ie"),
    pytest.param("\u0422\u0415\u0410\u041c", id="cyrillic-capitals"),
    pytest.param("Tearn", id="rn-for-m"),
]


def refusal(user, name: str) -> str:
    with pytest.raises(ChatError) as refused:
        group_join(user=user, name=name)
    assert refused.value.code == BAD_GROUP
    return refused.value.message


@pytest.mark.parametrize("name", INVISIBLE)
def test_a_name_with_an_invisible_character_is_refused(alice, name):
    assert "invisible" in refusal(alice, name)
    assert not ChatGroup.objects.exists()


@pytest.mark.parametrize("name", ALIKE)
def test_a_name_that_looks_like_an_existing_group_is_refused_saying_which(alice, bob, name):
    group_join(user=alice, name="Team")

    assert refusal(bob, name) == f"{name!r} looks like the existing group 'Team'"
    assert list(ChatGroup.objects.values_list("name", flat=True)) == ["Team"]


def test_the_same_name_in_another_case_is_the_same_group_not_a_look_alike(alice, bob):
    group_join(user=alice, name="Team")

    assert group_join(user=bob, name="TEAM").group == "Team"


@pytest.mark.parametrize("name", ["Teams", "Tea", "Steam", "Téam"])
def test_names_that_only_resemble_are_their_own_groups(alice, name):
    group_join(user=alice, name="Team")

    assert group_join(user=alice, name=name).created


def test_the_database_refuses_a_look_alike_that_slips_past_the_check(alice):
    """Two look-alikes created at the same moment: the unique skeleton keeps one."""
    ChatGroup.objects.create(name="Team")

    with pytest.raises(IntegrityError):
        ChatGroup.objects.create(name="T\u0435am")


def test_the_admin_refuses_look_alikes_and_invisible_characters(alice):
    ChatGroup.objects.create(name="Team")

    for name in ("T\u0435am", "Team\u034f"):
        with pytest.raises(ValidationError) as refused:
            ChatGroup(name=name).full_clean()
        assert "name" in refused.value.message_dict
    ChatGroup.objects.get(name="Team").full_clean()  # a group is no look-alike of itself


def test_the_migration_gives_existing_groups_their_skeletons_oldest_first(alice, bob):
    executor = MigrationExecutor(connection)
    executor.migrate([("chat", "0009_relayedmessage")])
    old = executor.loader.project_state([("chat", "0009_relayedmessage")]).apps
    OldGroup = old.get_model("chat", "ChatGroup")
    first = OldGroup.objects.create(name="Team", key="team")
    alike = OldGroup.objects.create(name="T\u0435am", key="t\u0435am")
    other = OldGroup.objects.create(name="Other", key="other")

    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())

    skeletons = dict(ChatGroup.objects.values_list("pk", "skeleton"))
    assert skeletons == {first.pk: "tearn", alike.pk: None, other.pk: "other"}
    # The older keeps the name's place; the look-alike made before the rule still works.
    assert "looks like the existing group 'Team'" in refusal(alice, "\uff34\uff45\uff41\uff4d")
    assert group_join(user=bob, name="T\u0435am").group == "T\u0435am"


async def test_a_join_of_a_look_alike_is_answered_bad_group_and_the_socket_stays(
    layer, connect, alice, bob
):
    alice_socket, bob_socket = await connect(alice), await connect(bob)
    assert (await alice_socket.request(type="join", group="Team"))["type"] == "joined"

    refused = await bob_socket.request(type="join", group="T\u0435am")
    assert (refused["type"], refused["code"]) == ("error", BAD_GROUP)
    assert "looks like the existing group 'Team'" in refused["message"]
    assert (await bob_socket.request(type="join", group="team"))["group"] == "Team"


def test_the_admin_refuses_another_case_of_an_existing_name(alice):
    ChatGroup.objects.create(name="Team")

    with pytest.raises(ValidationError) as refused:
        ChatGroup(name="TEAM").full_clean()
    assert "exists already" in str(refused.value.message_dict["name"])
