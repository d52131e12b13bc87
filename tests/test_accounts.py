"""chat.accounts: the sign-up form's rules and guest users."""

from __future__ import annotations

import re

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.test import Client

from chat.accounts import SignupForm, guest_create, is_guest_name
from tests.chatclient import TIMEOUT
from tests.conftest import REDIS_URL, require_redis

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "a-long-enough-passphrase-42"


def signup_form(username: str) -> SignupForm:
    return SignupForm({"username": username, "password1": PASSWORD, "password2": PASSWORD})


@pytest.mark.parametrize("name", ["guest-1", "Guest-abc", "GUEST-", "gUeSt-x"])
def test_guest_names_are_recognised_in_any_case(name):
    assert is_guest_name(name)


@pytest.mark.parametrize("name", ["guest", "guests", "myguest-1", "alice"])
def test_other_names_are_not_guest_names(name):
    assert not is_guest_name(name)


# The last one is full-width: Django folds it (NFKC) to "GUEST-1" before the check.
@pytest.mark.parametrize(
    "name", ["guest-1", "Guest-alice", "GUEST-X", "\uff27\uff35\uff25\uff33\uff34-1"]
)
def test_signup_refuses_names_kept_for_guests(name):
    form = signup_form(name)

    assert not form.is_valid()
    assert "username" in form.errors


def test_signup_accepts_an_ordinary_name():
    form = signup_form("dora")

    assert form.is_valid(), form.errors
    user = form.save()
    assert user.check_password(PASSWORD)


@pytest.mark.parametrize("name", ["alice", "ALICE"])
def test_signup_refuses_a_taken_name_in_any_case(alice, name):
    form = signup_form(name)

    assert not form.is_valid()
    assert "username" in form.errors


def test_guest_create_makes_a_passwordless_guest_user():
    user = guest_create()

    assert re.fullmatch(r"guest-[0-9a-f]{8}", user.username)
    assert not user.has_usable_password()


def test_guest_create_gives_different_names():
    assert guest_create().username != guest_create().username


def test_guest_create_with_a_suffix_takes_exactly_that_name():
    user = guest_create(suffix="12345")

    assert user is not None and user.username == "guest-12345"


def test_guest_create_with_a_taken_suffix_returns_none():
    guest_create(suffix="12345")

    assert guest_create(suffix="12345") is None
    assert get_user_model().objects.filter(username="guest-12345").count() == 1


# Look-alike names (Unicode TR39 skeletons): each was accepted before.
@pytest.mark.parametrize(
    "name",
    [
        "\u0430lice",  # Cyrillic small a
        "alic\u0435",  # Cyrillic small ie
        "\u0410LICE",  # Cyrillic capital A
        "aIice",  # capital I for l
        "\u0251lice",  # Latin alpha
    ],
)
def test_signup_refuses_a_name_that_looks_like_an_existing_users(alice, name):
    form = signup_form(name)

    assert not form.is_valid()
    assert "looks the same" in " ".join(form.errors["username"])


@pytest.mark.parametrize("name", ["gu\u0435st-123", "\u0261uest-1", "GU\u0415ST-x"])
def test_signup_refuses_a_name_that_looks_like_the_guest_prefix(name):
    form = signup_form(name)

    assert not form.is_valid()
    assert "kept for guests" in " ".join(form.errors["username"])


@pytest.mark.parametrize("name", ["alicia", "\u0430\u043b\u0438\u0441\u0430", "bob"])
def test_signup_accepts_names_that_only_resemble_in_meaning(alice, name):
    form = signup_form(name)

    assert form.is_valid(), form.errors


# -- accounts per client address ----------------------------------------------


@pytest.fixture(params=["memory", "redis"])
def counted_in(request, settings):
    """The account counts in this process's memory, or in a real Redis (all workers)."""
    if request.param == "memory":
        settings.REDIS_URL = ""
    else:
        require_redis()
        settings.REDIS_URL = REDIS_URL
        settings.REDIS_PREFIX = request.getfixturevalue("redis_prefix")
    settings.CHAT_ACCOUNTS_PER_ADDRESS = 3
    settings.CHAT_ACCOUNTS_WINDOW = 3600
    return request.param


