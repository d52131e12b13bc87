"""One Redis client per event loop, for presence and rate limits.

redis-py's asyncio connections belong to the loop that opened them; tests and
management commands run several loops in one process, so the client is kept
per loop rather than per process.

The pool *waits* for a free connection when all are busy: redis-py's default
pool raises `MaxConnectionsError` past 100 calls in flight, and a burst of
sockets connecting at once (each touching presence) is exactly that; it must
queue, not look like a Redis outage.
"""

from __future__ import annotations

import asyncio
import weakref

import redis.asyncio as aioredis
from django.conf import settings

# Connections per worker process; calls beyond wait up to _POOL_WAIT_SECONDS.
_MAX_CONNECTIONS = 50
_POOL_WAIT_SECONDS = 5

_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aioredis.Redis] = (
    weakref.WeakKeyDictionary()
)


def get_redis() -> aioredis.Redis:
    """The running loop's client for `settings.REDIS_URL`."""
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None:
        pool = aioredis.BlockingConnectionPool.from_url(
            settings.REDIS_URL,
            max_connections=_MAX_CONNECTIONS,
            timeout=_POOL_WAIT_SECONDS,
            socket_timeout=5,
            socket_connect_timeout=2,
            decode_responses=True,
        )
        client = aioredis.Redis(connection_pool=pool)
        _clients[loop] = client
    return client
