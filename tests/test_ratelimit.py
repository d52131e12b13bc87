"""chat.ratelimit: the token bucket, in memory and in Redis, written once for both."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest
import redis.asyncio as aioredis

from chat import ratelimit
from chat.protocol import UNAVAILABLE, ChatError
from chat.ratelimit import MemoryRateLimiter, RedisRateLimiter
from chat.worker import current_worker
from tests.conftest import REDIS_URL, require_redis
from tests.servers import free_port

# Slow enough that no token comes back while a test runs.
NO_REFILL = 0.001


@pytest.fixture(params=["memory", "redis"])
def make_limiter(request, settings):
    """`make_limiter(burst=, per_second=)` builds a limiter of the backend under test."""
    if request.param == "memory":
        return MemoryRateLimiter
    require_redis()
    settings.REDIS_URL = REDIS_URL
    prefix = request.getfixturevalue("redis_prefix")

    def build(*, burst: int, per_second: float) -> RedisRateLimiter:
        return RedisRateLimiter(
            burst=burst, per_second=per_second, prefix=f"{prefix}:", redis=current_worker().redis
        )

    return build


async def take(limiter, key: str, times: int) -> list[bool]:
    return [await limiter.allow(key) for _ in range(times)]


async def test_a_burst_is_allowed_then_refused(make_limiter):
    limiter = make_limiter(burst=3, per_second=NO_REFILL)

    assert await take(limiter, "user:1", 5) == [True, True, True, False, False]


async def test_tokens_left_ahead_pay_part_of_a_dearer_command(make_limiter):
    """A handshake (1) then reads (2 each): no token is stranded in a reserve."""
    limiter = make_limiter(burst=21, per_second=NO_REFILL)

    assert await limiter.allow("user:1", 1) is True
    reads = [await limiter.allow("user:1", 2) for _ in range(12)]

    assert reads == [True] * 10 + [False] * 2


async def test_keys_have_independent_buckets(make_limiter):
    limiter = make_limiter(burst=2, per_second=NO_REFILL)
    await take(limiter, "user:1", 2)

    assert await limiter.allow("user:1") is False
    assert await take(limiter, "user:2", 3) == [True, True, False]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(ratelimit, "time", SimpleNamespace(monotonic=fake.monotonic))
    return fake


async def test_memory_bucket_refills_at_the_rate(clock):
    limiter = MemoryRateLimiter(burst=2, per_second=4.0)
    assert await take(limiter, "user:1", 3) == [True, True, False]

    clock.now += 0.2  # 0.8 tokens: not yet
    assert await limiter.allow("user:1") is False
    clock.now += 0.05  # 1.0 token
    assert await take(limiter, "user:1", 2) == [True, False]


async def test_refused_attempts_do_not_delay_the_refill(clock):
    limiter = MemoryRateLimiter(burst=1, per_second=1.0)
    assert await limiter.allow("user:1") is True

    clock.now += 0.5
    assert await limiter.allow("user:1") is False
    clock.now += 0.5
    assert await limiter.allow("user:1") is True


async def test_memory_bucket_never_holds_more_than_the_burst(clock):
    limiter = MemoryRateLimiter(burst=2, per_second=4.0)
    await take(limiter, "user:1", 2)

    clock.now += 3600
    assert await take(limiter, "user:1", 3) == [True, True, False]


async def test_redis_bucket_refills_over_time(settings, redis_prefix):
    settings.REDIS_URL = REDIS_URL
    # One token a second: empty right after the first take, full again
    # within a second (Redis's own clock decides, so the test polls for it).
    limiter = RedisRateLimiter(
        burst=1, per_second=1.0, prefix=f"{redis_prefix}:", redis=current_worker().redis
    )
    assert await limiter.allow("user:1") is True
    assert await limiter.allow("user:1") is False

    emptied = time.monotonic()
    deadline = emptied + 5.0
    while not await limiter.allow("user:1"):
        assert time.monotonic() < deadline, "the bucket never refilled"
        await asyncio.sleep(0.05)
    # Refilled by the rate, not at once.
    assert time.monotonic() - emptied > 0.5


async def test_redis_bucket_never_holds_more_than_the_burst(settings, redis_prefix):
    settings.REDIS_URL = REDIS_URL
    # At this rate any gap between two takes refills far more than the burst.
    limiter = RedisRateLimiter(
        burst=3, per_second=1e9, prefix=f"{redis_prefix}:", redis=current_worker().redis
    )
    redis = current_worker().redis

    for _ in range(5):
        assert await limiter.allow("user:1") is True
        tokens = float(await redis.hget(f"{redis_prefix}:rate:user:1", "tokens"))
        assert tokens <= 2  # capped at 3, minus the one just taken


async def test_two_redis_limiters_share_one_bucket(settings, redis_prefix):
    settings.REDIS_URL = REDIS_URL
    here = RedisRateLimiter(
        burst=2, per_second=NO_REFILL, prefix=f"{redis_prefix}:", redis=current_worker().redis
    )
    there = RedisRateLimiter(
        burst=2, per_second=NO_REFILL, prefix=f"{redis_prefix}:", redis=current_worker().redis
    )

    assert await here.allow("user:1") is True
    assert await there.allow("user:1") is True
    assert await here.allow("user:1") is False
    assert await there.allow("user:1") is False


async def test_concurrent_takes_from_redis_never_exceed_the_burst(settings, redis_prefix):
    settings.REDIS_URL = REDIS_URL
    limiter = RedisRateLimiter(
        burst=8, per_second=NO_REFILL, prefix=f"{redis_prefix}:", redis=current_worker().redis
    )

    results = await asyncio.gather(*(limiter.allow("user:1") for _ in range(20)))
    # What the first call took ahead is spent by the next sends.
    later = await take(limiter, "user:1", 20)
    await topped_up(limiter)

    assert results.count(True) <= 8
    assert results.count(True) + later.count(True) == 8


@pytest.fixture
def trips(monkeypatch) -> list[int]:
    """The size of every trip a limiter makes to Redis (limiters made after it)."""
    sizes: list[int] = []
    take_many = RedisRateLimiter._take_many

    async def counted(self, takes):
        sizes.append(len(takes))
        return await take_many(self, takes)

    monkeypatch.setattr(RedisRateLimiter, "_take_many", counted)
    return sizes


async def test_users_spending_together_share_one_trip_to_redis(settings, redis_prefix, trips):
    """200 sockets of 200 users opening at once: one pipeline, not 200 round trips,
    and each user's bucket answers as if asked alone."""
    settings.REDIS_URL = REDIS_URL
    limiter = RedisRateLimiter(
        burst=1, per_second=NO_REFILL, prefix=f"{redis_prefix}:", redis=current_worker().redis
    )

    first = await asyncio.gather(*(limiter.allow(f"user:{n}") for n in range(200)))
    again = await asyncio.gather(*(limiter.allow(f"user:{n}") for n in range(200)))

    assert first == [True] * 200 and again == [False] * 200
    assert sum(trips) == 400 and len(trips) <= 4, trips


