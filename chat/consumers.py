"""The `/ws/chat/` socket: parse a frame, call the domain, send what it returns.

Consumers hold no chat rules. `chat.protocol` validates frames, `chat.messaging`
and `chat.groups` decide and store, `chat.delivery` carries events to other
sockets. A consumer does not get a channel layer channel of its own: the
worker's hub is the only layer subscriber and writes to sockets directly.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer
from django.conf import settings

from chat import protocol
from chat.addresses import client_address_of_scope
from chat.conversations import (
    ReadRequest,
    conversation_list,
    decode_cursor,
    encode_cursor,
    groups_matching,
    users_matching,
)
from chat.database import handshake_admitted, handshake_done, read_for_socket
from chat.delivery import Hub, session_digest
from chat.delivery.publishing import (
    change_event,
    membership_notices,
    to_group,
    to_message_audience,
    to_user,
    to_username,
)
from chat.groups import group_join, group_leave, group_members_read
from chat.logs import close_reason, serving_connection
from chat.message_changes import (
    Change,
    message_changes,
    message_delete,
    message_edit,
    message_react,
)
from chat.messaging import message_history_page, message_sync
from chat.metrics import TALLY
from chat.models import group_key
from chat.paging import fit_page, names_page
from chat.protocol import (
    Changes,
    ChatError,
    Command,
    Conversations,
    Delete,
    Edit,
    Groups,
    History,
    Join,
    Leave,
    Members,
    Ping,
    React,
    Read,
    Send,
    Sync,
    Typing,
    Unreact,
    Users,
    Who,
    encode,
    error_event,
)
from chat.ratelimit import command_cost
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
    user: Any
    user_id: int
    username: str
    connection_id: str
    session_digest: str
    # Times of recent errors, created by the first error: most sockets never
    # make one, and an empty deque costs about 760 bytes per idle socket.
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
        serving_connection(self.connection_id)
        self.session_digest = session_digest(self.scope.get("session_key") or "")
        self._pending: list[str] | None = []
        self._closed = False
        self._attached = False
        address = client_address_of_scope(self.scope)
        # Opening loads and subscribes to every group of the user: a reconnect
        # loop spends from the same budget as commands.
        if not await self.spend_handshake() or not await current_worker().socket_caps.admit(
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
        disconnect), so every frame queued behind whatever that thread was
        doing: under load, behind the send queue's batches (acks took seconds
        while the worker was half idle). This consumer never touches the
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

    # -- commands shared by every wire format -------------------------------

    async def spend(self, kind: str) -> None:
        """Take a command's cost from the user's budget; `rate_limited` past it."""
        try:
            allowed = await current_worker().rate_limiter.allow(
                f"user:{self.user_id}", command_cost(kind)
            )
        except Exception:
            # The limiter lives in Redis; an outage must not stop messages
            # from being stored (docs/protocol.md, guarantees).
            logger.warning("rate limiter unavailable; letting a %s through", kind)
            return
        if not allowed:
            TALLY.rate_limited[kind] += 1
            done = "nothing was stored" if kind == "send" else f"this {kind} was not carried out"
            raise ChatError(protocol.RATE_LIMITED, f"you are sending too fast; {done}")

    async def spend_handshake(self) -> bool:
        """Take a handshake's cost (`connect`) from the user's budget; False past it."""
        try:
            await self.spend("connect")
        except ChatError:
            return False
        return True

    async def send_message(self, command: Send) -> dict[str, Any]:
        """Store a message and return its ack; the send queue delivers it to its audience.

        The caller has spent the command's cost (`spend`) and writes the ack
        (the classic endpoint has none to write).
        """
        stored = await current_worker().send_queue.submit(
            self.user, command.to, command.body, command.cid, command.reply_to
        )
        cid = {} if command.cid is None else {"cid": command.cid}
        return _reply("ack", command.ref, id=stored.id, ts=stored.ts, **cid)

    async def spend_membership_change(self, kind: str) -> None:
        """Take one join or leave from the user's membership budget; `rate_limited` past it."""
        limiter = current_worker().membership_limiter
        if limiter is None:
            return
        try:
            allowed = await limiter.allow(f"membership:{self.user_id}")
        except Exception:
            logger.warning("rate limiter unavailable; letting a %s through", kind)
            return
        if not allowed:
            TALLY.rate_limited[kind] += 1
            raise ChatError(
                protocol.RATE_LIMITED,
                f"you are joining and leaving groups too fast; this {kind} was not carried out",
            )

    async def join_group(self, command: Join) -> dict[str, Any]:
        await self.spend_membership_change("join")
        change = await database_sync_to_async(group_join)(user=self.user, name=command.group)
        current_worker().group_named[group_key(change.group)] = (change.group_id, change.group)
        await self.hub.note_membership(user_id=self.user_id, group_id=change.group_id, joined=True)
        event = {"type": "joined", "group": change.group, "user": self.username}
        if change.changed:
            await self.hub.tell(
                membership_notices(
                    event,
                    user_id=self.user_id,
                    group_id=change.group_id,
                    joined=True,
                    exclude_connection=self.connection_id,
                )
            )
        if change.created:
            return _reply(
                "joined", command.ref, group=change.group, user=self.username, created=True
            )
        return _reply("joined", command.ref, group=change.group, user=self.username)

    async def leave_group(self, command: Leave) -> dict[str, Any]:
        await self.spend_membership_change("leave")
        change = await database_sync_to_async(group_leave)(user=self.user, name=command.group)
        await self.hub.note_membership(user_id=self.user_id, group_id=change.group_id, joined=False)
        event = {"type": "left", "group": change.group, "user": self.username}
        await self.hub.tell(
            membership_notices(
                event,
                user_id=self.user_id,
                group_id=change.group_id,
                joined=False,
                exclude_connection=self.connection_id,
            )
        )
        return _reply("left", command.ref, group=change.group, user=self.username)

    async def online_now(self) -> tuple[str, ...]:
        try:
            return await self.hub.online_names()
        except Exception:
            logger.warning("presence store unavailable", exc_info=True)
            raise ChatError(protocol.UNAVAILABLE, "presence is unavailable; try again") from None


