"""Reaching under daphne's ASGI `send` to the websocket and its transport.

Three things ASGI cannot express are done here, on daphne only (any other server,
or Channels' WebsocketCommunicator in tests, keeps the plain ASGI behaviour):

- Cheap frames. Through ASGI every frame to every socket goes through the
  consumer's `send`, daphne's reply dispatch and autobahn's `sendMessage`,
  which builds the frame in Python and formats a debug log line for it: most
  of a worker's CPU when one message fans out to hundreds of sockets. A server-to-client frame is
  not masked, so the same bytes are valid on every socket: `text_frame`
  builds a text frame once per text (the hub writes one text to a whole
  audience in a row) and `FrameWriter` sends it straight to each socket.

- Close codes. Autobahn's `sendClose`, which daphne uses for
  `websocket.close`, refuses every code but 1000 and 3000-4999, so the
  protocol's 1008 (logout, misbehaviour), 1011 and 1012 (reconnect) would
  raise instead of closing. `close_frame` sends the close frame itself.
- A bound on what a socket that does not read can cost the server (below).

And one thing daphne's websocket library does that costs for nothing: autobahn
pretty-prints its 29 copied options for a debug log line on every connection,
whether debug logging is on or not (`pformat` runs before the log call is
reached). That was 23% of a worker's CPU while 200 sockets opened at a time.
`defer_autobahn_debug_formatting` makes that line format only if it is written.

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
its place and passes every call on to it, unless those calls would change
nothing (`_forwards`), so that an idle socket does not keep the channel alive.
"""

from __future__ import annotations

import functools
import logging
import pprint
import socket
import struct
from typing import Any

from twisted.internet import tcp
from twisted.internet.interfaces import IPushProducer
from twisted.web import http
from zope.interface import implementer

logger = logging.getLogger(__name__)

# RFC 6455 "Try Again Later": the server shed this connection; reconnect.
CLOSE_TRY_AGAIN_LATER = 1013

# Middleware layers that may wrap `send` (as Channels' session middleware does).
_MAX_WRAPPERS = 5


@implementer(IPushProducer)
class SendBuffer:
    """The transport's push producer: is the socket's send buffer over the limit?"""

    # One per socket: slots keep idle sockets small.
    __slots__ = ("_previous", "limit", "over_mark", "paused")

    def __init__(self, transport: Any, limit: int) -> None:
        self.limit = limit
        self.paused = False
        # Bytes written since the transport's buffer passed its high-water mark.
        self.over_mark = 0
        self._previous: Any = None
        if getattr(transport, "producer", None) is not None:
            if getattr(transport, "streamingProducer", False) and _forwards(transport.producer):
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


def _forwards(producer: Any) -> bool:
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


def text_frame(text: str) -> bytes:
    """`text` as one unmasked, unfragmented RFC 6455 text frame (server to client)."""
    global _last_frame
    last_text, last_frame = _last_frame
    if text is last_text:
        return last_frame
    payload = text.encode("utf-8")
    size = len(payload)
    if size < 126:
        header = bytes((_FIN_TEXT, size))
    elif size < 1 << 16:
        header = struct.pack("!BBH", _FIN_TEXT, 126, size)
    else:
        header = struct.pack("!BBQ", _FIN_TEXT, 127, size)
    frame = header + payload
    # One tuple, swapped in one step: the hub writes the same str object to a
    # whole audience, so this is a cache hit for all but its first socket.
    _last_frame = (text, frame)
    return frame


_FIN_TEXT = 0x81
_last_frame: tuple[str | None, bytes] = (None, b"")


class FrameWriter:
    """Writes frames built by `text_frame` to one daphne socket.

    Twisted's `transport.write` only buffers: the socket is then registered
    for writability with the event loop, written on its next turn and
    unregistered again, two `epoll_ctl` calls and much bookkeeping per frame
    per socket. Like asyncio's own transports, the writer sends at once when
    nothing is buffered ahead of the frame and leaves only what the kernel
    did not take to Twisted, which keeps the order and the send-buffer limits.
    """

    # One per socket: slots keep idle sockets small.
    __slots__ = ("_direct", "protocol")

    def __init__(self, protocol: Any) -> None:
        self.protocol = protocol
        transport = protocol.transport
        self._direct = isinstance(transport, tcp.Connection) and not getattr(
            transport, "TLS", False
        )
        if self._direct and transport.socket.family in (socket.AF_INET, socket.AF_INET6):
            # Twisted leaves Nagle's algorithm on (asyncio turns it off): a
            # frame written while the last one is unacknowledged would wait
            # for the client's delayed ACK, up to 40 ms of latency for nothing.
            transport.setTcpNoDelay(True)

    def write(self, frame: bytes) -> None:
        protocol = self.protocol
        if protocol.state != protocol.STATE_OPEN:
            return  # closing: what autobahn would refuse to send anyway
        if (
            protocol.send_queue
            or protocol.send_state != protocol.SEND_STATE_GROUND
            or protocol._perMessageCompress is not None
        ):
            # Autobahn has bytes of its own queued, is mid-message, or
            # compresses: let it frame this one so nothing is reordered.
            protocol.sendMessage(_payload(frame), isBinary=False)
            return
        transport = protocol.transport
        if (
            self._direct
            and transport.connected
            and not transport.disconnecting
            and not transport._writeDisconnected
            and not transport._tempDataBuffer
            and len(transport.dataBuffer) == transport.offset
        ):
            try:
                sent = transport.socket.send(frame)
            except OSError:
                # Full (EAGAIN) or broken: Twisted buffers it, and finds out
                # about a broken connection on its own write.
                sent = 0
            if sent == len(frame):
                return
            frame = frame[sent:]
        transport.write(frame)


def _payload(frame: bytes) -> bytes:
    size = frame[1] & 0x7F
    return frame[2 + {126: 2, 127: 8}.get(size, 0) :]


def frame_writer(protocol: Any | None) -> FrameWriter | None:
    """A `FrameWriter` for daphne's `protocol`; None elsewhere."""
    if protocol is None or getattr(protocol, "transport", None) is None:
        return None
    return FrameWriter(protocol)


def daphne_protocol(send: Any) -> Any | None:
    """The daphne WebSocketProtocol behind an ASGI `send`, or None elsewhere.

    Daphne's `send` is `functools.partial(server.handle_reply, protocol)`,
    which `chat.auth` passes on untouched. A middleware that wraps it the way
    Channels' session middleware does (a method whose object keeps the
    original as `real_send`) is looked through, so that adding one does not
    silently lose the frame path and the close codes.
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


class _Pretty:
    """`pprint.pformat(value)`, worked out only when a log line is written."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __str__(self) -> str:
        return pprint.pformat(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)


def _timings_text(timings: Any) -> str:
    return pprint.pformat(timings._timings)


def defer_autobahn_debug_formatting() -> bool:
    """Have autobahn's websocket protocol format its debug arguments lazily; True if it does.

    Autobahn calls its module's `pformat` only to build debug log arguments
    (with `{}` fields, which `__format__` serves) and in `Timings.__str__`,
    which must return a str and gets its own function. The log lines read
    the same when debug logging is on. A no-op without autobahn (other
    servers) or if autobahn no longer uses `pprint.pformat`.
    """
    try:
        from autobahn.websocket import protocol
    except ImportError:
        return False
    if protocol.pformat is _Pretty:
        return True
    if protocol.pformat is not pprint.pformat:
        return False
    protocol.Timings.__str__ = _timings_text  # type: ignore[method-assign]
    protocol.pformat = _Pretty  # type: ignore[assignment]
    return True
