"""chat.worker: one owner per event loop for what a worker keeps for all its sockets."""

from __future__ import annotations

import asyncio

from chat.presence import MemoryPresenceStore
from chat.ratelimit import MemoryRateLimiter
from chat.worker import current_worker


async def test_a_loop_has_one_worker_and_it_makes_each_part_once(layer, transactional_db, settings):
    worker = current_worker()

    assert current_worker() is worker
    assert await worker.hub() is await worker.hub()
    assert worker.send_queue is worker.send_queue
    assert worker.rate_limiter is worker.rate_limiter
    if settings.REDIS_URL:
        assert worker.redis is worker.redis
    # The hub records presence in the worker's store.
    assert (await worker.hub()).presence is worker.presence
    await (await worker.hub()).stop()
    worker.send_queue.close()


def test_each_loop_gets_a_worker_of_its_own(settings):
    settings.REDIS_URL = ""

    async def owner() -> object:
        return current_worker()

    first, second = asyncio.run(owner()), asyncio.run(owner())

    assert first is not second
    assert current_worker() is current_worker()  # outside a loop too


def test_changed_settings_give_the_worker_new_stores(settings):
    settings.REDIS_URL = ""
    worker = current_worker()
    limiter, store = worker.rate_limiter, worker.presence
    assert isinstance(limiter, MemoryRateLimiter) and isinstance(store, MemoryPresenceStore)

    settings.CHAT_RATE_BURST = limiter.burst + 1

    assert worker.rate_limiter is not limiter
    assert worker.rate_limiter.burst == limiter.burst + 1
    assert worker.presence is store
