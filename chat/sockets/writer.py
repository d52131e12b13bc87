"""A socket's writes: frames straight to daphne's transport, bounded, held until greeted."""

from __future__ import annotations

import logging
from typing import Any, Protocol

from chat.protocol import CLOSE_TRY_AGAIN_LATER
from chat.sockets.transport import SendBuffer, close_frame, frame_writer, text_frame

logger = logging.getLogger(__name__)

# Frames of more characters than this are counted against the send buffer
# limit even while the buffer is under its mark: one large reply may be what
# takes it over (smaller ones can add at most the transport's own buffer).
_UNCOUNTED_CHARS = 4096


class Owner(Protocol):
    """The socket a writer writes for."""

    username: str

    async def base_send(self, message: dict[str, Any]) -> None: ...

    async def close(self, code: int | None = None) -> None: ...


class Writer:
    """Writes one socket's frames; closes it when its client stops reading."""

    __slots__ = ("_buffer", "_frames", "_socket", "_wire", "closed", "pending")

    def __init__(self, socket: Owner, wire: Any | None, buffer: SendBuffer | None = None) -> None:
        self._socket = socket
        self._wire = wire  # daphne's protocol object, or None under another server
        self._frames = frame_writer(wire)
        self._buffer = buffer
        self.closed = False
        # Frames for the socket before its greeting is out, in order.
        self.pending: list[str] | None = []

    async def greeted(self) -> None:
        """The first frame is out: write what waited for it."""
        pending, self.pending = self.pending or [], None
        for text in pending:
            await self.write(text)

    def write_now(self, text: str) -> bool:
        """Write `text` at once if nothing stands in the way; False leaves it to `write`."""
        frames, buffer = self._frames, self._buffer
        if (
            frames is None
            or self.closed
            or self.pending is not None
            or (buffer is not None and buffer.paused)
        ):
            return False
        frame = text_frame(text)
        if buffer is not None and len(text) > _UNCOUNTED_CHARS:
            # Counted here rather than in `write`: under the mark `admit` only
            # records it, and a fan-out's batch frames are mostly this large.
            buffer.admit(len(frame))
        try:
            frames.write(frame)
        except Exception:
            self._stop_writing_frames()
            return False  # not written: `write` sends it through ASGI
        return True

    async def write(self, text: str) -> None:
        if self.write_now(text) or self.closed:
            return
        if self.pending is not None:
            self.pending.append(text)
            return
        if self._frames is None:
            await self._socket.base_send({"type": "websocket.send", "text": text})
            return
        # Here when the send buffer is over its mark or for a large frame.
        frame = text_frame(text)
        if self._buffer is not None and not self._buffer.admit(len(frame)):
            # A client that stopped reading: shed it rather than buffer without
            # end; it reconnects and syncs, so nothing is lost silently.
            logger.warning("closing %s's socket: it is not reading", self._socket.username)
            await self.close_with(CLOSE_TRY_AGAIN_LATER)
            return
        try:
            self._frames.write(frame)
        except Exception:
            self._stop_writing_frames()
            await self._socket.base_send({"type": "websocket.send", "text": text})

    def _stop_writing_frames(self) -> None:
        """Send this socket's frames through ASGI from now on: the fast path failed.

        A library upgrade that breaks `FrameWriter` must cost speed, never
        frames. Such a break is an attribute it reads being gone, which fails
        before any byte is written, so the frame is sent again through ASGI.
        """
        logger.warning(
            "writing frames straight to %s's socket failed; sending them through ASGI",
            self._socket.username,
            exc_info=True,
        )
        self._frames = None

    async def close_with(self, code: int) -> None:
        if not self.closed:
            self.closed = True
            # Under daphne, directly: autobahn refuses 1008/1011/1012 from `close`.
            if not close_frame(self._wire, code):
                await self._socket.close(code)
