"""chat.admin as a superuser sees it, through Django's test client."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse

from chat.delivery.mirror import connection_record
from chat.groups import group_join
from chat.messaging import message_send
from chat.models import ChatGroup, Connection, Message
from chat.protocol import Address

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def admin(transactional_db) -> Client:
    user = get_user_model().objects.create_superuser("root", "root@example.com", "pw-root")
    client = Client()
    client.force_login(user)
    return client


def changelist(model: str) -> str:
    return reverse(f"admin:chat_{model}_changelist")


def change(model: str, pk: int) -> str:
    return reverse(f"admin:chat_{model}_change", args=[pk])


def listed(response) -> list:
    return list(response.context["cl"].result_list)


@pytest.fixture
def group_a(alice, bob, carol) -> ChatGroup:
    """Group A: alice (two sockets), bob (offline), carol (one socket)."""
    for user in (alice, bob, carol):
        group_join(user=user, name="A")
    connection_record(user_id=alice.pk, worker="w1", connection_id="a1", endpoint="json")
    connection_record(user_id=alice.pk, worker="w2", connection_id="a2", endpoint="json")
    connection_record(user_id=carol.pk, worker="w1", connection_id="c1", endpoint="plain")
    return ChatGroup.objects.get(name="A")


def test_anonymous_visitors_are_sent_to_the_admin_login(client):
    response = client.get(changelist("message"))

    assert response.status_code == 302
    assert reverse("admin:login") in response["Location"]


# -- groups --------------------------------------------------------------------


def test_group_changelist_counts_members_and_online_members(admin, group_a, alice):
    group_join(user=alice, name="B")

    response = admin.get(changelist("chatgroup"))

    assert response.status_code == 200
    counts = {g.name: (g.members_total, g.members_online) for g in listed(response)}
    # alice's two sockets count once; bob has no Connection row.
    assert counts == {"A": (3, 2), "B": (1, 1)}
    assert '<td class="field-member_count">3</td>' in response.content.decode()


def test_group_changelist_can_be_ordered_by_online_members(admin, group_a, bob):
    group_join(user=bob, name="B")

    response = admin.get(changelist("chatgroup"), {"o": "-3"})

    assert response.status_code == 200
    assert [g.name for g in listed(response)] == ["A", "B"]


def test_group_changelist_searches_by_name(admin, group_a, bob):
    group_join(user=bob, name="Other")

    response = admin.get(changelist("chatgroup"), {"q": "oth"})

    assert [g.name for g in listed(response)] == ["Other"]


def test_group_changeform_lists_its_members(admin, group_a):
    response = admin.get(change("chatgroup", group_a.pk))

    assert response.status_code == 200
    page = response.content.decode()
    for name in ("alice", "bob", "carol"):
        assert name in page


def test_group_add_form_renders(admin):
    response = admin.get(reverse("admin:chat_chatgroup_add"))

    assert response.status_code == 200


# -- memberships -------------------------------------------------------------


def test_membership_changelist_and_changeform_render(admin, group_a, bob):
    response = admin.get(changelist("membership"), {"q": "bob"})

    assert response.status_code == 200
    [membership] = listed(response)
    assert membership.user == bob
    assert admin.get(change("membership", membership.pk)).status_code == 200


def test_membership_changelist_filters_by_group(admin, group_a, bob):
    other = group_join(user=bob, name="B")

    response = admin.get(changelist("membership"), {"group__id__exact": other.group_id})

    assert [(m.group.name, m.user.username) for m in listed(response)] == [("B", "bob")]


def test_group_autocomplete_for_memberships_answers_in_name_order(admin, group_a, bob):
    for name in ("Zulu", "Bravo", "Alpha"):
        group_join(user=bob, name=name)

    response = admin.get(
        reverse("admin:autocomplete"),
        {"term": "", "app_label": "chat", "model_name": "membership", "field_name": "group"},
    )

    assert response.status_code == 200
    assert [r["text"] for r in response.json()["results"]] == ["A", "Alpha", "Bravo", "Zulu"]


# -- messages ------------------------------------------------------------------


@pytest.fixture
def messages(group_a, alice, bob, carol) -> dict[str, Message]:
    stored = {
        "direct": message_send(sender=alice, to=Address("user", "bob"), body="lunch at noon?"),
        "group": message_send(sender=bob, to=Address("group", "A"), body="group plans"),
        "all": message_send(sender=carol, to=Address("all"), body="hello everyone"),
    }
    return {kind: Message.objects.get(pk=s.id) for kind, s in stored.items()}


def test_message_changelist_renders_every_kind(admin, messages):
    response = admin.get(changelist("message"))

    assert response.status_code == 200
    assert {m.pk for m in listed(response)} == {m.pk for m in messages.values()}
    page = response.content.decode()
    assert "@bob" in page and "#A" in page and "everyone" in page


def test_message_search_by_text(admin, messages):
    response = admin.get(changelist("message"), {"q": "noon"})

    assert [m.pk for m in listed(response)] == [messages["direct"].pk]


def test_message_search_by_sender_username(admin, messages):
    response = admin.get(changelist("message"), {"q": "carol"})

    assert [m.pk for m in listed(response)] == [messages["all"].pk]


def test_message_search_by_recipient_username(admin, messages):
    response = admin.get(changelist("message"), {"q": "bob"})

    # bob sent the group message and received the direct one.
    assert {m.pk for m in listed(response)} == {messages["direct"].pk, messages["group"].pk}


def test_message_filter_by_kind(admin, messages):
    response = admin.get(changelist("message"), {"kind__exact": "group"})

    assert [m.pk for m in listed(response)] == [messages["group"].pk]


def test_message_filter_by_date(admin, messages):
    old = messages["all"]
    old.created_at = datetime(2020, 5, 17, 12, 0, tzinfo=UTC)
    old.save(update_fields=["created_at"])
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)

    by_day = admin.get(
        changelist("message"),
        {"created_at__year": 2020, "created_at__month": 5, "created_at__day": 17},
    )
    by_range = admin.get(
        changelist("message"),
        {
            "created_at__gte": str(today),
            "created_at__lt": str(today + timedelta(days=1)),
        },
    )

    assert [m.pk for m in listed(by_day)] == [old.pk]
    assert {m.pk for m in listed(by_range)} == {messages["direct"].pk, messages["group"].pk}


def test_long_message_bodies_are_shortened_in_the_list(admin, alice):
    message_send(sender=alice, to=Address("all"), body="x" * 200)

    response = admin.get(changelist("message"))

    assert "x" * 79 + "…" in response.content.decode()
    assert "x" * 80 not in response.content.decode()


def test_messages_are_read_only(admin, messages):
    message = messages["direct"]

    assert admin.get(reverse("admin:chat_message_add")).status_code == 403
    view = admin.get(change("message", message.pk))
    assert view.status_code == 200
    assert "lunch at noon?" in view.content.decode()
    assert 'name="body"' not in view.content.decode()

    response = admin.post(change("message", message.pk), {"body": "rewritten"})
    assert response.status_code == 403
    message.refresh_from_db()
    assert message.body == "lunch at noon?"


def test_a_message_page_shows_its_earlier_bodies(admin, alice):
    from chat.message_changes import message_edit

    stored = message_send(sender=alice, to=Address("all"), body="first wording")
    message_edit(user=alice, message_id=stored.id, body="second wording")

    page = admin.get(change("message", stored.id)).content.decode()

    assert "first wording" in page and "second wording" in page


def test_deleting_in_the_admin_leaves_the_protocols_tombstone(admin, messages, alice):
    from chat.message_changes import message_edit, message_react

    message = messages["all"]
    message_react(user=alice, message_id=message.pk, emoji="👍", on=True)
    message_edit(user=message.sender, message_id=message.pk, body="hello again")

    response = admin.post(reverse("admin:chat_message_delete", args=[message.pk]), {"post": "yes"})

    assert response.status_code == 302
    message.refresh_from_db()
    assert (message.deleted, message.body, message.rev is not None) == (True, "", True)
    assert not message.reactions.exists() and not message.edits.exists()


def test_deleting_selected_messages_in_the_admin_tombstones_each(admin, messages):
    ids = [messages["group"].pk, messages["all"].pk]

    admin.post(
        changelist("message"),
        {"action": "delete_selected", "_selected_action": ids, "post": "yes"},
    )

    assert list(Message.objects.filter(pk__in=ids).values_list("deleted", "body")) == [
        (True, ""),
        (True, ""),
    ]


# -- connections ---------------------------------------------------------------


def test_connection_changelist_lists_open_sockets_and_filters_by_worker(admin, group_a):
    everyone = admin.get(changelist("connection"))
    on_w2 = admin.get(changelist("connection"), {"worker": "w2"})

    assert everyone.status_code == 200
    assert {c.connection_id for c in listed(everyone)} == {"a1", "a2", "c1"}
    assert [c.connection_id for c in listed(on_w2)] == ["a2"]


def test_connection_changelist_searches_by_username(admin, group_a):
    response = admin.get(changelist("connection"), {"q": "carol"})

    assert [c.connection_id for c in listed(response)] == ["c1"]


def test_connections_are_read_only(admin, group_a):
    connection = Connection.objects.get(connection_id="c1")

    assert admin.get(reverse("admin:chat_connection_add")).status_code == 403
    view = admin.get(change("connection", connection.pk))
    assert view.status_code == 200
    assert 'name="worker"' not in view.content.decode()
    response = admin.post(change("connection", connection.pk), {"worker": "elsewhere"})
    assert response.status_code == 403
    connection.refresh_from_db()
    assert connection.worker == "w1"


def test_admin_index_lists_the_chat_models(admin):
    response = admin.get(reverse("admin:index"))

    assert response.status_code == 200
    page = response.content.decode()
    for name in ("Chat groups", "Memberships", "Messages", "Online connections"):
        assert name in page
    assert 'href="/admin/workers/">Live workers</a>' in page


def test_chat_groups_and_permission_groups_have_different_names(admin):
    page = admin.get(reverse("admin:index")).content.decode()

    chat_groups = f'href="{changelist("chatgroup")}">'
    permission_groups = f'href="{reverse("admin:auth_group_changelist")}">'
    assert page.split(chat_groups)[1].split("<")[0] == "Chat groups"
    assert page.split(permission_groups)[1].split("<")[0] == "Groups"


def test_online_connections_offer_no_delete_that_leaves_sockets_open(admin, group_a):
    response = admin.get(changelist("connection"))

    assert "delete_selected" not in response.content.decode()
    assert "delete_selected" not in response.context["cl"].model_admin.get_actions(
        response.wsgi_request
    )
    connection = Connection.objects.get(connection_id="c1")
    delete = admin.post(
        reverse("admin:chat_connection_delete", args=[connection.pk]), {"post": "yes"}
    )
    assert delete.status_code == 403
    assert Connection.objects.filter(connection_id="c1").exists()


def test_user_list_says_who_is_online(admin, group_a, alice, bob, carol):
    response = admin.get(reverse("admin:auth_user_changelist"))

    assert response.status_code == 200
    online = {user.username: bool(user.has_connection) for user in listed(response)}
    assert online == {"root": False, "alice": True, "bob": False, "carol": True}
    ordered = admin.get(reverse("admin:auth_user_changelist"), {"o": "-6"})
    assert ordered.status_code == 200


# -- who may read direct messages ----------------------------------------------


def staff_with(*codenames: str) -> Client:
    from django.contrib.auth.models import Permission

    user = get_user_model().objects.create_user("moderator", password="pw-moderator-1")
    user.is_staff = True
    user.save()
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    client = Client()
    client.force_login(user)
    return client


def test_staff_who_may_view_messages_do_not_read_direct_ones(messages):
    staff = staff_with("view_message")

    response = staff.get(changelist("message"))
    assert response.status_code == 200
    assert {m.pk for m in listed(response)} == {messages["group"].pk, messages["all"].pk}
    assert "lunch at noon" not in response.content.decode()
    # Nor by searching, filtering or opening it by id.
    assert listed(staff.get(changelist("message"), {"q": "noon"})) == []
    assert listed(staff.get(changelist("message"), {"kind__exact": "direct"})) == []
    detail = staff.get(change("message", messages["direct"].pk))
    assert detail.status_code == 302 and "lunch at noon" not in detail.content.decode()


def test_the_direct_message_permission_lets_staff_read_them(messages):
    staff = staff_with("view_message", "view_direct_message")

    response = staff.get(changelist("message"), {"q": "noon"})
    assert [m.pk for m in listed(response)] == [messages["direct"].pk]
    detail = staff.get(change("message", messages["direct"].pk))
    assert detail.status_code == 200 and "lunch at noon" in detail.content.decode()
