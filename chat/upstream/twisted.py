"""Twisted: the reactor daphne runs on asyncio, its TCP transports and HTTP channel."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import socket
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet import abstract, tcp
from twisted.web import http

from chat.upstream.reaches import missing_assignments, missing_attributes

logger = logging.getLogger(__name__)


def transport_problem() -> str | None:
    """`write_frame` reads how much a TCP transport still holds: `dataBuffer`, `offset`,
    `_tempDataBuffer` and `_writeDisconnected`."""
    return missing_attributes(
        abstract.FileDescriptor,
        "dataBuffer",
        "offset",
        "_writeDisconnected",
        "connected",
        "disconnecting",
    ) or missing_assignments(abstract.FileDescriptor.__init__, "_tempDataBuffer")


def producer_problem() -> str | None:
    """`forwards` tells an upgraded HTTP channel by `_handlingRequest` and `_requestProducer`."""
    return missing_attributes(http.HTTPChannel, "_requestProducer") or missing_assignments(
        http.HTTPChannel.__init__, "_handlingRequest"
    )


def reactor_problem() -> str | None:
    """`running_reactor_loop` finds the asyncio loop as the reactor's `_asyncioEventloop`."""
    from twisted.internet import asyncioreactor

    return missing_assignments(asyncioreactor.AsyncioSelectorReactor.__init__, "_asyncioEventloop")


def direct_socket(transport: Any) -> socket.socket | None:
    """The socket under a plain TCP transport, for `write_frame`; None under TLS or others."""
    if not isinstance(transport, tcp.Connection) or getattr(transport, "TLS", False):
        return None
    handle: socket.socket = transport.getHandle()
    if handle.family in (socket.AF_INET, socket.AF_INET6):
        # Twisted leaves Nagle's algorithm on (asyncio turns it off): a
        # frame written while the last one is unacknowledged would wait
        # for the client's delayed ACK, up to 40 ms of latency for nothing.
        transport.setTcpNoDelay(True)
    return handle


def write_frame(transport: Any, handle: socket.socket | None, frame: bytes) -> None:
    """`transport.write(frame)`, sent at once when nothing is buffered ahead of it.

    Twisted's `transport.write` only buffers: the socket is then registered
    for writability with the event loop, written on its next turn and
    unregistered again, two `epoll_ctl` calls and much bookkeeping per frame
    per socket. Like asyncio's own transports, this sends at once when
    nothing waits ahead of the frame and leaves only what the kernel did not
    take to Twisted, which keeps the order and the send-buffer limits.
    """
    if (
        handle is not None
        and transport.connected
        and not transport.disconnecting
        and not transport._writeDisconnected
        and not transport._tempDataBuffer
        and len(transport.dataBuffer) == transport.offset
    ):
        try:
            sent = handle.send(frame)
        except OSError:
            # Full (EAGAIN) or broken: Twisted buffers it, and finds out
            # about a broken connection on its own write.
            sent = 0
        if sent == len(frame):
            return
        frame = frame[sent:]
    transport.write(frame)


def forwards(producer: Any) -> bool:
    """Whether `producer`'s pause, resume and stop still do anything.

    Daphne's upgraded HTTP channel stays mid-request for good and has no
    request producer, so its calls only set a flag of its own; keeping it
    would keep it, its request and their headers alive (kilobytes per socket).
    """
    return not (
        isinstance(producer, http.HTTPChannel)
        and producer._handlingRequest
        and producer._requestProducer is None
    )


def running_reactor_loop() -> asyncio.AbstractEventLoop | None:
    """The asyncio loop under the running Twisted reactor (daphne's), or None."""
    reactor = sys.modules.get("twisted.internet.reactor")
    if reactor is None or not getattr(reactor, "running", False):
        return None
    loop = getattr(reactor, "_asyncioEventloop", None)
    return loop if isinstance(loop, asyncio.AbstractEventLoop) else None


def run_when_reactor_runs(start: Callable[[], Awaitable[object]]) -> bool:
    """Start `start()` as a task on daphne's loop once its reactor runs.

    Not under daphne (no reactor installed: tests, other servers) nothing is
    scheduled, and False is returned.
    """
    reactor = sys.modules.get("twisted.internet.reactor")
    if reactor is None:
        return False

    def begin() -> None:
        loop = running_reactor_loop()
        if loop is not None:
            loop.create_task(_awaited(start), context=contextvars.Context())

    reactor.callWhenRunning(begin)
    return True


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