def guest_post(address: str = "203.0.113.7", **headers: str) -> int:
    return Client(REMOTE_ADDR=address, **headers).post("/accounts/guest/").status_code


def signup_post(username: str, address: str = "203.0.113.7") -> int:
    response = Client(REMOTE_ADDR=address).post(
        "/accounts/signup/",
        {"username": username, "password1": PASSWORD, "password2": PASSWORD},
    )
    return response.status_code


def test_guests_past_the_limit_of_an_address_get_429(counted_in):
    statuses = [guest_post() for _ in range(5)]

    assert statuses == [302, 302, 302, 429, 429]
    assert guest_post(address="198.51.100.9") == 302  # another address is not held back
    assert get_user_model().objects.filter(username__startswith="guest-").count() == 4


def test_guests_from_one_ipv6_network_share_its_limit(counted_in):
    statuses = [guest_post(address=f"2001:db8:1:2::{n:x}") for n in range(1, 31)]

    assert statuses == [302] * 3 + [429] * 27
    assert guest_post(address="2001:db8:1:3::1") == 302  # the next /64 is another client


def test_sign_ups_share_the_limit_with_guests(counted_in):
    assert guest_post() == 302
    assert [signup_post(f"person{i}") for i in range(3)] == [302, 302, 429]
    assert not get_user_model().objects.filter(username="person2").exists()


def test_a_forwarded_for_header_from_an_untrusted_peer_changes_nothing(counted_in, settings):
    settings.CHAT_TRUSTED_PROXIES = ["10.0.0.1"]
    statuses = [guest_post(HTTP_X_FORWARDED_FOR=f"198.51.100.{i}") for i in range(4)]

    assert statuses[-1] == 429


def test_behind_a_trusted_proxy_each_forwarded_client_is_counted(counted_in, settings):
    settings.CHAT_TRUSTED_PROXIES = ["10.0.0.1"]
    statuses = [
        guest_post(address="10.0.0.1", HTTP_X_FORWARDED_FOR=f"198.51.100.{i % 2}") for i in range(6)
    ]

    assert statuses == [302] * 6


def test_zero_turns_the_limit_off(counted_in, settings):
    settings.CHAT_ACCOUNTS_PER_ADDRESS = 0

    assert {guest_post() for _ in range(6)} == {302}


async def test_classic_guests_past_the_limit_are_refused_at_the_handshake(counted_in, settings):
    from chatsite.asgi import application

    outcomes = []
    for user_id in range(100, 105):
        communicator = WebsocketCommunicator(
            application,
            f"/socket?userId={user_id}",
            headers=[(b"host", b"localhost"), (b"origin", b"http://localhost")],
        )
        communicator.scope["client"] = ("203.0.113.7", 40000 + user_id)
        connected, _ = await communicator.connect(timeout=TIMEOUT)
        outcomes.append(connected)
        await communicator.disconnect()

    assert outcomes == [True, True, True, False, False]
    names = await sync_to_async(list)(
        get_user_model()
        .objects.filter(username__startswith="guest-")
        .values_list("username", flat=True)
    )
    assert sorted(names) == ["guest-100", "guest-101", "guest-102"]


def test_a_renamed_user_is_looked_alike_by_the_new_name_only(alice):
    alice.username = "alicia"
    alice.save()

    assert signup_form("\u0430lice").is_valid()  # "alice" is free again
    assert not signup_form("\u0430licia").is_valid()


def test_guests_keep_no_skeletons_and_block_no_names():
    from chat.models import NameSkeleton

    guest = guest_create(suffix="77")
    assert guest is not None
    assert not NameSkeleton.objects.filter(user=guest).exists()