async def test_with_redis_unreachable_users_spending_together_are_answered_at_once(trips):
    """An outage answers every caller of the trip together (`unavailable`, which
    the budget lets through), not one caller after another, each waiting out
    Redis's timeout."""
    unreachable = aioredis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")
    limiter = RedisRateLimiter(burst=1, per_second=NO_REFILL, prefix="none:", redis=unreachable)
    try:
        answers = await asyncio.gather(
            *(limiter.allow(f"user:{n}") for n in range(50)), return_exceptions=True
        )
    finally:
        await unreachable.aclose()

    assert all(isinstance(a, ChatError) and a.code == UNAVAILABLE for a in answers), answers
    assert sum(trips) == 50 and len(trips) <= 3, trips


# -- reserves: tokens a worker takes ahead -------------------------------------


def redis_limiter(prefix: str, *, burst: int, per_second: float = NO_REFILL) -> RedisRateLimiter:
    return RedisRateLimiter(
        burst=burst, per_second=per_second, prefix=f"{prefix}:", redis=current_worker().redis
    )


@pytest.fixture
def redis_takes(settings, monkeypatch) -> list[tuple[int, int]]:
    """Every call to Redis by a limiter, as (needed now, taken ahead at most)."""
    settings.REDIS_URL = REDIS_URL
    calls: list[tuple[int, int]] = []
    take_from_redis = RedisRateLimiter._take

    async def counted(self, key, *, need, extra):
        calls.append((need, extra))
        return await take_from_redis(self, key, need=need, extra=extra)

    monkeypatch.setattr(RedisRateLimiter, "_take", counted)
    return calls


