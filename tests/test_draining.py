"""A stopping worker's sockets are closed in slices spread over CHAT_RESTART_SPREAD."""

from __future__ import annotations

import asyncio
import itertools
import random

from chat.delivery.draining import close_spread, slices


def test_slices_cover_every_item_once_spread_evenly_over_the_window():
    items = list(range(500))

    schedule = slices(items, 4.0, interval=0.1, rng=random.Random(1))

    assert sorted(item for _, batch in schedule for item in batch) == items
    offsets = [offset for offset, _ in schedule]
    assert len(offsets) == 40
    assert offsets[0] == 0.0
    assert offsets[-1] < 4.0
    steps = {round(b - a, 9) for a, b in itertools.pairwise(offsets)}
    assert steps == {0.1}
    assert {len(batch) for _, batch in schedule} <= {12, 13}


def test_slices_are_in_random_order():
    items = list(range(100))

    first = [i for _, batch in slices(items, 1.0, rng=random.Random(1)) for i in batch]
    second = [i for _, batch in slices(items, 1.0, rng=random.Random(2)) for i in batch]

    assert first != items
    assert first != second


def test_fewer_items_than_slices_get_one_slice_each_across_the_window():
    schedule = slices(["a", "b", "c"], 3.0, interval=0.1)

    assert [offset for offset, _ in schedule] == [0.0, 1.0, 2.0]
    assert all(len(batch) == 1 for _, batch in schedule)


def test_no_spread_closes_everything_at_once():
    [(offset, batch)] = slices([1, 2, 3], 0.0)
    assert offset == 0.0
    assert sorted(batch) == [1, 2, 3]
    assert slices([], 5.0) == []


async def test_close_spread_closes_on_schedule_and_survives_failing_closes():
    loop = asyncio.get_running_loop()
    start = loop.time()
    closed: dict[int, float] = {}

    async def close(item: int) -> None:
        if item % 10 == 0:
            raise ConnectionResetError("already gone")
        closed[item] = loop.time() - start

    await close_spread(list(range(50)), 1.0, close)

    assert set(closed) == {i for i in range(50) if i % 10}
    times = sorted(closed.values())
    assert times[0] < 0.1
    assert 0.85 <= times[-1] < 1.2
    # Spread, not bunched: each half of the window closes about half.
    first_half = sum(1 for t in times if t < 0.5)
    assert 15 <= first_half <= 30
