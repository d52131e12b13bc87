"""Reaching under daphne's ASGI `send` to the websocket and its transport.

Two things ASGI cannot express are done here, on daphne only (any other server,
or Channels' WebsocketCommunicator in tests, keeps the plain ASGI behaviour):

- Close codes. Autobahn's `sendClose`, which daphne uses for
  `websocket.close`, refuses every code but 1000 and 3000-4999, so the
  protocol's 1008 (logout, misbehaviour), 1011 and 1012 (reconnect) would
  raise instead of closing. `close_frame` sends the close frame itself.
- A bound on what a socket that does not read can cost the server (below).

Daphne's ASGI `send` never blocks: each frame is handed to the Twisted
transport, which buffers whatever the peer has not read yet. A client that
stops reading would make that buffer (the worker's memory) grow without end,
and the hub writes to every socket in one loop, so it must never wait for one
slow socket either.

Twisted tells a registered push producer when the transport's buffer passes its
high-water mark (`pauseProducing`) and when it has drained (`resumeProducing`).
`SendBuffer` registers as that producer and counts the bytes written while the
buffer is over the mark; past the limit the socket is closed with
`CLOSE_TRY_AGAIN_LATER`, so the client reconnects and `sync`s what it missed
instead of losing it silently. (The close frame waits behind the unread data;
autobahn drops the connection when the close handshake times out.)

Daphne's HTTP channel registered itself as the transport's producer before the
upgrade (it stops reading from a peer that does not read): `SendBuffer` takes
its place and passes every call on to it.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

logger = logging.getLogger(__name__)

# RFC 6455 "Try Again Later": the server shed this connection; reconnect.
CLOSE_TRY_AGAIN_LATER = 1013

# Middleware layers that may wrap `send` (Channels' session wrapper is one).
_MAX_WRAPPERS = 5


@implementer(IPushProducer)
class SendBuffer:
    """The transport's push producer: is the socket's send buffer over the limit?"""

    def __init__(self, transport: Any, limit: int) -> None:
        self.limit = limit
        self.paused = False
        # Bytes written since the transport's buffer passed its high-water mark.
        self.over_mark = 0
        self._previous: Any = None
        if getattr(transport, "producer", None) is not None:
            if getattr(transport, "streamingProducer", False):
                self._previous = transport.producer
            transport.unregisterProducer()
        transport.registerProducer(self, True)

    def admit(self, size: int) -> bool:
        """Count a frame of `size` bytes; False once the socket holds too much unread."""
        if not self.paused:
            return True
        self.over_mark += size
        return self.over_mark <= self.limit

    # IPushProducer, called by the transport.

    def pauseProducing(self) -> None:
        self.paused = True
        if self._previous is not None:
            self._previous.pauseProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        self.over_mark = 0
        if self._previous is not None:
            self._previous.resumeProducing()

    def stopProducing(self) -> None:
        if self._previous is not None:
            self._previous.stopProducing()


def daphne_protocol(send: Any) -> Any | None:
    """The daphne WebSocketProtocol behind an ASGI `send`, or None elsewhere.

    Daphne's `send` is `functools.partial(server.handle_reply, protocol)`;
    Channels' session middleware wraps it in a method whose object keeps the
    original as `real_send`.
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


def close_frame(protocol: Any | None, code: int) -> bool:
    """Start the closing handshake with `code`; False when `protocol` is not daphne's."""
    if protocol is None:
        return False
    if protocol.state == protocol.STATE_OPEN:
        protocol.sendCloseFrame(code=code, isReply=False)
    return True


def watch_send_buffer(protocol: Any | None, limit: int) -> SendBuffer | None:
    """A `SendBuffer` on the transport of daphne's `protocol`; None elsewhere (no limit)."""
    transport = getattr(protocol, "transport", None)
    if transport is None or not hasattr(transport, "registerProducer"):
        return None
    try:
        return SendBuffer(transport, limit)
    except Exception:
        logger.warning("cannot watch this socket's send buffer", exc_info=True)
        return None
