"""However a membership ends, the removed user's sockets stop hearing the group.

Issue 24, finding 1: a membership deleted in the admin (or with its group, or
by any ORM delete) left the user's open sockets subscribed to the group, and
the group kept seeing their typing. Checked in one process on both layers,
across two real workers on Redis, and on one real worker without Redis with
the change made by another process (this one).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.test import Client

from chat.models import ChatGroup, Membership
from tests.chatclient import BaseChatClient, open_real_socket
from tests.conftest import REDIS_URL, use_memory_layer, use_redis_layer
from tests.servers import HttpSession, running_workers, worker_env

pytestmark = pytest.mark.django_db(transaction=True)

WITHIN = 5.0


def delete_membership_in_bulk(username: str) -> None:
    Membership.objects.filter(user__username=username, group__key="ops").delete()


def delete_membership_row(username: str) -> None:
    Membership.objects.get(user__username=username, group__key="ops").delete()


def delete_group(username: str) -> None:
    ChatGroup.objects.get(key="ops").delete()


REMOVALS = [delete_membership_in_bulk, delete_membership_row, delete_group]


async def both_in_ops(alices: list[BaseChatClient], bob: BaseChatClient) -> None:
    await alices[0].request(type="join", group="ops")
    for tab in alices[1:]:
        await tab.expect("joined", group="ops", user="alice", timeout=WITHIN)
    await bob.request(type="join", group="ops")
    for tab in alices:
        await tab.expect("joined", group="ops", user="bob", timeout=WITHIN)


async def removed_hears_nothing_more(
    alices: list[BaseChatClient], bob: BaseChatClient, *, group_gone: bool, **by: str
) -> None:
    """Alice's tabs got `left` (with `by`, who removed her, when given); the group's
    messages and typing no longer reach her, and her typing no longer reaches the group."""
    for tab in alices:
        await tab.expect("left", group="ops", user="alice", timeout=WITHIN, **by)
    if not group_gone:
        await bob.expect("left", group="ops", user="alice", timeout=WITHIN, **by)
        await bob.send(type="typing", to={"group": "ops"})
        ack = await bob.request(type="send", to={"group": "ops"}, body="after alice left")
        await bob.expect("message", id=ack["id"])
    for tab in alices:
        refused = await tab.request(type="typing", to={"group": "ops"})
        assert refused["type"] == "error" and refused["code"] == "not_member", refused
    # A direct message sent after all that is the marker: what came before it has arrived.
    marker = await bob.request(type="send", to={"user": "alice"}, body="marker")
    for tab in alices:
        await tab.expect("message", id=marker["id"], timeout=WITHIN)
        # (A deleted group's other `left` notices may come first: she was a member then.)
        leaked = [e for e in tab.inbox if e["type"] in ("message", "typing", "joined")]
        assert not leaked, f"alice still hears the group: {leaked}"
    bob_saw = [e for e in bob.inbox if e["type"] == "typing" and e.get("user") == "alice"]
    assert not bob_saw, f"the group still sees alice typing: {bob_saw}"


@pytest.mark.parametrize("remove", REMOVALS, ids=lambda f: f.__name__)
async def test_a_membership_ended_in_the_store_reaches_the_sockets(
    layer, connect, alice, bob, remove: Callable[[str], None]
):
    alices = [await connect(alice), await connect(alice)]
    bobs = await connect(bob)
    await both_in_ops(alices, bobs)

    await sync_to_async(remove)("alice")

    await removed_hears_nothing_more(alices, bobs, group_gone=remove is delete_group)


async def test_the_admin_deleting_a_membership_reaches_the_sockets(
    memory_layer, connect, alice, bob
):
    alices = [await connect(alice)]
    bobs = await connect(bob)
    await both_in_ops(alices, bobs)
    admin = await sync_to_async(get_user_model().objects.create_superuser)("root", "", "pw-root-1")
    membership = await sync_to_async(Membership.objects.get)(user=alice, group__key="ops")

    def delete_in_admin() -> int:
        client = Client()
        client.force_login(admin)
        response = client.post(
            f"/admin/chat/membership/{membership.pk}/delete/", {"post": "yes"}, follow=False
        )
        return response.status_code

    assert await sync_to_async(delete_in_admin)() == 302
    # As the protocol's `remove` (1.2): who removed her is told.
    await removed_hears_nothing_more(alices, bobs, group_gone=False, by="root")


async def test_the_admin_deleting_a_group_reaches_the_sockets(memory_layer, connect, alice, bob):
    alices = [await connect(alice)]
    bobs = await connect(bob)
    await both_in_ops(alices, bobs)
    admin = await sync_to_async(get_user_model().objects.create_superuser)("root", "", "pw-root-1")
    group = await sync_to_async(ChatGroup.objects.get)(key="ops")

    def delete_in_admin() -> int:
        client = Client()
        client.force_login(admin)
        response = client.post(f"/admin/chat/chatgroup/{group.pk}/delete/", {"post": "yes"})
        return response.status_code

    assert await sync_to_async(delete_in_admin)() == 302
    await removed_hears_nothing_more(alices, bobs, group_gone=True, by="root")


@contextlib.asynccontextmanager
async def real_sockets():
    opened: list[BaseChatClient] = []

    async def open_(worker, cookie: str, username: str) -> BaseChatClient:
        client = await open_real_socket(worker.base_url, cookie, username)
        opened.append(client)
        return client

    try:
        yield open_
    finally:
        for client in opened:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), 5)


@pytest.mark.processes
@pytest.mark.parametrize("remove", REMOVALS, ids=lambda f: f.__name__)
async def test_a_membership_ended_elsewhere_reaches_every_worker(
    redis_prefix, settings, remove: Callable[[str], None]
):
    env = worker_env(redis_url=REDIS_URL, redis_prefix=redis_prefix)
    with running_workers(2, env) as (first, second):
        async with real_sockets() as open_:
            alice_cookie = await asyncio.to_thread(HttpSession(first.base_url).signup, "alice")
            bob_cookie = await asyncio.to_thread(HttpSession(second.base_url).signup, "bob")
            alices = [await open_(w, alice_cookie, "alice") for w in (first, second)]
            bob = await open_(second, bob_cookie, "bob")
            await both_in_ops(alices, bob)

            # This process is the admin's: it shares the database and Redis.
            use_redis_layer(settings, redis_prefix)
            await sync_to_async(remove)("alice")

            await removed_hears_nothing_more(alices, bob, group_gone=remove is delete_group)


@pytest.mark.processes
@pytest.mark.parametrize("remove", REMOVALS, ids=lambda f: f.__name__)
async def test_a_membership_ended_by_another_process_reaches_a_worker_without_redis(
    settings, remove: Callable[[str], None]
):
    with running_workers(1, worker_env()) as (worker,):
        async with real_sockets() as open_:
            alice_cookie = await asyncio.to_thread(HttpSession(worker.base_url).signup, "alice")
            bob_cookie = await asyncio.to_thread(HttpSession(worker.base_url).signup, "bob")
            alices = [await open_(worker, alice_cookie, "alice")]
            bob = await open_(worker, bob_cookie, "bob")
            await both_in_ops(alices, bob)

            # Another process, with its own in-memory layer that reaches no worker.
            use_memory_layer(settings)
            await sync_to_async(remove)("alice")

            await removed_hears_nothing_more(alices, bob, group_gone=remove is delete_group)
