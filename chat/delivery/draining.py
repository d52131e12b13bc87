"""A stopping worker's sockets closed in slices spread over a window, not all at once.

Closing every socket of a worker together sends all its clients to the other
workers in the same second, each to authenticate, load its groups and sync:
a restart of one worker becomes a spike on every other. Closed in small
slices, in random order, spread evenly over `CHAT_RESTART_SPREAD` seconds,
the same clients arrive at a steady rate the survivors absorb. The random
order keeps one user's tabs, or one group's members, from all moving in the
same slice.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Seconds between two slices: fine enough that a second's arrivals are even,
# coarse enough that a worker with few sockets does not wake up for nothing.
SLICE_INTERVAL = 0.1


def slices(
    items: Sequence[T],
    spread: float,
    *,
    interval: float = SLICE_INTERVAL,
    rng: random.Random | None = None,
) -> list[tuple[float, list[T]]]:
    """`items` shuffled and cut into slices, each with its offset in seconds from the start.

    Slices start every `spread / n` seconds from 0 (the last one a step
    before `spread`), and their sizes differ by at most one. A `spread` of 0
    is one slice, at once.
    """
    order = list(items)
    if not order:
        return []
    (rng or random).shuffle(order)
    if spread <= 0:
        return [(0.0, order)]
    count = min(len(order), max(1, round(spread / interval)))
    step = spread / count
    total = len(order)
    return [
        (index * step, order[index * total // count : (index + 1) * total // count])
        for index in range(count)
    ]


async def close_spread(
    items: Sequence[T], spread: float, close: Callable[[T], Awaitable[object]]
) -> None:
    """Call `close` on every item, slice by slice on the schedule of `slices`.

    A failing close (a socket already gone) is logged and skipped: the rest
    still close on time.
    """
    schedule = slices(items, spread)
    if not schedule:
        return
    loop = asyncio.get_running_loop()
    start = loop.time()
    logger.info("closing %d sockets over %.1f s", len(items), spread)
    for offset, batch in schedule:
        delay = start + offset - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        for item in batch:
            try:
                await close(item)
            except Exception:
                logger.debug("closing a socket while stopping failed", exc_info=True)
