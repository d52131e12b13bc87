"""Ending asyncio tasks for sure, when the libraries under them lose a cancellation."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

logger = logging.getLogger(__name__)


def raise_if_cancelled() -> None:
    """Raise a cancellation that a library swallowed, so a loop ends when asked.

    channels_redis's `group_send` often returns normally when the task calling
    it is cancelled, and redis-py can raise ConnectionError instead; a loop
    that carries on would keep its event loop from closing.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]], *, within: float = 10.0) -> bool:
    """Cancel `tasks` and wait until they end, cancelling again those that run on.

    One cancellation is not always enough: Python 3.11's `asyncio.wait_for`
    returns the result of a call that completes as the cancellation arrives
    and drops the cancellation, and redis-py sends every command through it
    when a socket timeout is set. channels_redis's `receive` then goes back
    to its blocking pop and never returns, so a loop closed by cancelling
    each task once (asyncio's own shutdown) would wait for it for ever.
    True if every task ended within `within` seconds.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    current = asyncio.current_task()
    pending = {task for task in tasks if task is not current and not task.done()}
    while pending:
        remaining = deadline - loop.time()
        if remaining <= 0:
            logger.warning("tasks still running after cancellation: %s", pending)
            return False
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=min(0.2, remaining))
    return True
