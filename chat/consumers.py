"""The `/ws/chat/` socket: parse a frame, call its action, send what it returns.

Consumers hold no chat rules. `chat.protocol` validates frames into commands,
`chat.actions` decides what each does and who is told (through the hub's
outbox), and `chat.delivery` carries events to sockets. A consumer does not
get a channel layer channel of its own: the worker's hub is the only layer
subscriber and writes to sockets directly.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import Sequence
from typing import Any

from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer
from django.conf import settings

from chat import actions, protocol
from chat.actions import Actor, Services, queries
from chat.actions.budget import spend_handshake
from chat.addresses import client_address_of_scope
from chat.database import handshake_admitted, handshake_done
from chat.delivery import Hub, session_digest
from chat.logs import close_reason, serving_connection
from chat.metrics import TALLY
from chat.models import group_key
from chat.protocol import (
    ChatError,
    Command,
    encode,
    error_event,
)
from chat.socket_caps import CLOSE_TOO_MANY_SOCKETS
from chat.transport import (
    CLOSE_TRY_AGAIN_LATER,
    close_frame,
    close_on_bad_frames,
    daphne_protocol,
    frame_writer,
    guard_inbox,
    refuse_handshake,
    text_frame,
    watch_send_buffer,
)
from chat.worker import current_worker

logger = logging.getLogger(__name__)

# Frames of more characters than this are counted against the send buffer
# limit even while the buffer is under its mark: one large reply may be what
# takes it over (smaller ones can add at most the transport's own buffer).
_UNCOUNTED_CHARS = 4096

# Seconds over which errors are counted against CHAT_MAX_ERRORS_PER_MINUTE.
_ERROR_WINDOW = 60.0


class ChatSocket(AsyncWebsocketConsumer):  # type: ignore[misc]
    """A logged-in user's socket, registered with the worker's hub.

    Subclasses speak a wire format: they turn frames into commands and the
    hub's JSON events into frames.
    """

    # No such layer alias exists, so Channels creates no per-socket channel.
    channel_layer_alias = "__chat_hub_only__"
    endpoint = "json"

    hub: Hub
    services: Services
    actor: Actor
    user: Any
    user_id: int
    username: str
    connection_id: str
    session_digest: str
    # Times of recent errors, made by the first error: most sockets never make
    # one, and an empty deque would cost every idle socket its memory.
    _errors: deque[float] | None = None
    # The client address its socket is counted under (chat.socket_caps), once admitted.
    _address: str | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Channels' consumer loop, minus a task and an `asyncio.wait` per socket.

        With no layer channel the client is the only source of messages, but
        Channels still runs each `receive` in a task of its own and waits on
        it: kilobytes per idle socket. Messages are dispatched in the same order.
        """
        if get_channel_layer(self.channel_layer_alias) is not None:
            await super().__call__(scope, receive, send)
            return
        self.scope = scope
        self.channel_layer = None
        self.base_send = send
        try:
            while True:
                await self.dispatch(await receive())
        except StopConsumer:
            pass

    async def websocket_connect(self, message: dict[str, Any]) -> None:
        """A stopping worker refuses new sockets with 503, which nginx passes to another
        worker (`proxy_next_upstream http_503`, deploy/nginx.conf)."""
        if current_worker().stopping:
            logger.info("refused a socket: this worker is stopping")
            if not refuse_handshake(daphne_protocol(self.base_send), 503, "Service Unavailable"):
                await self.close()
            raise StopConsumer
        if self.scope.get("database_stalled"):
            # The session could not be read in time (chat.auth): not "logged out".
            logger.warning("closing a new socket: the database is stalled")
            await self.accept()
            self._closed = False
            self._wire = daphne_protocol(self.base_send)
            await self.close_with(CLOSE_TRY_AGAIN_LATER)
            return
        self._handshake = self.scope.get("database_handshake") or (object(), time.monotonic())
        try:
            await super().websocket_connect(message)
        finally:
            # Opened: its reads succeeded, so a stall is over (chat.database).
            handshake_done(
                self._handshake[0],
                started=self._handshake[1],
                ok=getattr(self, "_attached", False),
            )

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            # Closing before accept makes the server answer the handshake 403.
            await self.close()
            return
        await self.open_as(user)

    async def open_as(self, user: Any) -> None:
        """Accept the socket for `user`, register it, and send the greeting."""
        self.user = user
        self.user_id = user.pk
        self.username = user.get_username()
        self.connection_id = uuid.uuid4().hex
        self.actor = Actor(user, user.pk, self.username, self.connection_id)
        serving_connection(self.connection_id)
        self.session_digest = session_digest(self.scope.get("session_key") or "")
        self._pending: list[str] | None = []
        self._closed = False
        self._attached = False
        address = client_address_of_scope(self.scope)
        # Opening loads and subscribes to every group of the user: a reconnect
        # loop spends from the same budget as commands.
        worker = current_worker()
        if not await spend_handshake(
            worker.rate_limiter, user.pk
        ) or not await worker.socket_caps.admit(
            user_id=user.pk,
            username=self.username,
            connection_id=self.connection_id,
            address=address,
        ):
            logger.info(
                "refused a socket of %s from %s: too many open or opening", self.username, address
            )
            await self.accept()
            await self.close(code=CLOSE_TOO_MANY_SOCKETS)
            self._closed = True
            return
        self._address = address
        await self.accept()
        self._wire = daphne_protocol(self.base_send)
        self._frames = frame_writer(self._wire)
        self._send_buffer = watch_send_buffer(self._wire, settings.CHAT_MAX_BUFFERED_BYTES)
        self._inbox = guard_inbox(self._wire, settings.CHAT_MAX_INCOMING_BYTES)
        close_on_bad_frames(self._wire)
        if not handshake_admitted(self._handshake[0]):
            # Opening reads the database: fail now rather than queue behind it.
            logger.warning("closing a new socket of %s: the database is stalled", self.username)
            await self.close_with(CLOSE_TRY_AGAIN_LATER)
            return
        try:
            worker = current_worker()
            self.hub = await worker.hub()
            self.services = worker.services(self.hub)
            groups = await worker.groups_of(user.pk)
            for group_id, name in groups:
                worker.group_named[group_key(name)] = (group_id, name)
            await self.hub.attach(self, group_ids=[g for g, _ in groups], endpoint=self.endpoint)
            self._attached = True
            TALLY.open_sockets[self.endpoint] += 1
            await self.greet(groups)
        except Exception as error:
            if isinstance(error, ChatError) and error.code == protocol.UNAVAILABLE:
                # Its reads ran out of time: the database is stalled; try again later.
                logger.warning("closing a new socket of %s: the database is stalled", self.username)
                await self.close_with(CLOSE_TRY_AGAIN_LATER)
                return
            logger.exception("could not open a socket for %s", self.username)
            await self.close_with(1011)
            return
        pending, self._pending = self._pending or [], None
        for text in pending:
            await ChatSocket.write(self, text)  # frames as they will go out

    async def greet(self, groups: list[tuple[int, str]]) -> None:
        """Send the first frame (pending events wait until it is out)."""

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Channels' dispatch without its hop to the database thread per event.

        Channels 4.2+ runs `close_old_connections` on its single database
        thread before handling every event (connect, each frame received,
        disconnect), so every frame would queue behind whatever that thread is
        doing (under load, the send queue's batches). This consumer never touches the
        database on the event loop; `database_sync_to_async`, which all its
        queries go through, closes old connections around each call anyway.
        """
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"no handler for message type {message['type']}")
        await handler(message)

    async def websocket_receive(self, message: dict[str, Any]) -> None:
        # Frames the client sent before it saw the server's close (1008 for
        # misbehaving, 1012, ...) are dropped, not acted on.
        if not self._closed:
            await super().websocket_receive(message)

    async def websocket_disconnect(self, message: dict[str, Any]) -> None:
        """Every close is logged at INFO with its code and reason (never a body)."""
        code = message.get("code")
        logger.info(
            "socket %s of %s closed: code %s (%s)",
            getattr(self, "connection_id", "-"),
            getattr(self, "username", "-"),
            code,
            close_reason(code, message.get("reason") or ""),
            extra={"connection": getattr(self, "connection_id", None), "close_code": code},
        )
        await super().websocket_disconnect(message)

    async def disconnect(self, code: int) -> None:
        self._closed = True
        TALLY.closes[code] += 1
        read: asyncio.Task[None] | None = getattr(self, "_read", None)
        if read is not None and not read.done():
            read.cancel()
        if self._address is not None:
            current_worker().socket_caps.release(user_id=self.user_id, address=self._address)
            self._address = None
        if getattr(self, "_attached", False):
            self._attached = False
            TALLY.open_sockets[self.endpoint] -= 1
            try:
                await self.hub.detach(self)
            except Exception:
                logger.exception("failed to clean up after %s's socket", self.username)

    # -- the hub's side (chat.delivery.LocalSocket) ------------------------

    async def write(self, text: str) -> None:
        if self.write_now(text):
            return
        if self._closed:
            return
        if self._pending is not None:
            self._pending.append(text)
            return
        if self._frames is None:
            await self.base_send({"type": "websocket.send", "text": text})
            return
        # Here when the send buffer is over its mark, for a large frame (a
        # reply, say), or for a subclass whose `write_now` never writes.
        frame = text_frame(text)
        if self._send_buffer is not None and not self._send_buffer.admit(len(frame)):
            # A client that stopped reading: shed it rather than buffer without
            # end; it reconnects and syncs, so nothing is lost silently.
            logger.warning("closing %s's socket: it is not reading", self.username)
            await self.close_with(CLOSE_TRY_AGAIN_LATER)
            return
        try:
            self._frames.write(frame)
        except Exception:
            self._stop_writing_frames()
            await self.base_send({"type": "websocket.send", "text": text})

    async def write_events(self, text: str, events: Sequence[dict[str, Any]]) -> None:
        await self.write(text)

    async def write_event(self, event: dict[str, Any]) -> None:
        """Send one of this socket's own events (a reply, an error) in its wire format."""
        await self.write(encode(event))

    def write_now(self, text: str) -> bool:
        frames, buffer = self._frames, self._send_buffer
        if (
            frames is None
            or self._closed
            or self._pending is not None
            or (buffer is not None and buffer.paused)
        ):
            return False  # `write` handles these
        frame = text_frame(text)
        if buffer is not None and len(text) > _UNCOUNTED_CHARS:
            # Counted here rather than in `write`: under the mark `admit` only
            # records it, and a fan-out's batch frames are mostly this large,
            # so sending them through `write` cost a coroutine per socket.
            buffer.admit(len(frame))
        try:
            frames.write(frame)
        except Exception:
            self._stop_writing_frames()
            return False  # not written: `write` sends it through ASGI
        return True

    def _stop_writing_frames(self) -> None:
        """Send this socket's frames through ASGI from now on: the fast path failed.

        A library upgrade that breaks `FrameWriter` must cost speed, never
        frames. Such a break is an attribute it reads being gone, which fails
        before any byte is written, so the frame is sent again through ASGI.
        """
        logger.warning(
            "writing frames straight to %s's socket failed; sending them through ASGI",
            self.username,
            exc_info=True,
        )
        self._frames = None

    async def close_with(self, code: int) -> None:
        if not self._closed:
            self._closed = True
            # Under daphne, directly: autobahn refuses 1008/1011/1012 from `close`.
            if not close_frame(getattr(self, "_wire", None), code):
                await self.close(code)

    # -- misbehaviour --------------------------------------------------------

    async def count_error(self, code: str) -> None:
        """Close the socket with 1008 once it causes too many errors a minute."""
        TALLY.errors[code] += 1
        if code == protocol.UNAVAILABLE:
            return  # the server's fault, not the client's
        now = time.monotonic()
        errors = self._errors
        if errors is None:
            errors = self._errors = deque()
        errors.append(now)
        while errors and errors[0] < now - _ERROR_WINDOW:
            errors.popleft()
        if len(errors) > settings.CHAT_MAX_ERRORS_PER_MINUTE:
            logger.info("closing %s's socket: too many errors", self.username)
            await self.close_with(protocol.CLOSE_POLICY_VIOLATION)


class ChatConsumer(ChatSocket):
    """The JSON protocol of docs/protocol.md."""

    # The read in progress, if any (most sockets never have one).
    _read: asyncio.Task[None] | None = None

    async def greet(self, groups: list[tuple[int, str]]) -> None:
        await self.send(text_data=encode(await queries.hello(self.services, self.actor, groups)))

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        ref = None
        try:
            if text_data is None:
                raise ChatError(protocol.BINARY_NOT_SUPPORTED, "send JSON in text frames")
            data = protocol.decode_frame(text_data, max_bytes=settings.CHAT_MAX_FRAME_BYTES)
            ref = protocol.read_ref(data)
            entry, command = actions.parse(data, max_body_chars=settings.CHAT_MAX_BODY_CHARS)
            await actions.spend(self.services, self.actor, command.type)
        except ChatError as error:
            await self.answer_error(error, ref)
            return
        if ref is None or not entry.reads:
            await self.answer(entry, command)
            return
        # A read with a `ref` runs alongside the commands after it (one read
        # at a time), so that a slow database read does not hold up this
        # socket's ping. Without a `ref` answers keep their order.
        read = self._read
        if read is not None and not read.done():
            await asyncio.wait([read])
        self._read = asyncio.ensure_future(self.answer(entry, command))

    async def answer(self, entry: actions.Entry, command: Command) -> None:
        """Carry out `command` and send its reply or error."""
        try:
            reply = await entry.act(self.services, self.actor, command)
        except ChatError as error:
            await self.answer_error(error, command.ref)
            return
        except Exception:
            logger.exception("command failed for %s", self.username)
            await self.write_event(
                error_event(protocol.UNAVAILABLE, "the server failed; try again", command.ref)
            )
            return
        if reply is not None:
            await self.write_event(reply)

    async def answer_error(self, error: ChatError, ref: str | None) -> None:
        await self.write_event(error_event(error.code, error.message, ref))
        await self.count_error(error.code)
