"""Per-user send rate: a token bucket, in memory or shared through Redis.

A user holds `CHAT_RATE_BURST` tokens, refilled at `CHAT_RATE_PER_SECOND`; a
send takes one. With Redis the bucket is one key per user, so a user cannot
multiply the rate by opening sockets on several workers.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod

from django.conf import settings

from chat import redis_client


class RateLimiter(ABC):
    def __init__(self, *, burst: int, per_second: float) -> None:
        self.burst = burst
        self.per_second = per_second

    @abstractmethod
    async def allow(self, key: str) -> bool:
        """Take one token for `key`; False when the bucket is empty."""


class MemoryRateLimiter(RateLimiter):
    def __init__(self, *, burst: int, per_second: float) -> None:
        super().__init__(burst=burst, per_second=per_second)
        self._buckets: dict[str, tuple[float, float]] = {}

    async def allow(self, key: str) -> bool:
        now = time.monotonic()
        tokens, stamp = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - stamp) * self.per_second)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return False
        self._buckets[key] = (tokens - 1.0, now)
        return True


# KEYS[1]: the bucket hash. ARGV: burst, refill per second.
# Redis's own clock is used, so workers with skewed clocks agree.
_TAKE_TOKEN = """
local burst = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'stamp')
local tokens = tonumber(state[1]) or burst
local stamp = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - stamp) * rate)
local allowed = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'stamp', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 1)
return allowed
"""


class RedisRateLimiter(RateLimiter):
    def __init__(self, *, burst: int, per_second: float, prefix: str) -> None:
        super().__init__(burst=burst, per_second=per_second)
        self.prefix = prefix

    async def allow(self, key: str) -> bool:
        redis = redis_client.get_redis()
        bucket = f"{self.prefix}rate:{key}"
        return bool(await redis.eval(_TAKE_TOKEN, 1, bucket, self.burst, self.per_second))


_memory_limiter: MemoryRateLimiter | None = None


def get_rate_limiter() -> RateLimiter:
    """The limiter chosen by settings: Redis when `REDIS_URL` is set, else memory."""
    global _memory_limiter
    burst, rate = settings.CHAT_RATE_BURST, settings.CHAT_RATE_PER_SECOND
    if settings.REDIS_URL:
        return RedisRateLimiter(burst=burst, per_second=rate, prefix=f"{settings.REDIS_PREFIX}:")
    limiter = _memory_limiter
    if limiter is None or (limiter.burst, limiter.per_second) != (burst, rate):
        limiter = _memory_limiter = MemoryRateLimiter(burst=burst, per_second=rate)
    return limiter