async def topped_up(*limiters: RedisRateLimiter) -> None:
    """Wait for the top-ups the limiters started."""
    for limiter in limiters:
        tasks = [r.topping_up for r in limiter._reserves.values() if r.topping_up]
        await asyncio.wait_for(asyncio.gather(*tasks), 5)


async def bucket_tokens(prefix: str, key: str) -> int:
    """Whole tokens left in the shared bucket (NO_REFILL still adds a trickle)."""
    redis = current_worker().redis
    return int(float(await redis.hget(f"{prefix}:rate:{key}", "tokens")))


async def test_most_sends_take_from_the_reserve_without_waiting_for_redis(
    redis_takes, redis_prefix
):
    limiter = redis_limiter(redis_prefix, burst=40)  # a reserve of 8

    assert await limiter.allow("user:1") is True
    assert redis_takes == [(1, 8)]  # one now, eight ahead
    assert await take(limiter, "user:1", 8) == [True] * 8
    assert redis_takes == [(1, 8)]  # none of those asked Redis
    await topped_up(limiter)
    assert redis_takes == [(1, 8), (0, 8)]  # the empty reserve was topped up behind them
    assert await take(limiter, "user:1", 8) == [True] * 8
    assert [need for need, _ in redis_takes].count(1) == 1


async def test_workers_with_reserves_together_allow_exactly_the_burst(redis_takes, redis_prefix):
    here, there = (redis_limiter(redis_prefix, burst=40) for _ in range(2))

    allowed = 0
    for n in range(100):
        allowed += await (here if n % 2 else there).allow("user:1")
        await topped_up(here, there)

    assert allowed == 40
    assert await bucket_tokens(redis_prefix, "user:1") == 0


async def test_near_the_limit_nothing_is_taken_ahead(redis_takes, redis_prefix):
    here, there = (redis_limiter(redis_prefix, burst=8) for _ in range(2))  # reserves of 2

    assert await here.allow("user:1") is True  # 8 in the bucket: takes 2 ahead
    assert await bucket_tokens(redis_prefix, "user:1") == 5
    # The lower half is never reserved: the other worker gets all the rest.
    assert await take(there, "user:1", 6) == [True] * 5 + [False]
    assert await take(here, "user:1", 2) == [True, True]
    await topped_up(here)
    assert await here.allow("user:1") is False


async def test_a_reserve_lapses_when_its_user_stops_sending(redis_takes, redis_prefix, clock):
    limiter = redis_limiter(redis_prefix, burst=40)
    assert await limiter.allow("user:1") is True  # 40 - 1 - 8 ahead

    clock.now += ratelimit._RESERVE_SECONDS
    assert await limiter.allow("user:1") is True

    assert [need for need, _ in redis_takes] == [1, 1]  # the lapsed reserve was not used
    assert await bucket_tokens(redis_prefix, "user:1") == 40 - 9 - 9


async def test_a_failed_top_up_leaves_the_next_send_to_ask_redis(
    redis_takes, redis_prefix, monkeypatch
):
    limiter = redis_limiter(redis_prefix, burst=8)  # a reserve of 2
    assert await take(limiter, "user:1", 3) == [True] * 3
    take_from_redis = RedisRateLimiter._take

    async def top_ups_fail(self, key, *, need, extra):
        if need == 0:
            raise ConnectionError("Redis is gone")
        return await take_from_redis(self, key, need=need, extra=extra)

    monkeypatch.setattr(RedisRateLimiter, "_take", top_ups_fail)
    await topped_up(limiter)

    assert await limiter.allow("user:1") is True
    assert await bucket_tokens(redis_prefix, "user:1") == 8 - 3 - 1


