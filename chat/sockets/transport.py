"""Under daphne's ASGI `send`: the websocket and its transport.

Three things ASGI cannot express are done here, on daphne only (any other server,
or Channels' WebsocketCommunicator in tests, keeps the plain ASGI behaviour),
and only while the private parts they use are there (`chat.upstream`, which
holds every such reach):

- Cheap frames. Through ASGI every frame to every socket goes through the
  consumer's `send`, daphne's reply dispatch and autobahn's `sendMessage`,
  which builds the frame in Python and formats a debug log line for it: most
  of a worker's CPU when one message fans out to hundreds of sockets. A
  server-to-client frame is not masked, so the same bytes are valid on every
  socket: `text_frame` builds a text frame once per text (the hub writes one
  text to a whole audience in a row) and `FrameWriter` sends it straight to
  each socket.

- Close codes. Autobahn's `sendClose`, which daphne uses for
  `websocket.close`, refuses every code but 1000 and 3000-4999, so the
  protocol's 1008 (logout, misbehaviour), 1011 and 1012 (reconnect) would
  raise instead of closing. `close_frame` sends the close frame itself.
- A bound on what a socket that does not read can cost the server (below).

And one thing daphne's websocket library does that costs for nothing: autobahn
pretty-prints its 29 copied options for a debug log line on every connection,
whether debug logging is on or not (`pformat` runs before the log call is
reached), a large share of a worker's CPU while sockets open in a burst.
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

import logging
import struct
from typing import Any

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from chat import upstream
from chat.upstream import autobahn, daphne, twisted
from chat.upstream.autobahn import FrameWriter

logger = logging.getLogger(__name__)


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
            previous = transport.producer
            if getattr(transport, "streamingProducer", False) and twisted.forwards(previous):
                self._previous = previous
            transport.unregisterProducer()
        transport.registerProducer(self, True)

    def admit(self, size: int) -> bool:
        """Count a frame of `size` bytes; False once the socket holds too much unread.

        Under the mark, the frame is counted as the start of what may wait:
        if it is what takes the buffer over the mark, it is part of what the
        limit bounds.
        """
        if not self.paused:
            self.over_mark = size
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


def frame_writer(protocol: Any | None) -> FrameWriter | None:
    """A `FrameWriter` for daphne's `protocol`; None elsewhere, or with the fast path off."""
    if (
        protocol is None
        or getattr(protocol, "transport", None) is None
        or not upstream.is_on(upstream.FRAMES)
    ):
        return None
    return FrameWriter(protocol)


def daphne_protocol(send: Any) -> Any | None:
    """The daphne WebSocketProtocol behind an ASGI `send`, or None elsewhere.

    Daphne's `send` is `functools.partial(server.handle_reply, protocol)`,
    which `chat.sockets.auth` passes on untouched.
    """
    if daphne.send_problem() is not None:
        return None
    return daphne.protocol_behind(send)


def close_frame(protocol: Any | None, code: int, reason: str = "") -> bool:
    """Start the closing handshake with `code` and `reason` (daphne drops an ASGI
    close's reason); False when that must go through ASGI."""
    if protocol is None or not upstream.is_on(upstream.CLOSE_CODES):
        return False
    autobahn.close_frame(protocol, code, reason)
    return True


def refuse_handshake(protocol: Any | None, status: int, reason: str) -> bool:
    """Answer the handshake with HTTP `status`; False when only ASGI's close (403) can."""
    if protocol is None or not upstream.is_on(upstream.HANDSHAKE_STATUS):
        return False
    return daphne.deny_handshake(protocol, status, reason)


def share_protocol_options(protocol: Any | None) -> bool:
    """Later sockets read autobahn's options from their class (`autobahn.share_options`)."""
    if protocol is None or not upstream.is_on(upstream.SHARED_OPTIONS):
        return False
    autobahn.share_options(protocol)
    return True


def close_on_bad_frames(protocol: Any | None) -> bool:
    """Have autobahn answer a bad frame with 1009 or 1007 instead of dropping TCP.

    False when `protocol` is not daphne's or the reach is gone (the client
    then sees 1006).
    """
    if protocol is None or not upstream.is_on(upstream.BAD_FRAME_CLOSES):
        return False
    autobahn.close_on_bad_frames(protocol)
    return True


def guard_inbox(protocol: Any | None, limit: int) -> daphne.InboxGuard | None:
    """A bound on the socket's received, unhandled bytes; None elsewhere (or with `limit` 0)."""
    if protocol is None or not limit or not upstream.is_on(upstream.INBOX_BOUND):
        return None
    return daphne.guard_inbox(protocol, limit)


def watch_send_buffer(protocol: Any | None, limit: int) -> SendBuffer | None:
    """A `SendBuffer` on the transport of daphne's `protocol`; None elsewhere (no limit)."""
    transport = getattr(protocol, "transport", None)
    if transport is None or not hasattr(transport, "registerProducer"):
        return None
    if not upstream.is_on(upstream.SEND_BUFFER):
        return None
    try:
        return SendBuffer(transport, limit)
    except Exception:
        logger.warning("cannot watch this socket's send buffer", exc_info=True)
        return None


def defer_autobahn_debug_formatting() -> bool:
    """Have autobahn format its per-connection debug line only if it is written; True if so."""
    if not upstream.is_on(upstream.LAZY_DEBUG_LINES):
        return False
    autobahn.defer_debug_formatting()
    return True
