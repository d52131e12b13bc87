"""Per-user command budget: a token bucket, in memory or shared through Redis.

A user holds `CHAT_RATE_BURST` tokens, refilled at `CHAT_RATE_PER_SECOND`;
every command takes its cost from `COMMAND_COSTS` (a send, one), so that a
client cannot make the server read hundreds of messages for it as often as it
may send one. With Redis the bucket is one key per user, so a user cannot
multiply the rate by opening sockets on several workers.

A call to Redis per send was half a millisecond of every send's latency at
light load and the largest per-message cost on the event loop under load. So a
worker takes a few tokens ahead for a user who is sending (a *reserve*), and
tops it up in the background when it runs out: most sends ask nothing of
Redis. Tokens are still taken from the one shared bucket, so all workers
together never allow more than the bucket gives. A reserve only takes from the
upper half of the bucket (a user near the limit asks Redis every time, as
without reserves), holds at most a quarter of the burst, and lapses after
`_RESERVE_SECONDS` without a send: a user's tokens sit unused in another
worker's reserve for at most that long.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from chat.coalesce import Coalescer
from chat.protocol import UNAVAILABLE, ChatError

# Tokens each command takes, by what it costs the server: a send stores one
# row and fans out; `join` and `leave` write and notify the group's members;
# `history` and `sync` read and encode up to 100 and 500 messages. Reads cost
# a few sends, not dozens: a page opening conversations one after another
# must stay well inside the default burst. A command type missing here costs
# `DEFAULT_COST`; new commands add their line.
COMMAND_COSTS: dict[str, int] = {
    "send": 1,
    "ping": 1,
    "who": 1,
    "members": 1,
    "join": 2,
    "leave": 2,
    "history": 2,
    "sync": 3,
    # Protocol 1.1: typing is repeated every few seconds while someone types,
    # so it costs the least; a conversation list reads a little per conversation.
    "typing": 1,
    "read": 1,
    "users": 1,
    "groups": 1,
    "conversations": 2,
    # Protocol 1.2: a change writes one message under the order lock and
    # tells its audience, like a send; `changes` reads up to 500, like `sync`.
    "edit": 1,
    "delete": 1,
    "react": 1,
    "unreact": 1,
    "changes": 3,
    # A name change writes one row and tells everyone online.
    "profile": 2,
    # A search reads an index and up to 50 messages, like a history page and more.
    "search": 3,
    # Private groups and roles write and tell the group's members, like a join.
    "create": 2,
    "invite": 2,
    "remove": 2,
    "role": 2,
    # Opening a socket (not a command): it loads and subscribes to each of the
    # user's groups, so a client reconnecting in a loop spends from the budget
    # too, and is refused (4429) past it. One token, so a budget of one still
    # opens a socket.
    "connect": 1,
}
DEFAULT_COST = 1


def command_cost(kind: str) -> int:
    """Tokens a command of type `kind` takes from its user's budget."""
    return COMMAND_COSTS.get(kind, DEFAULT_COST)


class RateLimiter(ABC):
    def __init__(self, *, burst: int, per_second: float) -> None:
        self.burst = burst
        self.per_second = per_second

    @abstractmethod
    async def allow(self, key: str, cost: int = 1) -> bool:
        """Take `cost` tokens for `key`; False (taking none) when fewer are left."""


class MemoryRateLimiter(RateLimiter):
    """Buckets in this process's memory, one per user who spent recently."""

    def __init__(self, *, burst: int, per_second: float) -> None:
        super().__init__(burst=burst, per_second=per_second)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._prune_at = _PRUNE_AT

    async def allow(self, key: str, cost: int = 1) -> bool:
        now = time.monotonic()
        tokens, stamp = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - stamp) * self.per_second)
        if tokens < cost:
            self._buckets[key] = (tokens, now)
            return False
        self._buckets[key] = (tokens - cost, now)
        if len(self._buckets) > self._prune_at:
            self._prune(now)
        return True

    def _prune(self, now: float) -> None:
        """Forget the buckets that have refilled: a full bucket is the default."""
        burst, rate = self.burst, self.per_second
        full = [k for k, (t, s) in self._buckets.items() if t + (now - s) * rate >= burst]
        for key in full:
            del self._buckets[key]
        self._prune_at = max(_PRUNE_AT, 2 * len(self._buckets))

    def __len__(self) -> int:
        return len(self._buckets)


logger = logging.getLogger(__name__)

# Tables keyed by user are pruned once they pass this many entries (and then
# twice what is left), so each prune costs little per entry added.
_PRUNE_AT = 1024
# A reserve unused this long lapses (its tokens are not given back).
_RESERVE_SECONDS = 2.0
# Most tokens a worker holds ahead for one user.
_MAX_RESERVE = 8