def test_the_migration_recomputes_skeletons_stored_by_an_older_icu():
    """ICU 72 kept "ẞ" (U+1E9E) in a skeleton, ICU 77 maps it to "ß": rows
    stored before the change must not let "ßen" through beside "ẞen"."""
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    from chat.lookalikes import skeletons
    from chat.models import NameSkeleton

    before = [("chat", "0006_message_cid")]
    executor = MigrationExecutor(connection)
    executor.migrate(before)
    old = executor.loader.project_state(before).apps
    user = old.get_model("auth", "User").objects.create(username="\u1e9een")
    old.get_model("chat", "NameSkeleton").objects.create(user_id=user.pk, skeleton="\u1e9een")

    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())

    stored = set(NameSkeleton.objects.filter(user_id=user.pk).values_list("skeleton", flat=True))
    assert stored == skeletons("\u1e9een") and "\u1e9een" not in stored
    assert not signup_form("\u00dfen").is_valid()


def test_the_runtime_needs_no_compiler():
    """Every runtime package installs from a wheel: `make run` on a machine
    without a C or C++ compiler, libicu-dev or pkg-config."""
    import subprocess
    import sys
    from pathlib import Path

    lock = Path(__file__).resolve().parent.parent / "requirements.txt"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--quiet",
            "--ignore-installed",
            "--only-binary",
            ":all:",
            "--require-hashes",
            "-r",
            str(lock),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, (
        "a runtime package has no wheel for this machine (or the package index "
        f"could not be reached: this test needs it):\n{done.stderr[-2000:]}"
    )


# -- removing guests that have not connected for a while -----------------------


def test_removeguests_removes_only_long_gone_guests_and_keeps_what_they_wrote(alice, settings):
    from datetime import timedelta
    from io import StringIO

    from django.core.management import call_command
    from django.utils import timezone

    from chat.models import ChatGroup, Connection, Membership, Message

    settings.CHAT_GUEST_RETENTION_DAYS = 30
    users = get_user_model().objects
    long_ago = timezone.now() - timedelta(days=31)

    def guest(name: str, *, last_login=None):
        user = guest_create(suffix=name)
        users.filter(pk=user.pk).update(date_joined=long_ago, last_login=last_login)
        return user

    gone = guest("1001")
    gone_after_login = guest("1002", last_login=long_ago)
    recent = guest("1003", last_login=timezone.now() - timedelta(days=2))
    still_online = guest("1004")
    Connection.objects.create(user=still_online, worker="w1", connection_id="c-1")
    fresh = guest_create()
    registered = users.create_user("oldtimer")
    users.filter(pk=registered.pk).update(date_joined=long_ago, last_login=long_ago)
    group = ChatGroup.objects.create(name="A")
    now = timezone.now()
    for member in (alice, gone):
        Membership.objects.create(group=group, user=member)
    written = [
        Message.objects.create(
            kind=Message.Kind.GROUP, sender=gone, group=group, body="hi A", created_at=now
        ),
        Message.objects.create(
            kind=Message.Kind.DIRECT, sender=gone, recipient=alice, body="hi", created_at=now
        ),
        Message.objects.create(
            kind=Message.Kind.DIRECT, sender=alice, recipient=gone, body="yo", created_at=now
        ),
        Message.objects.create(
            kind=Message.Kind.ALL, sender=gone_after_login, body="all", created_at=now
        ),
    ]
    out = StringIO()

    call_command("removeguests", stdout=out)

    names = set(users.values_list("username", flat=True))
    assert "guest-1001" not in names and "guest-1002" not in names
    assert {"guest-1003", "guest-1004", fresh.username, "oldtimer", "alice"} <= names
    assert "removed 2 guest(s)" in out.getvalue()
    visible = Message.objects.visible_to(alice.pk).select_related("sender", "recipient")
    kept = {m.pk: (m.sender.username, m.recipient and m.recipient.username) for m in visible}
    assert kept == {
        written[0].pk: ("guest-removed", None),
        written[1].pk: ("guest-removed", "alice"),
        written[2].pk: ("alice", "guest-removed"),
        written[3].pk: ("guest-removed", None),
    }
    assert not users.get(username="guest-removed").is_active
    assert recent.pk and still_online.pk


def test_removeguests_with_nothing_to_do_changes_nothing(alice):
    from io import StringIO

    from django.core.management import call_command

    guest_create()

    call_command("removeguests", stdout=StringIO())

    assert get_user_model().objects.count() == 2


