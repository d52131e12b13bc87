"""daphne: the websocket protocol object behind its ASGI `send`."""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from typing import Any

from daphne import server

from chat.upstream.reaches import missing_assignments, missing_attributes

# Middleware layers that may wrap `send` (as Channels' session middleware does).
_MAX_WRAPPERS = 5


@functools.cache
def send_problem() -> str | None:
    """`protocol_behind` takes the protocol out of `partial(server.handle_reply, protocol)`.

    Cached: every handshake asks, and reading daphne's source each time cost
    more CPU than the rest of the handshake's own code.
    """
    try:
        source = inspect.getsource(server.Server.create_application)
    except (OSError, TypeError):
        return "the source of daphne.server.Server.create_application cannot be read"
    if "partial(self.handle_reply, protocol)" not in source:
        return "daphne's ASGI send is no longer partial(Server.handle_reply, protocol)"
    return missing_attributes(server.Server, "handle_reply")


def protocol_behind(send: Any) -> Any | None:
    """The daphne WebSocketProtocol behind an ASGI `send`, or None elsewhere.

    A middleware that wraps `send` the way Channels' session middleware does
    (a method whose object keeps the original as `real_send`) is looked
    through, so that adding one does not silently lose the fast paths.
    """
    for _ in range(_MAX_WRAPPERS):
        if isinstance(send, functools.partial):
            protocol = send.args[0] if send.args else None
            return protocol if hasattr(protocol, "sendCloseFrame") else None
        wrapper = getattr(send, "__self__", None)
        send = getattr(wrapper, "real_send", None)
        if send is None:
            return None
    return None


@functools.cache
def reject_problem() -> str | None:
    """`deny_handshake` does what daphne's `serverReject` does, with a status of its own."""
    from daphne import ws_protocol

    try:
        source = inspect.getsource(ws_protocol.WebSocketProtocol.serverReject)
    except (OSError, TypeError):
        return "the source of daphne's WebSocketProtocol.serverReject cannot be read"
    for step in ("self.handshake_deferred.errback(", "self.server.protocol_disconnected(self)"):
        if step not in source:
            return f"daphne's WebSocketProtocol.serverReject no longer calls {step}...)"
    return None


def deny_handshake(protocol: Any, status: int, reason: str) -> bool:
    """Answer a websocket handshake with HTTP `status`, where daphne can only say 403.

    False when the handshake was already answered.
    """
    from autobahn.websocket.types import ConnectionDeny

    if not hasattr(protocol, "handshake_deferred"):
        return False
    denial = ConnectionDeny(code=status, reason=reason)  # type: ignore[no-untyped-call]
    protocol.handshake_deferred.errback(denial)
    del protocol.handshake_deferred
    protocol.server.protocol_disconnected(protocol)
    return True


def access_log_problem() -> str | None:
    """`log_access_to` replaces `AccessLogGenerator.write_entry`, which writes every entry."""
    from daphne.access import AccessLogGenerator

    try:
        parameters = list(inspect.signature(AccessLogGenerator.write_entry).parameters)
    except (AttributeError, TypeError, ValueError):
        return "daphne's AccessLogGenerator.write_entry is gone"
    if parameters[:6] != ["self", "host", "date", "request", "status", "length"]:
        return f"daphne's AccessLogGenerator.write_entry takes {parameters} now"
    return None


def log_access_to(access: logging.Logger) -> None:
    """Daphne's access log entries as INFO lines of `access` instead of text on its stream."""
    from daphne.access import AccessLogGenerator

    def write_entry(
        self: AccessLogGenerator,
        host: str,
        date: Any,
        request: str,
        status: int | None = None,
        length: int | None = None,
        ident: str | None = None,
        user: str | None = None,
    ) -> None:
        access.info(
            '%s "%s" %s %s',
            host,
            request,
            status or "-",
            length or "-",
            extra={"client": host, "request": request, "status": status, "size": length},
        )

    AccessLogGenerator.write_entry = write_entry


def inbox_problem() -> str | None:
    """`InboxGuard` wraps the `_put` and `_get` of daphne's per-socket `application_queue`."""
    from daphne import ws_protocol

    found = missing_assignments(
        ws_protocol.WebSocketProtocol.applicationCreateWorked, "application_queue"
    ) or missing_attributes(asyncio.Queue, "_put", "_get")
    if found:
        return found
    for method, step in (("put_nowait", "self._put("), ("get_nowait", "self._get(")):
        try:
            source = inspect.getsource(getattr(asyncio.Queue, method))
        except (OSError, TypeError, AttributeError):
            return f"the source of asyncio.Queue.{method} cannot be read"
        if step not in source:
            return f"asyncio.Queue.{method} no longer calls {step}...)"
    return None


class InboxGuard:
    """Stops reading a socket while its received frames wait unhandled.

    Daphne puts every frame autobahn decodes on the consumer's queue, without
    limit: a client sending faster than its frames are handled (behind one
    slow command, say) grows the worker's memory. The guard counts what
    waits on the queue; past `limit` bytes it pauses the transport (Twisted
    stops reading the socket, so the client's own sends block in TCP) and
    resumes it once the consumer has taken the queue below half the limit.
    """

    __slots__ = ("_get", "_put", "_transport", "limit", "paused", "waiting")

    def __init__(self, queue: Any, transport: Any, limit: int) -> None:
        self.limit = limit
        self.waiting = 0
        self.paused = False
        self._transport = transport
        self._put = queue._put
        self._get = queue._get
        queue._put = self.put
        queue._get = self.get

    def put(self, item: Any) -> None:
        self._put(item)
        self.waiting += _queued_size(item)
        if self.waiting > self.limit and not self.paused:
            self.paused = True
            self._transport.pauseProducing()

    def get(self) -> Any:
        item = self._get()
        self.waiting = max(0, self.waiting - _queued_size(item))
        if self.paused and self.waiting <= self.limit // 2:
            self.paused = False
            self._transport.resumeProducing()
        return item


# What a queued ASGI message costs besides its payload (the dict, its keys).
_QUEUED_OVERHEAD = 256


def _queued_size(item: Any) -> int:
    payload = item.get("text") or item.get("bytes") or ""
    return len(payload) + _QUEUED_OVERHEAD


def guard_inbox(protocol: Any, limit: int) -> InboxGuard | None:
    """An `InboxGuard` on daphne's `protocol`; None when it has no queue to guard."""
    queue = getattr(protocol, "application_queue", None)
    transport = getattr(protocol, "transport", None)
    if queue is None or not hasattr(transport, "pauseProducing"):
        return None
    return InboxGuard(queue, transport, limit)
