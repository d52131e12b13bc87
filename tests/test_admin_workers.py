"""The admin's read-only Workers view, from the presence records in a real Redis."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time

import pytest
import redis
import redis.asyncio as aioredis
from asgiref.sync import async_to_sync, sync_to_async
from django.contrib.auth import get_user_model
from django.test import Client

from chat.delivery.mirror import connection_record
from chat.registry import RedisWorkerRegistry
from chat.version import VERSION
from tests.chatclient import open_real_socket
from tests.conftest import REDIS_URL, use_redis_layer
from tests.servers import HttpSession, Worker, running_workers, worker_env

pytestmark = pytest.mark.django_db(transaction=True)


async def heartbeat(prefix: str, worker: str) -> None:
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        registry = RedisWorkerRegistry(f"{prefix}:", redis=client, info_seconds=61)
        await registry.heartbeat(worker=worker)
    finally:
        await client.aclose()


def test_workers_view_lists_live_workers_and_leaves_out_dead_ones(settings, redis_prefix, alice):
    use_redis_layer(settings, redis_prefix)
    settings.CHAT_PRESENCE_TIMEOUT = 30.0
    async_to_sync(heartbeat)(redis_prefix, "host-101-live")
    async_to_sync(heartbeat)(redis_prefix, "host-102-dead")
    # The dead one's last heartbeat was longer ago than the timeout.
    redis.Redis.from_url(REDIS_URL).zadd(
        f"{redis_prefix}:presence:workers", {"host-102-dead": time.time() - 31}
    )
    connection_record(user_id=alice.pk, worker="host-101-live", connection_id="a1", endpoint="json")
    connection_record(user_id=alice.pk, worker="host-101-live", connection_id="a2", endpoint="json")
    root = get_user_model().objects.create_superuser("root", "root@example.com", "pw-root")
    client = Client()
    client.force_login(root)

    response = client.get("/admin/workers/")

    assert response.status_code == 200
    rows = response.context["workers"]
    assert [row.worker for row in rows] == ["host-101-live"]
    (live,) = rows
    assert live.open_sockets == 2
    assert 0 <= live.heartbeat_age < 5
    assert live.uptime is not None and live.uptime > 0
    assert live.version == VERSION
    page = response.content.decode()
    assert "host-101-live" in page and "host-102-dead" not in page
    assert "<form" not in page.split('id="workers"')[1]  # read-only


def test_workers_view_is_for_staff_only(client):
    response = client.get("/admin/workers/")

    assert response.status_code == 302


def staff(username: str, *codenames: str) -> Client:
    from django.contrib.auth.models import Permission

    user = get_user_model().objects.create_user(username, password="pw-staff-member-42")
    user.is_staff = True
    user.save()
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    client = Client()
    client.force_login(user)
    return client


def test_staff_without_the_workers_permission_neither_open_nor_see_the_workers_page(
    settings, redis_prefix
):
    """The attack: any staff account, permissions or not, read every worker's name."""
    use_redis_layer(settings, redis_prefix)
    async_to_sync(heartbeat)(redis_prefix, "host-103-secret")
    viewer = staff("viewer", "view_user", "view_message", "view_connection")

    response = viewer.get("/admin/workers/")

    assert response.status_code == 403
    assert "host-103-secret" not in response.content.decode()
    index = viewer.get("/admin/")
    assert index.status_code == 200
    assert "/admin/workers/" not in index.content.decode()


def test_the_workers_permission_opens_the_workers_page(settings, redis_prefix):
    use_redis_layer(settings, redis_prefix)
    async_to_sync(heartbeat)(redis_prefix, "host-104-shown")
    operator = staff("operator", "view_workers")

    response = operator.get("/admin/workers/")

    assert response.status_code == 200
    assert "host-104-shown" in response.content.decode()
    assert "/admin/workers/" in operator.get("/admin/").content.decode()


_ROW = re.compile(
    r'<tr class="worker">\s*<td>(?P<worker>[^<]+)</td>\s*<td>(?P<age>[\d.]+) s</td>\s*'
    r"<td>(?P<sockets>\d+)</td>\s*<td>(?P<uptime>\d+) s</td>\s*<td>(?P<version>[^<]+)</td>"
)


def workers_page(session: HttpSession) -> dict[int, dict[str, str]]:
    """The Workers page's rows, by the pid in each worker's name (host-pid-suffix)."""
    status, page = session.get("/admin/workers/")
    assert status == 200, page
    return {int(row["worker"].split("-")[-2]): row.groupdict() for row in _ROW.finditer(page)}