async def test_one_redis_limiter_per_loop_until_the_settings_change(settings, redis_prefix):
    settings.REDIS_URL = REDIS_URL
    settings.REDIS_PREFIX = redis_prefix
    first = current_worker().rate_limiter
    assert current_worker().rate_limiter is first

    settings.CHAT_RATE_BURST = first.burst + 1
    second = current_worker().rate_limiter

    assert second is not first and second.burst == first.burst + 1


async def test_redis_bucket_key_expires_once_it_would_be_full_again(settings, redis_prefix):
    settings.REDIS_URL = REDIS_URL
    limiter = RedisRateLimiter(
        burst=10, per_second=2.0, prefix=f"{redis_prefix}:", redis=current_worker().redis
    )
    await limiter.allow("user:1")

    ttl = await current_worker().redis.ttl(f"{redis_prefix}:rate:user:1")

    assert 0 < ttl <= 6  # 10 tokens at 2/s refill in 5 s


def test_settings_without_redis_give_the_worker_one_memory_limiter(settings):
    settings.REDIS_URL = ""
    settings.CHAT_RATE_BURST = 7
    settings.CHAT_RATE_PER_SECOND = 2.0

    limiter = current_worker().rate_limiter

    assert isinstance(limiter, MemoryRateLimiter)
    assert (limiter.burst, limiter.per_second) == (7, 2.0)
    assert current_worker().rate_limiter is limiter


def test_changed_settings_give_a_new_memory_limiter(settings):
    settings.REDIS_URL = ""
    settings.CHAT_RATE_BURST = 7
    first = current_worker().rate_limiter

    settings.CHAT_RATE_BURST = 8
    second = current_worker().rate_limiter

    assert second is not first and second.burst == 8


def test_settings_with_redis_give_a_redis_limiter_under_the_prefix(settings):
    settings.REDIS_URL = REDIS_URL
    settings.REDIS_PREFIX = "deployment"

    limiter = current_worker().rate_limiter

    assert isinstance(limiter, RedisRateLimiter)
    assert limiter.prefix == "deployment:"
    assert (limiter.burst, limiter.per_second) == (
        settings.CHAT_RATE_BURST,
        settings.CHAT_RATE_PER_SECOND,
    )


async def test_a_command_takes_its_cost_and_is_refused_whole(make_limiter):
    limiter = make_limiter(burst=10, per_second=NO_REFILL)

    assert await limiter.allow("user:1", cost=4) is True
    assert await limiter.allow("user:1", cost=4) is True
    assert await limiter.allow("user:1", cost=4) is False  # 2 left: none taken
    assert await take(limiter, "user:1", 3) == [True, True, False]


async def test_reads_cost_more_than_a_ping_and_unknown_commands_cost_the_default():
    assert ratelimit.command_cost("history") > ratelimit.command_cost("ping")
    assert ratelimit.command_cost("sync") > ratelimit.command_cost("ping")
    assert ratelimit.command_cost("some-new-command") == ratelimit.DEFAULT_COST


async def test_memory_buckets_of_users_who_stopped_are_pruned(clock):
    """One entry per user ever seen would grow a long-running worker without end."""
    limiter = MemoryRateLimiter(burst=5, per_second=1.0)
    await take(limiter, "user:busy", 5)
    for user in range(3000):
        assert await limiter.allow(f"user:{user}") is True
        clock.now += 0.001  # each bucket is full again after a second: forgettable

    assert len(limiter) <= 2 * ratelimit._PRUNE_AT
    clock.now += 0.1
    # 3.1 s have passed: the busy user got 3 tokens back, not a fresh bucket of 5.
    assert await take(limiter, "user:busy", 4) == [True, True, True, False]
