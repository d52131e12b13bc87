"""Private groups and roles (issue 27, protocol 1.2): `create`, `invite`, `remove`, `role`.

On both channel layers: a private group is invisible to a non-member in
every command; `join` of it is `invite_only`; invitations, removals and role
changes reach the people they concern with `by`; a removed member's sockets
hear nothing more of the group; the last owner stays.
"""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.test import Client

from chat.joining import JoinRequest, group_join_many
from chat.models import ChatGroup, Membership
from chat.protocol import INVITE_ONLY, ChatError
from tests.conftest import make_user

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _room_for_many_commands(settings):
    settings.CHAT_RATE_BURST = 500
    settings.CHAT_MEMBERSHIP_CHANGES_PER_MINUTE = 500


def error_code(reply: dict) -> str:
    assert reply["type"] == "error", reply
    return reply["code"]


async def test_create_a_private_group_and_the_names_it_takes(layer, connect, alice, bob):
    alice_tab, alice_other = await connect(alice), await connect(alice)
    bob_socket = await connect(bob)

    created = await alice_tab.request(type="create", group="Secret Ops", private=True)
    assert {k: v for k, v in created.items() if k != "ref"} == {
        "type": "joined",
        "group": "Secret Ops",
        "user": "alice",
        "created": True,
        "private": True,
    }
    await alice_other.expect("joined", group="Secret Ops", user="alice", private=True)
    members = await alice_tab.request(type="members", group="secret ops")
    assert [(m["user"], m["role"]) for m in members["members"]] == [("alice", "owner")]

    # Any case of a taken name, private or not, and whoever asks.
    assert error_code(await bob_socket.request(type="create", group="SECRET OPS")) == "group_exists"
    assert error_code(await alice_tab.request(type="create", group="secret ops")) == "group_exists"
    # A look-alike is refused, without the private group's spelling.
    lookalike = await bob_socket.request(type="create", group="S\u0435cret Ops")  # a Cyrillic e
    assert lookalike["code"] == "bad_group" and "Secret" not in lookalike["message"], lookalike
    bad = await bob_socket.request(type="create", group="x", private="yes")
    assert error_code(bad) == "bad_command"

    # `join` of a new name still creates a public group, owned by its creator.
    joined = await bob_socket.request(type="join", group="Lobby")
    assert joined["created"] is True and joined["private"] is False
    public = await bob_socket.request(type="create", group="Open")
    assert public["created"] is True and public["private"] is False
    members = await bob_socket.request(type="members", group="Lobby")
    assert [(m["user"], m["role"]) for m in members["members"]] == [("bob", "owner")]
    listed = await alice_tab.request(type="groups", q="")
    assert [(g["group"], g["private"], g["member"]) for g in listed["groups"]] == [
        ("Lobby", False, False),
        ("Open", False, False),
        ("Secret Ops", True, True),
    ]


async def test_a_private_group_is_invisible_to_a_non_member(layer, connect, alice, bob):
    alice_socket, bob_socket = await connect(alice), await connect(bob)
    await alice_socket.request(type="create", group="Secret", private=True)
    sent = await alice_socket.request(type="send", to={"group": "Secret"}, body="hush")
    await alice_socket.request(type="read", of={"group": "Secret"}, id=sent["id"])
    await alice_socket.send(type="typing", to={"group": "Secret"})
    await alice_socket.request(type="react", id=sent["id"], emoji="👍")

    async def answers(group: str) -> list[dict]:
        """What bob is told of `group` by every command that names a group, but `join`."""
        commands = [
            {"type": "leave", "group": group},
            {"type": "members", "group": group},
            {"type": "history", "of": {"group": group}},
            {"type": "send", "to": {"group": group}, "body": "hi"},
            {"type": "read", "of": {"group": group}, "id": 1},
            {"type": "typing", "to": {"group": group}},
            {"type": "invite", "group": group, "user": "bob"},
            {"type": "remove", "group": group, "user": "alice"},
            {"type": "role", "group": group, "user": "alice", "role": "member"},
        ]
        return [
            {k: v for k, v in (await bob_socket.request(**command)).items() if k != "ref"}
            for command in commands
        ]

    # Answered exactly as for a group that does not exist at all.
    secret, missing = await answers("Secret"), await answers("Nowhere")
    for told, untold in zip(secret, missing, strict=True):
        assert told["code"] == untold["code"] == "not_member", (told, untold)
        assert told["message"] == untold["message"].replace("Nowhere", "Secret")
    # `join` alone says it exists, to someone who names it.
    assert error_code(await bob_socket.request(type="join", group="secret")) == INVITE_ONLY

    for q in ("", "s", "secret"):
        listed = await bob_socket.request(type="groups", q=q)
        assert "Secret" not in [g["group"] for g in listed["groups"]], listed
    sync = await bob_socket.request(type="sync", since=0)
    changes = await bob_socket.request(type="changes", since=0)
    conversations = await bob_socket.request(type="conversations")
    assert "hush" not in str([sync, changes, conversations])
    assert "Secret" not in str(conversations)
    # Nothing live either: no message, typing, receipt, reaction or notice.
    marker = await alice_socket.request(type="send", to={"user": "bob"}, body="marker")
    await bob_socket.expect("message", id=marker["id"])
    assert "Secret" not in str(list(bob_socket.inbox)), list(bob_socket.inbox)


