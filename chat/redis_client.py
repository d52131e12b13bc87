"""One Redis client per event loop, for presence and rate limits.

redis-py's asyncio connections belong to the loop that opened them; tests and
management commands run several loops in one process, so the client is kept
per loop rather than per process.
"""

from __future__ import annotations

import asyncio
import weakref

import redis.asyncio as aioredis
from django.conf import settings

_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aioredis.Redis] = (
    weakref.WeakKeyDictionary()
)


def get_redis() -> aioredis.Redis:
    """The running loop's client for `settings.REDIS_URL`."""
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None:
        client = aioredis.Redis.from_url(
            settings.REDIS_URL, socket_timeout=5, socket_connect_timeout=2, decode_responses=True
        )
        _clients[loop] = client
    return client