class ChatConsumer(ChatSocket):
    """The JSON protocol of docs/protocol.md."""

    # Commands that only read the database: one with a `ref` runs in a task
    # of its own, alongside the socket's later commands.
    reads: frozenset[str] = frozenset(
        {"history", "sync", "members", "conversations", "users", "groups", "changes"}
    )
    # The read in progress, if any (most sockets never have one).
    _read: asyncio.Task[None] | None = None

    async def greet(self, groups: list[tuple[int, str]]) -> None:
        try:
            online = await self.online_now()
        except ChatError:
            online = ()
        last_id, last_rev = await current_worker().last_marks_of(self.user_id)
        hello = {
            "type": "hello",
            "user": self.username,
            "online": online,
            "groups": [name for _, name in groups],
            "last_id": last_id,
            "last_rev": last_rev,
        }
        await self.send(text_data=encode(hello))

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        ref = None
        try:
            if text_data is None:
                raise ChatError(protocol.BINARY_NOT_SUPPORTED, "send JSON in text frames")
            data = protocol.decode_frame(text_data, max_bytes=settings.CHAT_MAX_FRAME_BYTES)
            ref = protocol.read_ref(data)
            command = protocol.parse_command(data, max_body_chars=settings.CHAT_MAX_BODY_CHARS)
            await self.spend(command.type)
        except ChatError as error:
            await self.answer_error(error, ref)
            return
        if ref is None or command.type not in self.reads:
            await self.answer(command, ref)
            return
        # A read with a `ref` runs alongside the commands after it (one read
        # at a time), so that a slow database read does not hold up this
        # socket's ping. Without a `ref` answers keep their order.
        read = self._read
        if read is not None and not read.done():
            await asyncio.wait([read])
        self._read = asyncio.ensure_future(self.answer(command, ref))

    async def answer(self, command: Command, ref: str | None) -> None:
        """Carry out `command` and send its reply or error."""
        try:
            reply = await _HANDLERS[command.type](self, command)
        except ChatError as error:
            await self.answer_error(error, ref)
            return
        except Exception:
            logger.exception("command failed for %s", self.username)
            await self.write_event(
                error_event(protocol.UNAVAILABLE, "the server failed; try again", ref)
            )
            return
        if reply is not None:
            await self.write_event(reply)

    async def answer_error(self, error: ChatError, ref: str | None) -> None:
        await self.write_event(error_event(error.code, error.message, ref))
        await self.count_error(error.code)

    async def command_send(self, command: Send) -> dict[str, Any]:
        return await self.send_message(command)

    async def command_join(self, command: Join) -> dict[str, Any]:
        return await self.join_group(command)

    async def command_leave(self, command: Leave) -> dict[str, Any]:
        return await self.leave_group(command)

    async def command_history(self, command: History) -> dict[str, Any]:
        messages, more = await read_for_socket(
            message_history_page,
            user=self.user,
            of=command.of,
            before=command.before,
            limit=command.limit,
            max_bytes=_reply_room(),
        )
        return _reply("history", command.ref, of=command.of.as_json(), messages=messages, more=more)

    async def command_sync(self, command: Sync) -> dict[str, Any]:
        messages, more = await read_for_socket(
            message_sync, user=self.user, since=command.since, max_bytes=_reply_room()
        )
        return _reply("sync", command.ref, messages=messages, more=more)

    async def command_who(self, command: Who) -> dict[str, Any]:
        names, more = names_page(await self.online_now(), after=command.after, limit=command.limit)
        names, paging = fit_page(names, more, max_bytes=_reply_room(), name=str)
        return _reply("who", command.ref, online=names, **paging)

    async def command_members(self, command: Members) -> dict[str, Any]:
        group, everyone, reads = await read_for_socket(
            group_members_read, user=self.user, name=command.group
        )
        names, more = names_page(everyone, after=command.after, limit=command.limit)
        online = set(await self.online_now())
        seen = await self.last_seen_of([name for name in names if name not in online])
        members = [
            {
                "user": name,
                "online": name in online,
                "last_seen": seen.get(name),
                "read_id": reads[name],
            }
            for name in names
        ]
        members, paging = fit_page(
            members, more, max_bytes=_reply_room(), name=lambda member: str(member["user"])
        )
        return _reply("members", command.ref, group=group, members=members, **paging)

    async def last_seen_of(self, names: list[str]) -> dict[str, str]:
        """When each of these offline users was last online, for those recorded."""
        try:
            return await current_worker().presence.last_seen(names)
        except Exception:
            logger.warning("presence store unavailable", exc_info=True)
            return {}

    # -- protocol 1.1 -------------------------------------------------------

    async def command_conversations(self, command: Conversations) -> dict[str, Any]:
        before = None
        if command.before is not None:
            before = decode_cursor(command.before)
            if before is None:
                raise ChatError(
                    protocol.BAD_COMMAND, "before must be the next cursor of a previous reply"
                )
        items, cursor = await read_for_socket(
            conversation_list, user=self.user, before=before, limit=command.limit
        )
        if cursor is None:
            return _reply("conversations", command.ref, items=items, more=False)
        return _reply(
            "conversations", command.ref, items=items, more=True, next=encode_cursor(cursor)
        )

    async def command_read(self, command: Read) -> dict[str, Any]:
        moved = await current_worker().move_read_position(
            ReadRequest(self.user, command.of, command.id)
        )
        conversation = moved.conversation
        event = {"type": "read", "of": conversation.address.as_json(), "id": moved.id}
        if moved.advanced:
            await self.hub.tell(to_user(self.user_id, event, exclude_connection=self.connection_id))
            receipt = {"type": "receipt", "user": self.username, "id": moved.id}
            if conversation.peer_id is not None and conversation.peer_id != self.user_id:
                receipt = {"type": "receipt", "of": {"user": self.username}, **receipt}
                await self.hub.tell(to_user(conversation.peer_id, receipt))
            elif conversation.group_id is not None:
                receipt = {"type": "receipt", "of": conversation.address.as_json(), **receipt}
                await self.hub.receipts.receipt(
                    reader_id=self.user_id, group_id=conversation.group_id, event=receipt
                )
        return _reply("read", command.ref, of=event["of"], id=moved.id)

    async def command_typing(self, command: Typing) -> None:
        to = command.to
        event: dict[str, Any] = {"type": "typing", "user": self.username}
        if to.kind == "user":
            if to.name != self.username:
                event["to"] = {"user": self.username}
                await self.hub.tell(to_username(to.name, event))
            return None
        known = current_worker().group_named.get(group_key(to.name))
        if known is None or known[0] not in self.hub.sockets.groups_of.get(self.user_id, ()):
            raise ChatError(protocol.NOT_MEMBER, f"you are not a member of group {to.name!r}")
        event["to"] = {"group": known[1]}
        await self.hub.tell(to_group(known[0], event, exclude_user=self.user_id))
        return None

    async def command_users(self, command: Users) -> dict[str, Any]:
        online = await self.hub.online()
        found = await read_for_socket(
            users_matching, prefix=command.q, limit=command.limit, online=online
        )
        seen = await self.last_seen_of([name for name, is_online in found if not is_online])
        users = [
            {"user": name, "online": is_online, "last_seen": None if is_online else seen.get(name)}
            for name, is_online in found
        ]
        return _reply("users", command.ref, users=users)

    async def command_groups(self, command: Groups) -> dict[str, Any]:
        online = await self.hub.online()
        found = await read_for_socket(
            groups_matching, user=self.user, prefix=command.q, limit=command.limit, online=online
        )
        groups = [
            {"group": g.name, "members": g.members, "online": g.online, "member": g.member}
            for g in found
        ]
        return _reply("groups", command.ref, groups=groups)

    async def command_ping(self, command: Ping) -> dict[str, Any]:
        return _reply("pong", command.ref)

    # -- protocol 1.2: changing messages -----------------------------------

    async def command_edit(self, command: Edit) -> dict[str, Any]:
        change = await database_sync_to_async(message_edit)(
            user=self.user, message_id=command.id, body=command.body
        )
        return await self._changed(change, command.ref)

    async def command_delete(self, command: Delete) -> dict[str, Any]:
        change = await database_sync_to_async(message_delete)(user=self.user, message_id=command.id)
        return await self._changed(change, command.ref)

    async def command_react(self, command: React) -> dict[str, Any]:
        change = await database_sync_to_async(message_react)(
            user=self.user, message_id=command.id, emoji=command.emoji, on=True
        )
        return await self._changed(change, command.ref)

    async def command_unreact(self, command: Unreact) -> dict[str, Any]:
        change = await database_sync_to_async(message_react)(
            user=self.user, message_id=command.id, emoji=command.emoji, on=False
        )
        return await self._changed(change, command.ref)

    async def _changed(self, change: Change, ref: str | None) -> dict[str, Any]:
        """Tell the message's audience (but this socket, which gets the reply), if it changed."""
        if change.changed:
            event = change_event(change)
            await self.hub.tell(
                to_message_audience(change, event, exclude_connection=self.connection_id)
            )
        return change_event(change, ref)

    async def command_changes(self, command: Changes) -> dict[str, Any]:
        messages, more = await read_for_socket(
            message_changes,
            user=self.user,
            since=command.since,
            limit=command.limit,
            max_bytes=_reply_room(),
        )
        if more and messages:
            last = messages[-1]["rev"]
            return _reply("changes", command.ref, messages=messages, more=True, next=last)
        return _reply("changes", command.ref, messages=messages, more=False)