async def test_invite_role_and_remove_with_their_events(layer, connect, alice, bob, carol):
    alice_tab, alice_other = await connect(alice), await connect(alice)
    bob_socket, carol_socket = await connect(bob), await connect(carol)
    await alice_tab.request(type="create", group="Team", private=True)

    invited = await alice_tab.request(type="invite", group="team", user="bob")
    assert {k: v for k, v in invited.items() if k != "ref"} == {
        "type": "joined",
        "group": "Team",
        "user": "bob",
        "by": "alice",
        "private": True,
    }
    for socket in (bob_socket, alice_other):
        await socket.expect("joined", group="Team", user="bob", by="alice", private=True)
    # A member of a private group does not invite; nor may anyone set roles but an owner.
    assert error_code(await bob_socket.request(type="invite", group="Team", user="carol")) == (
        "forbidden"
    )
    assert error_code(
        await bob_socket.request(type="role", group="Team", user="bob", role="owner")
    ) == ("forbidden")
    assert error_code(await alice_tab.request(type="invite", group="Team", user="nobody")) == (
        "no_such_user"
    )

    role = await alice_tab.request(type="role", group="Team", user="bob", role="admin")
    assert role["type"] == "role" and role["role"] == "admin" and role["by"] == "alice"
    for socket in (bob_socket, alice_other):
        await socket.expect("role", group="Team", user="bob", role="admin", by="alice")

    # An admin invites at once; the invited user can then read and send.
    await bob_socket.request(type="invite", group="Team", user="carol")
    await carol_socket.expect("joined", group="Team", user="carol", by="bob")
    await alice_tab.expect("joined", group="Team", user="carol", by="bob")
    members = await carol_socket.request(type="members", group="Team")
    assert [(m["user"], m["role"]) for m in members["members"]] == [
        ("alice", "owner"),
        ("bob", "admin"),
        ("carol", "member"),
    ]
    # A member removes nobody; an admin removes a member but not an admin or an owner.
    assert error_code(await carol_socket.request(type="remove", group="Team", user="bob")) == (
        "forbidden"
    )
    assert error_code(await bob_socket.request(type="remove", group="Team", user="alice")) == (
        "forbidden"
    )
    assert error_code(await alice_tab.request(type="remove", group="Team", user="nobody")) == (
        "not_member"
    )

    removed = await bob_socket.request(type="remove", group="Team", user="carol")
    assert removed["type"] == "left" and removed["user"] == "carol" and removed["by"] == "bob"
    for socket in (carol_socket, alice_tab, alice_other):
        await socket.expect("left", group="Team", user="carol", by="bob")

    # From now on carol hears nothing of Team, and reads nothing of it.
    await alice_tab.send(type="typing", to={"group": "Team"})
    after = await alice_tab.request(type="send", to={"group": "Team"}, body="after carol")
    await bob_socket.expect("message", id=after["id"])
    await alice_tab.request(type="read", of={"group": "Team"}, id=after["id"])
    history = await carol_socket.request(type="history", of={"group": "Team"})
    assert error_code(history) == "not_member"
    sync = await carol_socket.request(type="sync", since=0)
    assert "after carol" not in str(sync)
    marker = await alice_tab.request(type="send", to={"user": "carol"}, body="marker")
    await carol_socket.expect("message", id=marker["id"])
    leaked = [e for e in carol_socket.inbox if "Team" in str(e)]
    assert not leaked, leaked
    # Private: carol cannot come back by herself.
    assert error_code(await carol_socket.request(type="join", group="Team")) == INVITE_ONLY


