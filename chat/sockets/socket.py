"""A logged-in user's socket: lifecycle, admission, error budget and the writer.

What the socket speaks is its `WireFormat`, composed in (`chat.sockets.json`,
`chat.sockets.classic`); what a command does is its action (`chat.actions`).
The socket holds no chat rules. It does not get a channel layer channel of
its own: the worker's hub is the only layer subscriber and writes to sockets
directly (the socket is the hub's `LocalSocket`).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from typing import Any

from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import channel_layers
from django.conf import settings

from chat import protocol
from chat.actions import Actor, Services, queries
from chat.actions.budget import spend_handshake
from chat.addresses import client_address_of_scope
from chat.database import handshake_admitted, handshake_done
from chat.delivery import Hub, session_digest
from chat.logs import close_reason, serving_connection
from chat.metrics import TALLY
from chat.models import group_key
from chat.protocol import (
    CLOSE_INTERNAL_ERROR,
    CLOSE_POLICY_VIOLATION,
    CLOSE_TOO_MANY_SOCKETS,
    CLOSE_TRY_AGAIN_LATER,
    RATE_LIMITED,
    TOO_MANY_SOCKETS,
    ChatError,
    error_event,
)
from chat.sockets.errors import ErrorBudget
from chat.sockets.transport import (
    close_frame,
    close_on_bad_frames,
    daphne_protocol,
    guard_inbox,
    refuse_handshake,
    share_protocol_options,
    watch_send_buffer,
)
from chat.sockets.wire import WireFormat
from chat.sockets.writer import Writer
from chat.worker import current_worker

logger = logging.getLogger(__name__)


class ChatSocket(AsyncWebsocketConsumer):  # type: ignore[misc]
    """One socket, speaking `wire`; registered with the worker's hub once open."""

    # No such layer alias exists, so Channels creates no per-socket channel.
    channel_layer_alias = "__chat_hub_only__"

    hub: Hub
    services: Services
    actor: Actor
    user: Any
    user_id: int
    username: str
    connection_id: str
    session_digest: str
    out: Writer | None = None
    # Made by the first error: most sockets never make one.
    _errors: ErrorBudget | None = None
    # The client address its socket is counted under (socket caps), once admitted.
    _address: str | None = None
    _attached = False
    # The handshake's database probe (chat.database.handshake_admitted) and when it began.
    _handshake: tuple[object, float]

    def __init__(self, wire: WireFormat) -> None:
        super().__init__()
        self.wire = wire

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Channels' consumer loop without a task and an `asyncio.wait` per socket (memory:
        with no layer channel the client is the only source); the same order."""
        # `in`, not `get_channel_layer`, which raises and catches a KeyError per socket.
        if self.channel_layer_alias in channel_layers:
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

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Channels' dispatch without its `close_old_connections` hop to the database thread
        per event, where each frame would queue behind the send queue's batches. The socket
        never uses the database on the loop; `database_sync_to_async` closes connections."""
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"no handler for message type {message['type']}")
        await handler(message)

    # -- admission -----------------------------------------------------------

    async def websocket_connect(self, message: dict[str, Any]) -> None:
        """A stopping worker refuses new sockets with 503, which nginx passes to another
        worker (`proxy_next_upstream http_503`, deploy/nginx.conf)."""
        if current_worker().stopping:
            logger.info("refused a socket: this worker is stopping")
            if not refuse_handshake(daphne_protocol(self.base_send), 503, "Service Unavailable"):
                await self.close()
            raise StopConsumer
        if self.scope.get("database_stalled"):
            # The session could not be read in time (chat.sockets.auth): not "logged out".
            logger.warning("closing a new socket: the database is stalled")
            await self.accept()
            await Writer(self, daphne_protocol(self.base_send)).close_with(CLOSE_TRY_AGAIN_LATER)
            return
        self._handshake = self.scope.get("database_handshake") or (object(), time.monotonic())
        try:
            await super().websocket_connect(message)
        finally:
            # Opened: its reads succeeded, so a stall is over (chat.database).
            handshake_done(self._handshake[0], started=self._handshake[1], ok=self._attached)

    async def connect(self) -> None:
        user = await self.wire.login(self)
        if user is None:
            await self.close()  # before accept: the handshake is answered 403
            return
        self.user, self.user_id, self.username = user, user.pk, user.get_username()
        self.connection_id = uuid.uuid4().hex
        self.actor = Actor(user, user.pk, self.username, self.connection_id)
        serving_connection(self.connection_id)
        self.session_digest = session_digest(self.scope.get("session_key") or "")
        address = client_address_of_scope(self.scope)
        # Opening loads and subscribes to every group of the user: a reconnect
        # loop spends from the same budget as commands.
        worker = current_worker()
        # The close's reason tells the client which limit it met: a budget
        # refills within seconds, a socket cap holds until a socket closes.
        refused = None
        if not await spend_handshake(worker.rate_limiter, user.pk):
            refused = RATE_LIMITED
        elif not await worker.socket_caps.admit(
            user_id=user.pk,
            username=self.username,
            connection_id=self.connection_id,
            address=address,
        ):
            refused = TOO_MANY_SOCKETS
        if refused is not None:
            logger.info("refused a socket of %s from %s: %s", self.username, address, refused)
            await self.accept()
            wire = daphne_protocol(self.base_send)
            if not close_frame(wire, CLOSE_TOO_MANY_SOCKETS, refused):
                await self.close(code=CLOSE_TOO_MANY_SOCKETS, reason=refused)
            return
        self._address = address
        await self.accept()
        await self._open()

    async def _open(self) -> None:
        """Register the accepted socket with the hub and greet it."""
        wire = daphne_protocol(self.base_send)
        self.out = Writer(self, wire, watch_send_buffer(wire, settings.CHAT_MAX_BUFFERED_BYTES))
        guard_inbox(wire, settings.CHAT_MAX_INCOMING_BYTES)
        close_on_bad_frames(wire)
        share_protocol_options(wire)
        if not handshake_admitted(self._handshake[0]):
            # Opening reads the database: fail now rather than queue behind it.
            logger.warning("closing a new socket of %s: the database is stalled", self.username)
            await self.close_with(CLOSE_TRY_AGAIN_LATER)
            return
        try:
            worker = current_worker()
            self.hub = await worker.hub()
            self.services = worker.services(self.hub)
            groups = await worker.groups_of(self.user_id)
            for group_id, name in groups:
                worker.group_named[group_key(name)] = (group_id, name)
            endpoint = self.wire.endpoint
            # Read with the user at the handshake: presence notices carry it.
            own = await queries.own_name(self.actor)
            await self.hub.attach(
                self, group_ids=[g for g, _ in groups], endpoint=endpoint, name=own
            )
            self._attached = True
            TALLY.open_sockets[endpoint] += 1
            await self.wire.greet(self, groups)
        except Exception as error:
            if isinstance(error, ChatError) and error.code == protocol.UNAVAILABLE:
                # Its reads ran out of time: the database is stalled; try again later.
                logger.warning("closing a new socket of %s: the database is stalled", self.username)
                await self.close_with(CLOSE_TRY_AGAIN_LATER)
                return
            logger.exception("could not open a socket for %s", self.username)
            await self.close_with(CLOSE_INTERNAL_ERROR)
            return
        await self.out.greeted()

    # -- frames in, and closing ------------------------------------------------

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        await self.wire.receive(self, text_data, bytes_data)

    async def websocket_receive(self, message: dict[str, Any]) -> None:
        # Frames the client sent before it saw the server's close (1008 for
        # misbehaving, 1012, ...) are dropped, not acted on.
        if self.out is not None and not self.out.closed:
            await super().websocket_receive(message)

    async def websocket_disconnect(self, message: dict[str, Any]) -> None:
        """Every close is logged at INFO with its code and reason (never a body)."""
        code = message.get("code")
        connection = getattr(self, "connection_id", None)
        logger.info(
            "socket %s of %s closed: code %s (%s)",
            connection or "-",
            getattr(self, "username", "-"),
            code,
            close_reason(code, message.get("reason") or ""),
            extra={"connection": connection, "close_code": code},
        )
        await super().websocket_disconnect(message)

    async def disconnect(self, code: int) -> None:
        if self.out is not None:
            self.out.closed = True
        TALLY.closes[code] += 1
        self.wire.closed()
        if self._address is not None:
            current_worker().socket_caps.release(user_id=self.user_id, address=self._address)
            self._address = None
        if self._attached:
            self._attached = False
            TALLY.open_sockets[self.wire.endpoint] -= 1
            try:
                await self.hub.detach(self)
            except Exception:
                logger.exception("failed to clean up after %s's socket", self.username)

    async def answer_error(self, error: ChatError, ref: str | None) -> None:
        """Answer a refused command, and close the socket with 1008 once it errs too often."""
        await self.write_event(error_event(error.code, error.message, ref))
        TALLY.errors[error.code] += 1
        if error.code == protocol.UNAVAILABLE:
            return  # the server's fault, not the client's
        if self._errors is None:
            self._errors = ErrorBudget()
        if self._errors.spent():
            logger.info("closing %s's socket: too many errors", self.username)
            await self.close_with(CLOSE_POLICY_VIOLATION)

    # -- the hub's side (chat.delivery.LocalSocket), through the writer -------

    def write_now(self, text: str) -> bool:
        out = self.out
        return out is not None and self.wire.shares_frames and out.write_now(text)

    async def write(self, text: str) -> None:
        if self.out is not None:
            await self.out.write(text)

    async def write_events(self, text: str, events: Sequence[dict[str, Any]]) -> None:
        wire = self.wire
        for frame in [text] if wire.shares_frames else wire.translate(events):
            await self.write(frame)

    async def write_event(self, event: dict[str, Any]) -> None:
        """Send one of this socket's own events (a reply, an error) in its wire format."""
        frame = self.wire.frame(event)
        if frame is not None:
            await self.write(frame)

    async def close_with(self, code: int) -> None:
        if self.out is not None:
            await self.out.close_with(code)
        else:
            await self.close(code)
