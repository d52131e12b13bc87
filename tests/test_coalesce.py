"""chat.coalesce: calls made while a trip is out share the next one, each gets its own answer."""

from __future__ import annotations

import asyncio

import pytest
from channels.db import database_sync_to_async

from chat.coalesce import Coalescer, bulk_read, each


class HeldTrips:
    """A `run_many` that records each trip's args and holds every trip until released."""

    def __init__(self) -> None:
        self.trips: list[list[str]] = []
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, args: list[str]) -> list[str | BaseException]:
        self.trips.append(args)
        self.started.set()
        await self.release.wait()
        return [ValueError(arg) if arg.startswith("bad") else arg.upper() for arg in args]


async def held_first_trip() -> tuple[HeldTrips, Coalescer[str, str], asyncio.Task[str]]:
    """A coalescer whose first trip, for "a", is out and held until released."""
    run_many = HeldTrips()
    coalescer: Coalescer[str, str] = Coalescer(run_many)
    first = asyncio.create_task(coalescer("a"))
    await asyncio.wait_for(run_many.started.wait(), 5)
    return run_many, coalescer, first


async def test_a_call_at_rest_makes_its_own_trip_at_once():
    trips: list[list[str]] = []

    async def run_many(args: list[str]) -> list[str | BaseException]:
        trips.append(args)
        return [arg.upper() for arg in args]

    coalescer: Coalescer[str, str] = Coalescer(run_many)

    assert await asyncio.wait_for(coalescer("a"), 5) == "A"
    assert await asyncio.wait_for(coalescer("b"), 5) == "B"
    assert trips == [["a"], ["b"]]


async def test_calls_made_while_a_trip_is_out_share_the_next_one():
    run_many, coalescer, first = await held_first_trip()
    others = [asyncio.create_task(coalescer(arg)) for arg in ("b", "c", "d")]
    await asyncio.sleep(0)  # let them queue

    run_many.release.set()

    assert await asyncio.wait_for(first, 5) == "A"
    assert await asyncio.wait_for(asyncio.gather(*others), 5) == ["B", "C", "D"]
    assert run_many.trips == [["a"], ["b", "c", "d"]]


async def test_each_call_gets_its_own_exception_and_the_others_their_answers():
    run_many = HeldTrips()
    run_many.release.set()
    coalescer: Coalescer[str, str] = Coalescer(run_many)

    results = await asyncio.wait_for(
        asyncio.gather(coalescer("a"), coalescer("bad-b"), coalescer("c"), return_exceptions=True),
        5,
    )

    assert results[0] == "A" and results[2] == "C"
    assert isinstance(results[1], ValueError) and str(results[1]) == "bad-b"


async def test_a_failed_trip_fails_its_calls_and_the_next_call_makes_a_new_trip():
    attempts: list[list[str]] = []

    async def run_many(args: list[str]) -> list[str | BaseException]:
        attempts.append(args)
        if len(attempts) == 1:
            raise ConnectionError("database gone")
        return [arg.upper() for arg in args]

    coalescer: Coalescer[str, str] = Coalescer(run_many)

    with pytest.raises(ConnectionError):
        await asyncio.wait_for(coalescer("a"), 5)
    assert await asyncio.wait_for(coalescer("b"), 5) == "B"


async def test_a_caller_that_gives_up_does_not_disturb_the_others():
    run_many, coalescer, first = await held_first_trip()
    leaving = asyncio.create_task(coalescer("b"))
    staying = asyncio.create_task(coalescer("c"))
    await asyncio.sleep(0)

    leaving.cancel()
    run_many.release.set()

    assert await asyncio.wait_for(first, 5) == "A"
    assert await asyncio.wait_for(staying, 5) == "C"
    assert leaving.cancelled()
    assert run_many.trips == [["a"], ["c"]]


def _double_or_fail(n: int) -> int:
    if n < 0:
        raise ValueError(f"negative: {n}")
    return 2 * n


@pytest.mark.django_db
async def test_each_call_of_a_trip_to_the_database_thread_gets_its_value_or_its_exception():
    doubled: Coalescer[int, int] = Coalescer(
        database_sync_to_async(lambda numbers: each(_double_or_fail, numbers))
    )

    results = await asyncio.wait_for(
        asyncio.gather(*(doubled(n) for n in (1, -2, 3)), return_exceptions=True), 5
    )

    assert results[0] == 2 and results[2] == 6
    assert isinstance(results[1], ValueError)


@pytest.mark.django_db
async def test_bulk_read_answers_each_call_by_its_argument():
    trips: list[list[int]] = []

    def squares(numbers: list[int]) -> dict[int, int]:
        trips.append(numbers)
        return {n: n * n for n in set(numbers)}

    squared = bulk_read(squares)

    results = await asyncio.wait_for(asyncio.gather(*(squared(n) for n in (3, 2, 3))), 5)

    assert results == [9, 4, 9]
    assert sum(len(trip) for trip in trips) == 3 and len(trips) <= 2


async def test_callers_are_not_left_waiting_when_the_trips_are_cancelled():
    _, coalescer, out = await held_first_trip()
    queued = asyncio.create_task(coalescer("b"))
    await asyncio.sleep(0)

    assert coalescer._trips is not None
    coalescer._trips.cancel()

    for caller in (out, queued):
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(caller, 5)


async def test_a_trip_failing_as_a_whole_fails_only_the_call_that_broke_it():
    """As a batched query that the database refuses for one bad key among many."""
    run_many, coalescer, first = await held_first_trip()
    trips_after: list[list[str]] = []

    async def refusing_poison(args: list[str]) -> list[str | BaseException]:
        trips_after.append(args)
        if any("\x00" in arg for arg in args):
            raise ValueError("the database refuses NUL")
        return [arg.upper() for arg in args]

    calls = [asyncio.create_task(coalescer(arg)) for arg in ("b", "bad\x00", "c")]
    await asyncio.sleep(0)
    coalescer._run_many = refusing_poison
    run_many.release.set()

    results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 5)

    assert await asyncio.wait_for(first, 5) == "A"
    assert results[0] == "B" and results[2] == "C"
    assert isinstance(results[1], ValueError)
    assert trips_after == [["b", "bad\x00", "c"], ["b"], ["bad\x00"], ["c"]]