async def test_in_a_public_group_any_member_invites(layer, connect, alice, bob, carol):
    alice_socket, bob_socket = await connect(alice), await connect(bob)
    carol_socket = await connect(carol)
    await alice_socket.request(type="join", group="Pub")
    await alice_socket.request(type="invite", group="Pub", user="bob")
    await bob_socket.expect("joined", group="Pub", user="bob", by="alice", private=False)
    again = await alice_socket.request(type="invite", group="Pub", user="bob")
    assert again["type"] == "joined"  # already in: answered, nobody told again
    await bob_socket.request(type="invite", group="Pub", user="carol")
    await carol_socket.expect("joined", group="Pub", user="carol", by="bob")
    # A member of a public group still removes nobody.
    assert error_code(await bob_socket.request(type="remove", group="Pub", user="carol")) == (
        "forbidden"
    )
    await bob_socket.assert_nothing("joined", timeout=0.2)


async def test_the_last_owner_stays_while_others_remain(layer, connect, alice, bob):
    alice_socket, bob_socket = await connect(alice), await connect(bob)
    await alice_socket.request(type="create", group="Club", private=True)
    await alice_socket.request(type="invite", group="Club", user="bob")

    assert error_code(await alice_socket.request(type="leave", group="Club")) == "last_owner"
    demote = await alice_socket.request(type="role", group="Club", user="alice", role="admin")
    assert error_code(demote) == "last_owner"
    await alice_socket.request(type="role", group="Club", user="bob", role="owner")
    # Another owner now: alice may step down, or go.
    await alice_socket.request(type="role", group="Club", user="alice", role="member")
    assert error_code(await bob_socket.request(type="leave", group="Club")) == "last_owner"
    await bob_socket.request(type="role", group="Club", user="alice", role="owner")
    assert (await alice_socket.request(type="leave", group="Club"))["type"] == "left"
    # The only member, an owner, may leave: the group, with no message, is gone.
    assert (await bob_socket.request(type="leave", group="Club"))["type"] == "left"
    assert not await sync_to_async(ChatGroup.objects.filter(key="club").exists)()


async def test_a_public_group_made_with_create_keeps_its_last_owner_too(layer, connect, alice, bob):
    alice_socket, bob_socket = await connect(alice), await connect(bob)
    await alice_socket.request(type="create", group="Open Club")
    await bob_socket.request(type="join", group="Open Club")

    assert error_code(await alice_socket.request(type="leave", group="Open Club")) == "last_owner"


async def test_a_group_made_by_join_passes_its_owner_on_so_a_version_1_client_can_leave(
    layer, connect, alice, bob, carol
):
    """Protocol 1.0 made groups by joining them and had no owners: its clients
    leave as before, and the member who joined first becomes the owner."""
    alice_socket, bob_socket = await connect(alice), await connect(bob)
    carol_socket = await connect(carol)
    await alice_socket.request(type="join", group="Lobby")  # its creator: the owner
    await bob_socket.request(type="join", group="Lobby")
    await carol_socket.request(type="join", group="Lobby")
    await bob_socket.expect("joined", group="Lobby", user="carol")

    assert (await alice_socket.request(type="leave", group="Lobby"))["type"] == "left"

    for socket in (bob_socket, carol_socket):
        await socket.expect("left", group="Lobby", user="alice")
        event = await socket.expect("role", group="Lobby")
        assert {k: event[k] for k in ("user", "role", "by")} == {
            "user": "bob",
            "role": "owner",
            "by": "alice",
        }
    members = await carol_socket.request(type="members", group="Lobby")
    roles = {m["user"]: m["role"] for m in members["members"]}
    assert roles == {"bob": "owner", "carol": "member"}
    # The new owner is the last one now, in a group made by a join: they may go too.
    assert (await bob_socket.request(type="leave", group="Lobby"))["type"] == "left"
    await carol_socket.expect("role", group="Lobby", user="carol", role="owner")


