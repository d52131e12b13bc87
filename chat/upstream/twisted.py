"""Twisted: the reactor that daphne runs on asyncio, and its transports."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import sys
from collections.abc import Awaitable, Callable

logger = logging.getLogger(__name__)


def running_reactor_loop() -> asyncio.AbstractEventLoop | None:
    """The asyncio loop under the running Twisted reactor (daphne's), or None.

    `AsyncioSelectorReactor` keeps its loop as `_asyncioEventloop`.
    """
    reactor = sys.modules.get("twisted.internet.reactor")
    if reactor is None or not getattr(reactor, "running", False):
        return None
    loop = getattr(reactor, "_asyncioEventloop", None)
    return loop if isinstance(loop, asyncio.AbstractEventLoop) else None


def run_before_reactor_shutdown(stop: Callable[[], Awaitable[object]]) -> bool:
    """Await `stop()` when daphne shuts down (SIGTERM, SIGINT), before the loop ends.

    Daphne runs Twisted's asyncio reactor, whose signal handlers start the
    reactor's shutdown; a "before shutdown" trigger that returns a Deferred
    holds the shutdown until it fires, so sockets get their 1012 close and
    other workers hear the presence change right away. Not under daphne
    (tests, other servers) nothing is installed, and False is returned.
    """
    loop = asyncio.get_running_loop()
    if running_reactor_loop() is not loop:
        return False
    from twisted.internet import defer

    reactor = sys.modules["twisted.internet.reactor"]

    def on_shutdown() -> defer.Deferred[object]:
        # A fresh context: the trigger may fire inside a callback whose
        # context says asgiref's single sync thread is in use, and `stop`
        # needs that thread for the database.
        stopping = loop.create_task(_awaited(stop), context=contextvars.Context())
        deferred = defer.Deferred.fromFuture(stopping)
        deferred.addErrback(lambda failure: logger.error("stopping failed: %s", failure))
        return deferred

    reactor.addSystemEventTrigger("before", "shutdown", on_shutdown)
    return True


async def _awaited(stop: Callable[[], Awaitable[object]]) -> object:
    return await stop()
