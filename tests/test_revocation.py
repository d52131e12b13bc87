"""chat.revocation: revoking a user's access closes their open sockets.

On the in-memory layer and on a real Redis; tests/test_workers.py checks the
same across two real workers.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.contrib.auth import SESSION_KEY, get_user_model
from django.contrib.sessions.models import Session
from django.db import transaction
from django.test import Client

from chat.protocol import CLOSE_POLICY_VIOLATION
from chat.revocation import log_out_everywhere
from tests.chatclient import ChatTestClient

pytestmark = pytest.mark.django_db(transaction=True)

# What the issue asks: closed on every worker within 5 s.
WITHIN = 5.0


async def expect_all_closed(sockets: list[ChatTestClient]) -> None:
    started = time.monotonic()
    codes = await asyncio.gather(*(s.expect_close(timeout=WITHIN) for s in sockets))
    assert codes == [CLOSE_POLICY_VIOLATION] * len(sockets)
    assert time.monotonic() - started < WITHIN


def deactivate(user) -> None:
    user.is_active = False
    user.save()


def change_password(user) -> None:
    user.set_password("a-brand-new-passphrase-93")
    user.save()


def delete_user(user) -> None:
    user.delete()


def delete_sessions(user) -> None:
    mine = [s.pk for s in Session.objects.all() if s.get_decoded().get(SESSION_KEY) == str(user.pk)]
    assert mine
    Session.objects.filter(pk__in=mine).delete()


def log_out_everywhere_of(user) -> None:
    assert log_out_everywhere(user) == 2


@pytest.mark.parametrize(
    "revoke",
    [deactivate, change_password, delete_user, delete_sessions, log_out_everywhere_of],
    ids=lambda revoke: revoke.__name__,
)
async def test_revoking_access_closes_every_socket_of_the_user(layer, connect, alice, bob, revoke):
    alices = [await connect(alice), await connect(alice)]
    bobs = await connect(bob)

    await sync_to_async(revoke)(alice)

    await expect_all_closed(alices)
    await bobs.assert_nothing("__close__")
    assert (await bobs.request(type="ping"))["type"] == "pong"


@pytest.mark.parametrize(
    "change",
    [
        lambda user: user.save(update_fields=["last_login"]),
        lambda user: setattr(user, "first_name", "Alice") or user.save(),
        lambda user: setattr(user, "is_active", True) or user.save(),
    ],
    ids=["login", "first-name", "still-active"],
)
async def test_other_changes_to_the_user_leave_the_sockets_open(layer, connect, alice, change):
    socket = await connect(alice)

    await sync_to_async(change)(alice)

    await socket.assert_nothing("__close__", timeout=0.5)
    assert (await socket.request(type="ping"))["type"] == "pong"


async def test_nothing_closes_before_the_revoking_transaction_commits(layer, connect, alice):
    """A client reconnecting before the commit would still be let in."""
    socket = await connect(alice)

    def deactivate_and_look_before_commit() -> None:
        with transaction.atomic():
            deactivate(alice)
            async_to_sync(socket.assert_nothing)("__close__", timeout=0.5)

    await sync_to_async(deactivate_and_look_before_commit)()

    assert await socket.expect_close(timeout=WITHIN) == CLOSE_POLICY_VIOLATION


def test_the_admin_logs_a_user_out_everywhere(client, alice, bob):
    admin = get_user_model().objects.create_superuser("root", "root@example.com", "pw-of-root-77")
    for _ in range(2):
        Client().force_login(alice)
    Client().force_login(bob)
    client.force_login(admin)

    response = client.post(
        "/admin/auth/user/",
        {"action": "log_out_everywhere", "_selected_action": [str(alice.pk)]},
        follow=True,
    )

    assert response.status_code == 200
    owners = [s.get_decoded().get(SESSION_KEY) for s in Session.objects.all()]
    assert str(alice.pk) not in owners
    assert str(bob.pk) in owners and str(admin.pk) in owners
    assert "2 sessions of 1 user ended" in response.content.decode()


def staff_client(username: str, *codenames: str) -> tuple[object, Client]:
    from django.contrib.auth.models import Permission

    user = get_user_model().objects.create_user(username, password="pw-staff-member-42")
    user.is_staff = True
    user.save()
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    client = Client()
    client.force_login(user)
    return user, client


def test_staff_who_may_only_view_users_are_not_offered_log_out_everywhere(alice):
    _, viewer = staff_client("viewer", "view_user")

    response = viewer.get("/admin/auth/user/")

    assert response.status_code == 200
    form = response.context["action_form"]
    offered = [name for name, _ in form.fields["action"].choices] if form is not None else []
    assert "log_out_everywhere" not in offered
    assert "log_out_everywhere" not in response.content.decode()


def test_a_forged_log_out_everywhere_from_a_viewer_ends_no_session(alice):
    """The attack: a staff account holding only "Can view user" logs a superuser out."""
    root = get_user_model().objects.create_superuser("root", "root@example.com", "pw-of-root-77")
    Client().force_login(root)
    Client().force_login(alice)
    _, viewer = staff_client("viewer", "view_user")

    response = viewer.post(
        "/admin/auth/user/",
        {"action": "log_out_everywhere", "_selected_action": [str(root.pk), str(alice.pk)]},
        follow=True,
    )

    assert response.status_code in (200, 403)
    owners = [s.get_decoded().get(SESSION_KEY) for s in Session.objects.all()]
    assert owners.count(str(root.pk)) == 1 and owners.count(str(alice.pk)) == 1
    assert "sessions of" not in response.content.decode()


def test_staff_who_may_change_users_may_log_them_out_everywhere(alice):
    Client().force_login(alice)
    _, changer = staff_client("changer", "view_user", "change_user")

    response = changer.post(
        "/admin/auth/user/",
        {"action": "log_out_everywhere", "_selected_action": [str(alice.pk)]},
        follow=True,
    )

    owners = [s.get_decoded().get(SESSION_KEY) for s in Session.objects.all()]
    assert str(alice.pk) not in owners
    assert "1 session of 1 user ended" in response.content.decode()


# Issue 24, finding 14: without Redis, a change made by another process
# (manage.py, a shell) reached no worker, and the sockets stayed open.


def _manage_py_shell(code: str) -> None:
    """Run `code` in `manage.py shell`, a process of its own, as an operator would."""
    import subprocess
    import sys

    from tests.servers import ROOT, worker_env

    done = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code],
        cwd=ROOT,
        env=worker_env(),
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")


def deactivate_in_manage_py_shell(user) -> None:
    _manage_py_shell(
        "from django.contrib.auth import get_user_model as g\n"
        f"u = g().objects.get(pk={user.pk}); u.is_active = False; u.save()"
    )


@pytest.mark.processes
@pytest.mark.parametrize(
    "revoke",
    [deactivate, change_password, delete_sessions, deactivate_in_manage_py_shell],
    ids=lambda revoke: revoke.__name__,
)
async def test_without_redis_a_change_made_by_another_process_closes_the_sockets(
    memory_layer, revoke
):
    from tests.chatclient import open_real_socket
    from tests.servers import HttpSession, running_workers, worker_env

    with running_workers(1, worker_env()) as (worker,):
        alice_cookie = await asyncio.to_thread(HttpSession(worker.base_url).signup, "alice")
        bob_cookie = await asyncio.to_thread(HttpSession(worker.base_url).signup, "bob")
        alices = [await open_real_socket(worker.base_url, alice_cookie, "alice") for _ in "12"]
        bob = await open_real_socket(worker.base_url, bob_cookie, "bob")
        try:
            alice = await sync_to_async(get_user_model().objects.get)(username="alice")
            # This test's process is the other process: its in-memory layer reaches no worker.
            await sync_to_async(revoke)(alice)
            await expect_all_closed(alices)
            assert (await bob.request(type="ping"))["type"] == "pong"
        finally:
            for client in [*alices, bob]:
                await client.close()