async def test_an_invitation_is_held_to_the_cap_of_the_invited(
    layer, connect, settings, alice, bob
):
    settings.CHAT_GROUPS_PER_USER = 1
    alice_socket, bob_socket = await connect(alice), await connect(bob)
    await bob_socket.request(type="join", group="Mine")
    await alice_socket.request(type="create", group="Full", private=True)
    refused = await alice_socket.request(type="invite", group="Full", user="bob")
    assert error_code(refused) == "too_many_groups" and "bob" in refused["message"]
    await bob_socket.assert_nothing("joined", timeout=0.2)


def test_a_batch_of_joins_refuses_a_private_group_to_non_members(alice, bob, carol):
    secret = ChatGroup.objects.create(name="Hidden", private=True)
    Membership.objects.create(group=secret, user=alice, role="owner")
    ChatGroup.objects.create(name="Open")

    answers = group_join_many(
        [JoinRequest(alice, "Hidden"), JoinRequest(bob, "hidden"), JoinRequest(carol, "Open")]
    )

    assert answers[0].changed is False and answers[0].private is True
    assert isinstance(answers[1], ChatError) and answers[1].code == INVITE_ONLY
    assert answers[2].changed is True and answers[2].private is False
    assert not Membership.objects.filter(user=bob).exists()


async def test_the_admin_shows_and_changes_roles_and_the_private_flag(
    memory_layer, connect, alice, bob
):
    alice_socket, bob_socket = await connect(alice), await connect(bob)
    await alice_socket.request(type="create", group="Desk")
    await alice_socket.request(type="invite", group="Desk", user="bob")
    admin = await make_user("root")
    await sync_to_async(get_user_model().objects.filter(pk=admin.pk).update)(
        is_staff=True, is_superuser=True
    )
    group = await sync_to_async(ChatGroup.objects.get)(key="desk")
    membership = await sync_to_async(Membership.objects.get)(group=group, user=bob)

    def in_admin() -> tuple[str, int, int]:
        client = Client()
        client.force_login(admin)
        listing = client.get("/admin/chat/membership/").content.decode()
        # The group's page: private on, bob made an admin in its member list.
        flagged = client.post(
            f"/admin/chat/chatgroup/{group.pk}/change/",
            {
                "name": "Desk",
                "key": "desk",
                "private": "on",
                "memberships-TOTAL_FORMS": "1",
                "memberships-INITIAL_FORMS": "1",
                "memberships-0-id": str(membership.pk),
                "memberships-0-group": str(group.pk),
                "memberships-0-role": "admin",
            },
        )
        # The membership's own page: back to member.
        changed = client.post(
            f"/admin/chat/membership/{membership.pk}/change/",
            {"group": group.pk, "user": bob.pk, "role": "member"},
        )
        return listing, flagged.status_code, changed.status_code

    listing, flagged, changed = await sync_to_async(in_admin)()
    assert "role__exact=owner" in listing and flagged == 302 and changed == 302
    for socket in (alice_socket, bob_socket):
        await socket.expect("role", group="Desk", user="bob", role="admin", by="root")
        await socket.expect("role", group="Desk", user="bob", role="member", by="root")
    assert await sync_to_async(lambda: ChatGroup.objects.get(pk=group.pk).private)()


def test_the_migration_makes_each_groups_earliest_member_its_owner(alice, bob, carol):
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    executor = MigrationExecutor(connection)
    executor.migrate([("chat", "0015_message_search_vector")])
    old = executor.loader.project_state([("chat", "0015_message_search_vector")]).apps
    OldGroup, OldMembership = (
        old.get_model("chat", "ChatGroup"),
        old.get_model("chat", "Membership"),
    )
    team = OldGroup.objects.create(name="Team", key="team")
    other = OldGroup.objects.create(name="Other", key="other")
    OldGroup.objects.create(name="Empty", key="empty")
    for group, users in ((team, (bob, alice, carol)), (other, (carol, alice))):
        for user in users:
            OldMembership.objects.create(group_id=group.pk, user_id=user.pk)

    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())

    roles = set(Membership.objects.values_list("group__name", "user__username", "role"))
    assert roles == {
        ("Team", "bob", "owner"),
        ("Team", "alice", "member"),
        ("Team", "carol", "member"),
        ("Other", "carol", "owner"),
        ("Other", "alice", "member"),
    }
    assert not ChatGroup.objects.filter(private=True).exists()