def test_guests_are_still_let_in_while_redis_is_down(settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    settings.CHAT_ACCOUNTS_PER_ADDRESS = 3

    assert guest_post() == 302


def _long_gone_guest(suffix: str):
    from datetime import timedelta

    from django.utils import timezone

    user = guest_create(suffix=suffix)
    get_user_model().objects.filter(pk=user.pk).update(
        date_joined=timezone.now() - timedelta(days=400), last_login=None
    )
    return user


def test_removeguests_removes_guests_whose_messages_share_a_cid(alice):
    """The attack: two guests send with the same cid; the hand-over broke the command for good."""
    from io import StringIO

    from django.core.management import call_command
    from django.utils import timezone

    from chat.models import Message

    first, second = _long_gone_guest("2001"), _long_gone_guest("2002")
    for guest in (first, second):
        Message.objects.create(
            kind=Message.Kind.ALL, sender=guest, body="same", created_at=timezone.now(), cid="c-1"
        )
    out = StringIO()

    call_command("removeguests", stdout=out)

    names = set(get_user_model().objects.values_list("username", flat=True))
    assert "guest-2001" not in names and "guest-2002" not in names
    assert "removed 2 guest(s)" in out.getvalue()
    kept = Message.objects.filter(body="same").select_related("sender")
    assert [m.sender.username for m in kept] == ["guest-removed", "guest-removed"]


@pytest.fixture
def refused_deletion():
    """A database trigger that refuses to delete guest-3003: a batch that fails for real."""
    from django.db import connection

    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "CREATE FUNCTION refuse_guest_3003() RETURNS trigger AS $$ BEGIN "
                "RAISE EXCEPTION 'refused'; END $$ LANGUAGE plpgsql"
            )
            cursor.execute(
                "CREATE TRIGGER refuse_guest_3003 BEFORE DELETE ON auth_user FOR EACH ROW "
                "WHEN (OLD.username = 'guest-3003') EXECUTE FUNCTION refuse_guest_3003()"
            )
        else:
            cursor.execute(
                "CREATE TRIGGER refuse_guest_3003 BEFORE DELETE ON auth_user "
                "WHEN OLD.username = 'guest-3003' BEGIN SELECT RAISE(ABORT, 'refused'); END"
            )

    def lift() -> None:
        with connection.cursor() as cursor:
            cursor.execute(
                "DROP TRIGGER IF EXISTS refuse_guest_3003"
                + (" ON auth_user" if connection.vendor == "postgresql" else "")
            )
            if connection.vendor == "postgresql":
                cursor.execute("DROP FUNCTION IF EXISTS refuse_guest_3003()")

    yield lift
    lift()


def test_a_failing_batch_hands_nothing_over_and_blocks_no_other_guest(alice, refused_deletion):
    from io import StringIO

    from django.core.management import CommandError, call_command
    from django.utils import timezone

    from chat.accounts import guests_remove_inactive
    from chat.models import Message

    guests = [_long_gone_guest(str(3000 + n)) for n in range(1, 7)]
    for guest in guests:
        Message.objects.create(
            kind=Message.Kind.DIRECT,
            sender=guest,
            recipient=alice,
            body=f"from {guest.username}",
            created_at=timezone.now(),
        )

    removed = guests_remove_inactive(batch=2)

    names = set(get_user_model().objects.values_list("username", flat=True))
    assert removed.removed == 5 and removed.failed == ["guest-3003"]
    assert {g.username for g in guests} & names == {"guest-3003"}
    # Its batch was rolled back whole: the refused guest still owns its message.
    assert Message.objects.get(body="from guest-3003").sender.username == "guest-3003"
    with pytest.raises(CommandError, match="guest-3003"):
        call_command("removeguests", stdout=StringIO())

    refused_deletion()
    out = StringIO()
    call_command("removeguests", stdout=out)

    assert "removed 1 guest(s)" in out.getvalue()
    assert Message.objects.get(body="from guest-3003").sender.username == "guest-removed"