# Each command type's handler: the only dispatch from a type to code.
_HANDLERS: dict[str, Callable[[ChatConsumer, Any], Awaitable[dict[str, Any] | None]]] = {
    Send.type: ChatConsumer.command_send,
    Join.type: ChatConsumer.command_join,
    Leave.type: ChatConsumer.command_leave,
    History.type: ChatConsumer.command_history,
    Sync.type: ChatConsumer.command_sync,
    Who.type: ChatConsumer.command_who,
    Members.type: ChatConsumer.command_members,
    Conversations.type: ChatConsumer.command_conversations,
    Read.type: ChatConsumer.command_read,
    Typing.type: ChatConsumer.command_typing,
    Users.type: ChatConsumer.command_users,
    Groups.type: ChatConsumer.command_groups,
    Ping.type: ChatConsumer.command_ping,
    Edit.type: ChatConsumer.command_edit,
    Delete.type: ChatConsumer.command_delete,
    React.type: ChatConsumer.command_react,
    Unreact.type: ChatConsumer.command_unreact,
    Changes.type: ChatConsumer.command_changes,
}


# Bytes of a history or sync reply that are not its messages: the type, `of`
# (an address), `ref` (64 characters, 6 bytes each when escaped), `more`.
_REPLY_ENVELOPE_BYTES = 1024


def _reply_room() -> int:
    """Bytes the messages of one reply may take.

    Within `CHAT_MAX_REPLY_BYTES` and `CHAT_MAX_BUFFERED_BYTES`; at least one
    message always goes (`fit_in_bytes`), so a client paging never gets stuck.
    """
    bound = min(settings.CHAT_MAX_REPLY_BYTES, settings.CHAT_MAX_BUFFERED_BYTES)
    return max(1, int(bound) - _REPLY_ENVELOPE_BYTES)


def _reply(kind: str, ref: str | None, **fields: Any) -> dict[str, Any]:
    event = {"type": kind, **fields}
    if ref is not None:
        event["ref"] = ref
    return event
