"""Checks behind /healthz: does the database answer, does the channel layer?"""

from __future__ import annotations

import asyncio
import logging

from channels.db import database_sync_to_async
from django.conf import settings
from django.db import connection

from chat.database import stalled
from chat.models import Message
from chat.worker import current_worker

logger = logging.getLogger(__name__)

_TIMEOUT = 2.0


def _database_ok() -> bool:
    try:
        with connection.cursor() as cursor:
            # The table every socket reads and writes, not just the server:
            # a lock on it stalls the sockets while SELECT 1 still answers.
            cursor.execute(
                f"SELECT MAX(id) FROM {connection.ops.quote_name(Message._meta.db_table)}"
            )
        return True
    except Exception:
        logger.warning("health check: database failed", exc_info=True)
        return False


async def _layer_ok() -> bool:
    if not settings.REDIS_URL:
        return True  # the in-memory layer cannot be down while this process is up
    try:
        return bool(await asyncio.wait_for(current_worker().redis.ping(), _TIMEOUT))
    except Exception:
        logger.warning("health check: channel layer (Redis) failed", exc_info=True)
        return False


async def health_check() -> dict[str, str]:
    """{"database": "ok"|"error", "channel_layer": "ok"|"error"}.

    The database is checked on Channels' database thread, where the sockets'
    writes and handshakes run, and is an error while a socket's database call
    has recently run out of time (`chat.database.stalled`).
    """
    try:
        database = not stalled() and await asyncio.wait_for(
            database_sync_to_async(_database_ok)(), _TIMEOUT
        )
    except TimeoutError:
        database = False
    layer = await _layer_ok()
    return {
        "database": "ok" if database else "error",
        "channel_layer": "ok" if layer else "error",
    }
