"""The admin's read-only Workers view, from the presence records in a real Redis."""

from __future__ import annotations

import time

import pytest
import redis
import redis.asyncio as aioredis
from asgiref.sync import async_to_sync
from django.contrib.auth import get_user_model
from django.test import Client

from chat.delivery.mirror import connection_record
from chat.presence import VERSION, RedisPresenceStore
from tests.conftest import REDIS_URL, use_redis_layer

pytestmark = pytest.mark.django_db(transaction=True)


async def heartbeat(prefix: str, worker: str) -> None:
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        await RedisPresenceStore(prefix=f"{prefix}:", redis=client).heartbeat(worker=worker)
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