# KEYS[1]: the bucket hash. ARGV: burst, refill per second, tokens needed now
# (the command's cost, 0 to top up a reserve), most extra tokens wanted. Returns the
# tokens taken: 0 when fewer than needed are left, extras only from above half
# the burst. Redis's own clock is used, so workers with skewed clocks agree.
_TAKE_TOKENS = """
local burst = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local need = tonumber(ARGV[3])
local extra = tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'stamp')
local tokens = tonumber(state[1]) or burst
local stamp = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - stamp) * rate)
local taken = 0
if tokens >= need then
  local spare = math.floor(tokens - need - burst / 2)
  taken = need + math.max(0, math.min(extra, spare))
  tokens = tokens - taken
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'stamp', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 1)
return taken
"""


@dataclass(slots=True)
class _Reserve:
    tokens: int
    expires: float
    topping_up: asyncio.Task[None] | None = None


class RedisRateLimiter(RateLimiter):
    """The shared bucket in Redis, with a reserve per user in this worker."""

    def __init__(
        self, *, burst: int, per_second: float, prefix: str, redis: aioredis.Redis
    ) -> None:
        super().__init__(burst=burst, per_second=per_second)
        self.prefix = prefix
        self.redis = redis
        self.reserve_size = min(_MAX_RESERVE, burst // 4)
        self._reserves: dict[str, _Reserve] = {}
        self._prune_at = _PRUNE_AT
        # Sockets opening together each spend a token (`connect`) of a user
        # of their own, where no reserve helps: one pipeline for all of them.
        self._trips: Coalescer[tuple[str, int, int], int] = Coalescer(self._take_many)

    async def allow(self, key: str, cost: int = 1) -> bool:
        if cost <= 0:
            return True
        reserve = self._reserves.get(key)
        if reserve is not None and reserve.tokens >= cost and time.monotonic() < reserve.expires:
            reserve.tokens -= cost
            if not reserve.tokens and reserve.topping_up is None:
                reserve.topping_up = asyncio.get_running_loop().create_task(
                    self._top_up(key, reserve)
                )
            return True
        # While a top-up is on its way, take nothing more ahead.
        ahead = 0 if reserve is not None and reserve.topping_up else self.reserve_size
        # What is left in the reserve pays part of the cost, so that tokens are
        # not stranded there by a command costing more than they are.
        held = 0
        if reserve is not None and time.monotonic() < reserve.expires:
            held, reserve.tokens = reserve.tokens, 0
        need = cost - held
        try:
            taken = await self._take(key, need=need, extra=ahead)
        except BaseException:
            self._give_back(reserve, held)
            raise
        if taken < need:
            self._give_back(reserve, held)
            return False
        if taken > need:
            self._keep(key, taken - need)
        return True

    @staticmethod
    def _give_back(reserve: _Reserve | None, tokens: int) -> None:
        if reserve is not None and tokens:
            reserve.tokens += tokens

    async def _take(self, key: str, *, need: int, extra: int) -> int:
        return await self._trips((f"{self.prefix}rate:{key}", need, extra))

    async def _take_many(self, takes: list[tuple[str, int, int]]) -> list[int]:
        """The takes in order, in one trip (each script run is atomic)."""
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for bucket, need, extra in takes:
                    pipe.eval(_TAKE_TOKENS, 1, bucket, self.burst, self.per_second, need, extra)
                return [int(taken) for taken in await pipe.execute()]
        except (RedisConnectionError, RedisTimeoutError) as error:
            # Every caller of the trip is told at once: the Coalescer would
            # otherwise ask again for each, one after another, each waiting
            # out the timeout of an unanswering Redis.
            raise ChatError(UNAVAILABLE, "the rate limiter's Redis did not answer") from error

    async def _top_up(self, key: str, reserve: _Reserve) -> None:
        try:
            taken = await self._take(key, need=0, extra=self.reserve_size)
        except Exception:
            # The next send asks Redis itself, and reports an outage there.
            logger.debug("could not top up the send reserve of %s", key, exc_info=True)
            return
        finally:
            reserve.topping_up = None
        if taken:
            self._keep(key, taken)

    def _keep(self, key: str, tokens: int) -> None:
        now = time.monotonic()
        reserve = self._reserves.get(key)
        if reserve is None or now >= reserve.expires:
            reserve = self._reserves[key] = _Reserve(0, 0.0)
        reserve.tokens += tokens
        reserve.expires = now + _RESERVE_SECONDS
        if len(self._reserves) > self._prune_at:
            self._prune(now)

    def _prune(self, now: float) -> None:
        """Forget lapsed reserves (users who stopped sending)."""
        for key in [k for k, r in self._reserves.items() if now >= r.expires and not r.topping_up]:
            del self._reserves[key]
        self._prune_at = max(_PRUNE_AT, 2 * len(self._reserves))

    def __len__(self) -> int:
        return len(self._reserves)
