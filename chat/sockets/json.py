"""The JSON protocol of docs/protocol.md, on `/ws/chat/`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from django.conf import settings

from chat import actions, protocol
from chat.actions import queries
from chat.protocol import ChatError, Command, encode, error_event
from chat.sockets.wire import Socket

logger = logging.getLogger(__name__)


class JsonFormat:
    """JSON commands in, JSON events out; a read with a `ref` runs alongside later commands."""

    __slots__ = ("_read",)
    endpoint = "json"
    shares_frames = True

    def __init__(self) -> None:
        # The read in progress, if any (most sockets never have one).
        self._read: asyncio.Task[None] | None = None

    async def login(self, socket: Socket) -> Any | None:
        user = socket.scope.get("user")
        return user if user is not None and user.is_authenticated else None

    async def greet(self, socket: Socket, groups: list[tuple[int, str]]) -> None:
        hello = await queries.hello(socket.services, socket.actor, groups)
        await socket.send(text_data=encode(hello))

    async def receive(self, socket: Socket, text: str | None, data: bytes | None) -> None:
        ref = None
        try:
            if text is None:
                raise ChatError(protocol.BINARY_NOT_SUPPORTED, "send JSON in text frames")
            frame = protocol.decode_frame(text, max_bytes=settings.CHAT_MAX_FRAME_BYTES)
            ref = protocol.read_ref(frame)
            entry, command = actions.parse(frame, max_body_chars=settings.CHAT_MAX_BODY_CHARS)
            await actions.spend(socket.services, socket.actor, command.type)
        except ChatError as error:
            await socket.answer_error(error, ref)
            return
        if ref is None or not entry.reads:
            await self._answer(socket, entry, command)
            return
        # A read with a `ref` runs alongside the commands after it (one read
        # at a time), so that a slow database read does not hold up this
        # socket's ping. Without a `ref` answers keep their order.
        read = self._read
        if read is not None and not read.done():
            await asyncio.wait([read])
        self._read = asyncio.ensure_future(self._answer(socket, entry, command))

    async def _answer(self, socket: Socket, entry: actions.Entry, command: Command) -> None:
        """Carry out `command` and send its reply or error."""
        try:
            reply = await entry.act(socket.services, socket.actor, command)
        except ChatError as error:
            await socket.answer_error(error, command.ref)
            return
        except Exception:
            logger.exception("command failed for %s", socket.username)
            await socket.write_event(
                error_event(protocol.UNAVAILABLE, "the server failed; try again", command.ref)
            )
            return
        if reply is not None:
            await socket.write_event(reply)

    def translate(self, events: Sequence[dict[str, Any]]) -> list[str]:
        if len(events) == 1:
            return [encode(events[0])]
        return [encode({"type": "batch", "events": list(events)})]

    def frame(self, event: dict[str, Any]) -> str | None:
        return encode(event)

    def closed(self) -> None:
        read = self._read
        if read is not None and not read.done():
            read.cancel()
