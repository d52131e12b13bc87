"""The Redis client of presence, rate limits and health checks.

redis-py's asyncio connections belong to the loop that opened them, so the
client is made once per loop, by `chat.worker`.

The pool *waits* for a free connection when all are busy: redis-py's default
pool raises `MaxConnectionsError` past 100 calls in flight, and a burst of
sockets connecting at once (each touching presence) is exactly that; it must
queue, not look like a Redis outage.
"""

from __future__ import annotations

import redis.asyncio as aioredis

# Connections per worker process; calls beyond wait up to _POOL_WAIT_SECONDS.
_MAX_CONNECTIONS = 50
_POOL_WAIT_SECONDS = 5


def redis_connect(url: str) -> aioredis.Redis:
    """A client for `url` whose pool waits rather than fails when all connections are busy.

    Its connections belong to the running loop: `chat.worker` keeps one per loop.
    """
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=_MAX_CONNECTIONS,
        timeout=_POOL_WAIT_SECONDS,
        socket_timeout=5,
        socket_connect_timeout=2,
        decode_responses=True,
    )
    return aioredis.Redis(connection_pool=pool)