async def wait_for_page(session: HttpSession, condition, timeout: float, what: str):
    """The rows once `condition(rows)` holds; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        rows = await asyncio.to_thread(workers_page, session)
        if condition(rows):
            return rows
        assert time.monotonic() < deadline, f"{what} within {timeout} s: {rows}"
        await asyncio.sleep(0.1)


@pytest.mark.processes
async def test_workers_page_lists_two_real_workers_and_drops_a_killed_one(redis_prefix):
    timeout = 3.0
    env = worker_env(
        redis_url=REDIS_URL, redis_prefix=redis_prefix, CHAT_PRESENCE_TIMEOUT=str(timeout)
    )
    await sync_to_async(get_user_model().objects.create_superuser)(
        "root", "root@example.com", "a-Long-passw0rd!"
    )
    with running_workers(2, env) as (killed, survivor):
        admin = HttpSession(survivor.base_url)
        await asyncio.to_thread(admin.login, "root")
        cookie = await asyncio.to_thread(HttpSession(survivor.base_url).signup, "alice")
        sockets = [await open_real_socket(w.base_url, cookie, "alice") for w in (killed, survivor)]

        # The admin's socket list is written in batches just after sockets open.
        rows = await wait_for_page(
            admin,
            lambda rows: (
                {pid: row["sockets"] for pid, row in rows.items()}
                == {killed.pid: "1", survivor.pid: "1"}
            ),
            10,
            "both workers with one socket each",
        )
        for row in rows.values():
            assert float(row["age"]) < timeout
            assert int(row["uptime"]) >= 0
            assert row["version"] == VERSION

        killed.kill()
        killed_at = time.monotonic()
        rows = await wait_for_page(
            admin, lambda rows: killed.pid not in rows, timeout + 5, "the killed worker gone"
        )
        # Its last heartbeat came before the kill: gone within the timeout of the
        # kill (plus one page load).
        assert time.monotonic() - killed_at <= timeout + 1
        assert list(rows) == [survivor.pid]
        for client in sockets:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), 5)


@pytest.mark.processes
async def test_without_redis_a_worker_restarted_after_kill_9_owns_every_row():
    """Issue 25, point 8: after `kill -9` of a single worker and a restart, the admin
    listed the dead process's sockets for minutes and the dead process as the worker."""
    from chat.models import Connection

    def rows_of(pid: int) -> int:
        return Connection.objects.filter(worker__contains=f"-{pid}-").count()

    async def wait_until(condition, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not await sync_to_async(condition)():
            assert time.monotonic() < deadline, f"not {what} within {timeout} s"
            await asyncio.sleep(0.1)

    await sync_to_async(get_user_model().objects.create_superuser)(
        "root", "root@example.com", "a-Long-passw0rd!"
    )
    env = worker_env()
    with running_workers(1, env) as (crashed,):
        cookie = await asyncio.to_thread(HttpSession(crashed.base_url).signup, "alice")
        sockets = [await open_real_socket(crashed.base_url, cookie, "alice") for _ in "12"]
        await wait_until(lambda: rows_of(crashed.pid) == 2, 10, "both sockets recorded")
        crashed.kill()
        assert await sync_to_async(rows_of)(crashed.pid) == 2  # what the crash leaves

        restarted = Worker(env, name="restarted", port=crashed.port).start()
        try:
            restarted_at = time.monotonic()
            # Nobody has connected yet: the worker clears them as it starts.
            await wait_until(
                lambda: not Connection.objects.exists(), 5, "the dead process's rows gone"
            )
            admin = HttpSession(restarted.base_url)
            await asyncio.to_thread(admin.login, "root")
            rows = await asyncio.to_thread(workers_page, admin)
            assert list(rows) == [restarted.pid]
            assert int(rows[restarted.pid]["uptime"]) <= time.monotonic() - restarted_at + 2
            assert rows[restarted.pid]["sockets"] == "0"

            again = await open_real_socket(restarted.base_url, cookie, "alice")
            await wait_until(lambda: rows_of(restarted.pid) == 1, 10, "the new socket recorded")
            rows = await asyncio.to_thread(workers_page, admin)
            assert rows[restarted.pid]["sockets"] == "1"
            await again.close()
        finally:
            restarted.stop()
            restarted.print_log()
            for client in sockets:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.close(), 5)
