"""Live delivery: one hub per worker process fans events out to its sockets.

The Channels tutorial design gives every socket its own layer channel and
adds it to layer groups, so a message to 200 people costs 200 Redis writes,
200 reads and 200 consumer dispatches. Here the *process* is the unit:

- Each worker process owns one layer channel (`chatworker.…`) and adds it to
  the layer groups its sockets need: `chat.all` (broadcasts, presence),
  `chat.user.<id>` for each locally connected user, `chat.group.<id>` for each
  chat group with a locally connected member.
- A message is serialised to JSON once, then `group_send` puts it once on
  each worker channel that has an interested socket; messages stored together
  for one audience travel as one layer message and one `batch` frame.
- The worker's receive loop takes it off the layer once and writes the same
  text to every local socket of the audience, found in in-memory indexes. The
  worker that stored it has already written it to its own sockets, and drops
  the copy the layer brings back.

The same path runs on the in-memory layer (one process) and on Redis (many).
Presence and joined/left notices are held up to `CHAT_NOTICE_DELAY` and sent
to each socket as one `batch`, so a burst of logins does not cost one frame
per pair of users; the presence changes of sockets opening or closing together
also leave the worker as one layer message (`chat.notices`).

The hub also keeps the worker's presence honest: it heartbeats, refreshes its
layer group memberships (so a killed worker's channel expires from them), and
reaps workers that stopped heartbeating.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import logging
import os
import socket
import sys
import uuid
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol

from channels.db import database_sync_to_async
from channels.layers import BaseChannelLayer, get_channel_layer
from django.conf import settings

from chat import presence as presence_module
from chat.cancellation import cancel_and_wait, raise_if_cancelled
from chat.coalesce import Coalescer
from chat.delivery.messages import (
    LAYER_ALL,
    Audience,
    Deliver,
    LayerMessage,
    MemberChange,
    Notice,
    Notices,
    SessionEnd,
    from_layer,
    group_layer_group,
    presence_notice,
    to_layer,
    user_layer_group,
)
from chat.layers import group_add_many
from chat.messaging import StoredMessage
from chat.protocol import CLOSE_POLICY_VIOLATION, CLOSE_SERVICE_RESTART, encode

logger = logging.getLogger(__name__)

# Layer calls in flight at once per worker; well under channels_redis's pool size.
_LAYER_CONCURRENCY = 32

# Most messages carried by one layer message and one frame. Bodies are bounded
# (CHAT_MAX_BODY_CHARS), so this bounds the frame; a client gets at most this
# many messages to unwrap at once.
MAX_RUN = 50

# Seconds a shutting-down worker waits for its sockets to close and its
# presence to be dropped before the process exits anyway.
_STOP_TIMEOUT = 5.0


def session_digest(session_key: str) -> str:
    """A session key as it travels between workers (never the key itself)."""
    return hashlib.sha256(session_key.encode()).hexdigest()[:32]


class Connection(Protocol):
    """What the hub needs of a socket; the consumers implement it."""

    connection_id: str
    user_id: int
    username: str
    session_digest: str

    async def write(self, text: str) -> None:
        """Send one frame of text; must not block on the network."""

    def write_now(self, text: str) -> bool:
        """`write` without a coroutine when nothing needs awaiting; False if it did nothing.

        A fan-out calls this for every member, so a coroutine per socket is
        paid at every message (200 frames at rest: 2.5 → 2.3 ms; the rest is
        the kernel's `send`).
        """

    async def close_with(self, code: int) -> None:
        """Close the socket with this code."""


class Hub:
    """The worker's single subscriber to the channel layer."""

    def __init__(self, layer: BaseChannelLayer) -> None:
        self.layer = layer
        self.presence = presence_module.get_presence_store()
        self.worker_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.channel = ""
        self.by_user: dict[int, set[Connection]] = {}
        # Local view of memberships, for the users connected here only.
        self.groups_of: dict[int, set[int]] = {}
        self.members_here: dict[int, set[int]] = {}
        self._subscribed: set[str] = set()
        # Notices waiting for the flush, each with the sockets it goes to
        # (None: every socket here but perhaps its own user's).
        self._notices: list[tuple[Notice, list[Connection] | None]] = []
        self._flush_handle: asyncio.TimerHandle | None = None
        self._layer_failed = False
        # channels_redis's connection pool refuses calls past its size (100)
        # with MaxConnectionsError; a burst of connecting sockets would then
        # look like a layer outage and get every socket closed with 1012.
        self._layer_slots = asyncio.Semaphore(_LAYER_CONCURRENCY)
        self._stopped = False
        self._tasks: list[asyncio.Task[None]] = []
        self._online_next: asyncio.Future[frozenset[str]] | None = None
        self._online_sorted: tuple[frozenset[str], tuple[str, ...]] | None = None
        # The admin's mirror of open sockets, written in batches off the
        # connect path: id -> (user id, endpoint) to record, ids to delete.
        self._mirror_opened: dict[str, tuple[int, str]] = {}
        self._mirror_closed: set[str] = set()
        self._mirror_writer: asyncio.Task[None] | None = None
        self._online_reader: asyncio.Task[None] | None = None
        self._started = asyncio.get_running_loop().create_future()
        # Presence changes of sockets opening or closing together travel in
        # one layer message: one `group_send` (three Redis round trips) per
        # burst instead of one per socket.
        self._announce: Coalescer[Notice, None] = Coalescer(self._publish_notices)
        # Layer groups that sockets opening together need are joined in one
        # Redis pipeline, and recorded for the reaper in one call.
        self._joining: Coalescer[str, None] = Coalescer(self._join_layer_groups)
        # Their presence is recorded in one trip to the store, and so is that
        # of sockets closing together: (connection id, username) -> transition.
        self._connecting: Coalescer[tuple[str, str], bool] = Coalescer(
            lambda sockets: self.presence.connect_many(worker=self.worker_id, sockets=sockets)
        )
        self._disconnecting: Coalescer[tuple[str, str], bool] = Coalescer(
            lambda sockets: self.presence.disconnect_many(worker=self.worker_id, sockets=sockets)
        )

    # -- life cycle ---------------------------------------------------------

    async def start(self) -> None:
        try:
            self.channel = await self.layer.new_channel("chatworker")
            await self._heartbeat()
            self._stop_with_server()
            self._tasks = [
                asyncio.create_task(self._receive_loop(), name="chat-hub-receive"),
                asyncio.create_task(self._maintenance_loop(), name="chat-hub-maintenance"),
            ]
        except BaseException as exc:
            self._started.set_exception(exc)
            raise
        self._started.set_result(None)

    async def stop(self, *, close_code: int = CLOSE_SERVICE_RESTART) -> None:
        """Close every local socket and drop this worker's presence at once."""
        if self._stopped:
            return
        self._stopped = True
        for task in self._tasks:
            task.cancel()
        for connections in list(self.by_user.values()):
            for conn in list(connections):
                with contextlib.suppress(Exception):
                    await conn.close_with(close_code)
        offline = await self.presence.drop_worker(worker=self.worker_id)
        for username in offline:
            await self.publish(LAYER_ALL, presence_notice(username, online=False))
        for layer_group in list(self._subscribed):
            with contextlib.suppress(Exception):
                async with self._layer_slots:
                    await self.layer.group_discard(layer_group, self.channel)
        self._subscribed.clear()
        if self._mirror_writer is not None:
            with contextlib.suppress(Exception):
                await self._mirror_writer
        self._mirror_opened.clear()
        self._mirror_closed.clear()
        await database_sync_to_async(presence_module.connections_forget_workers)([self.worker_id])
        await cancel_and_wait(self._tasks, within=2.0)
        logger.info("worker %s stopped: sockets closed, presence dropped", self.worker_id)

    def _stop_with_server(self) -> None:
        """Run `stop` when daphne shuts down (SIGTERM, SIGINT), before the loop ends.

        Daphne runs Twisted's asyncio reactor, whose signal handlers start the
        reactor's shutdown; a "before shutdown" trigger that returns a Deferred
        holds the shutdown until it fires, so sockets get their 1012 close and
        other workers hear the presence change right away. Not under daphne
        (tests, other servers) nothing is installed.
        """
        reactor = sys.modules.get("twisted.internet.reactor")
        if reactor is None or not getattr(reactor, "running", False):
            return
        if getattr(reactor, "_asyncioEventloop", None) is not asyncio.get_running_loop():
            return
        from twisted.internet import defer

        def on_shutdown() -> defer.Deferred[None]:
            # A fresh context: the trigger may fire inside a callback whose
            # context says asgiref's single sync thread is in use, and `stop`
            # needs that thread for the database.
            stopping = asyncio.get_running_loop().create_task(
                asyncio.wait_for(self.stop(), _STOP_TIMEOUT), context=contextvars.Context()
            )
            deferred = defer.Deferred.fromFuture(stopping)
            deferred.addErrback(lambda failure: logger.error("stopping failed: %s", failure))
            return deferred

        reactor.addSystemEventTrigger("before", "shutdown", on_shutdown)

    def connections(self) -> Iterator[Connection]:
        for connections in self.by_user.values():
            yield from connections

    # -- sockets coming and going ------------------------------------------

    async def attach(self, conn: Connection, *, group_ids: Iterable[int], endpoint: str) -> None:
        """Register an open socket: indexes, layer groups, presence, admin mirror."""
        if self._stopped:
            await conn.close_with(CLOSE_SERVICE_RESTART)
            raise RuntimeError("this worker is shutting down")
        first_here = conn.user_id not in self.by_user
        self.by_user.setdefault(conn.user_id, set()).add(conn)
        wanted = [LAYER_ALL, user_layer_group(conn.user_id)]
        if first_here:
            self.groups_of[conn.user_id] = set(group_ids)
        for group_id in self.groups_of[conn.user_id]:
            self.members_here.setdefault(group_id, set()).add(conn.user_id)
            wanted.append(group_layer_group(group_id))
        try:
            await self._subscribe(wanted)
            self._mirror_opened[conn.connection_id] = (conn.user_id, endpoint)
            self._write_mirror()
            if await self._connecting((conn.connection_id, conn.username)):
                await self._announce(presence_notice(conn.username, online=True))
        except BaseException:
            # The socket will be closed (Redis down, say): do not keep it in
            # the indexes, since its consumer will not detach it.
            with contextlib.suppress(Exception):
                await self.detach(conn)
            raise

    async def detach(self, conn: Connection) -> None:
        """Forget a closed socket; announce the user offline if it was the last."""
        connections = self.by_user.get(conn.user_id)
        if connections is None or conn not in connections:
            return
        connections.discard(conn)
        if not connections:
            del self.by_user[conn.user_id]
            for group_id in self.groups_of.pop(conn.user_id, set()):
                self._forget_member(group_id, conn.user_id)
            await self._unsubscribe_unused()
        try:
            if await self._disconnecting((conn.connection_id, conn.username)):
                await self._announce(presence_notice(conn.username, online=False))
        finally:
            if self._mirror_opened.pop(conn.connection_id, None) is None:
                self._mirror_closed.add(conn.connection_id)
            self._write_mirror()

    # -- who is online ------------------------------------------------------

    async def online(self) -> frozenset[str]:
        """The users online everywhere, read after this call began.

        Every `hello` lists who is online: read per socket, a burst of N
        connections would read the whole set N times (O(N²) in all). Calls
        share a read instead: at most one runs, and the next one serves
        every call that arrived while it ran, so no caller gets a state
        older than its own call (its socket is attached by then, so later
        changes reach it as notices).
        """
        if self._online_next is None:
            self._online_next = asyncio.get_running_loop().create_future()
            if self._online_reader is None:
                self._online_reader = asyncio.create_task(
                    self._read_online(), name="chat-hub-online"
                )
        # Shielded: one caller giving up must not cancel the others' read.
        return await asyncio.shield(self._online_next)

    async def online_names(self) -> tuple[str, ...]:
        """`online()` sorted by name, sorted once per read.

        Every greeting of a burst shares a read, and sorting 2,000 names for
        each of them was 5% of the worker's CPU while 2,000 sockets opened.
        """
        online = await self.online()
        cached = self._online_sorted
        if cached is None or cached[0] is not online:
            cached = self._online_sorted = (online, tuple(sorted(online)))
        return cached[1]

    async def _read_online(self) -> None:
        try:
            while self._online_next is not None:
                waiting, self._online_next = self._online_next, None
                try:
                    online = frozenset(await self.presence.online())
                except asyncio.CancelledError:
                    waiting.cancel()
                    raise
                except Exception as exc:
                    waiting.set_exception(exc)
                    waiting.exception()  # retrieved here; callers may all be gone
                else:
                    waiting.set_result(online)
        finally:
            # Normally nothing waits here; if this task was cancelled, nobody
            # would read for those who arrived meanwhile.
            self._online_reader = None
            unread, self._online_next = self._online_next, None
            if unread is not None:
                unread.cancel()

    # -- the admin's mirror of open sockets -----------------------------------

    def _write_mirror(self) -> None:
        """Start writing pending mirror changes unless a write is running.

        One database call per batch, not one per socket opened or closed: the
        connect path of a burst no longer queues behind these writes on the
        single database thread.
        """
        if self._mirror_writer is None and (self._mirror_opened or self._mirror_closed):
            self._mirror_writer = asyncio.create_task(
                self._mirror_loop(), name="chat-hub-mirror", context=contextvars.Context()
            )

    async def _mirror_loop(self) -> None:
        try:
            while self._mirror_opened or self._mirror_closed:
                opened, self._mirror_opened = self._mirror_opened, {}
                closed, self._mirror_closed = self._mirror_closed, set()
                try:
                    await database_sync_to_async(presence_module.connections_mirror)(
                        worker=self.worker_id, opened=opened, closed=closed
                    )
                except Exception:
                    # Kept for the maintenance loop's next try (a socket that
                    # closed meanwhile is no longer to be recorded).
                    logger.warning("could not update the admin's connection list", exc_info=True)
                    for cid, row in opened.items():
                        if cid in self._mirror_closed:
                            self._mirror_closed.discard(cid)
                        else:
                            self._mirror_opened.setdefault(cid, row)
                    self._mirror_closed.update(closed)
                    return
        finally:
            self._mirror_writer = None

    # -- publishing ---------------------------------------------------------

    async def publish(
        self, layer_group: str, message: LayerMessage, *, local_fallback: bool = True
    ) -> bool:
        """`group_send` that never raises; during a layer outage, deliver locally."""
        try:
            async with self._layer_slots:
                await self.layer.group_send(layer_group, to_layer(message))
        except Exception:
            if not self._layer_failed:
                logger.exception("channel layer failed; delivering locally until it is back")
            self._layer_failed = True
            if local_fallback:
                await self._dispatch(message)
            return False
        return True

    async def _publish_notices(self, notices: list[Notice]) -> list[None]:
        """Publish notices to every worker, in order, as one layer message."""
        if len(notices) == 1:
            await self.publish(LAYER_ALL, notices[0])
        else:
            await self.publish(LAYER_ALL, Notices(tuple(notices)))
        return [None] * len(notices)

    async def deliver_messages(self, messages: Sequence[StoredMessage]) -> None:
        """Send stored messages, in the order given, to their audiences.

        Consecutive messages to the same audience travel together: one
        `group_send` per layer group, one layer message for the receiving
        worker to take, and one `batch` frame per socket (docs/protocol.md:
        events already waiting for a connection may share a frame). Under
        load the send queue hands over everything stored meanwhile, so these
        per-message costs shrink as the load grows; a message alone goes as
        it always did. Runs keep the order, since each is published after the
        one before it.

        This worker's own sockets get each run first, straight from here: the
        trip through Redis and back (three round trips to publish, one to
        receive) is latency they need not wait for. The copy the layer brings
        back carries this worker's channel as its origin and is dropped.
        """
        for run in _audience_runs(messages):
            texts = [encode(stored.event) for stored in run]
            text = texts[0] if len(texts) == 1 else _batch_text(texts)
            first, origin = run[0], self.channel
            if first.everyone:
                sends = [(LAYER_ALL, Deliver(text, Audience(everyone=True), origin))]
            elif first.group_id is not None:
                group_id = first.group_id
                sends = [
                    (group_layer_group(group_id), Deliver(text, Audience(group=group_id), origin))
                ]
            else:
                sends = [
                    (user_layer_group(u), Deliver(text, Audience(users=(u,)), origin))
                    for u in first.user_ids
                ]
            for layer_group, message in sends:
                await self.chat_deliver(message)
                await self.publish(layer_group, message, local_fallback=False)

    async def note_membership(self, *, user_id: int, group_id: int, joined: bool) -> None:
        """Update this worker's membership index at once (before the reply)."""
        await self._apply_member_change(
            MemberChange(user_id=user_id, group_id=group_id, joined=joined)
        )

    async def announce_membership(
        self,
        *,
        event: dict[str, Any],
        user_id: int,
        group_id: int,
        joined: bool,
        exclude_connection: str,
    ) -> None:
        """Tell the group's online members and the user's other sockets."""
        await self.publish(
            group_layer_group(group_id),
            Notice(event, Audience(group=group_id, exclude_user=user_id)),
        )
        await self.publish(
            user_layer_group(user_id),
            Notice(
                event,
                Audience(users=(user_id,), exclude_connection=exclude_connection),
                member_change=MemberChange(user_id=user_id, group_id=group_id, joined=joined),
            ),
        )

    # -- receiving ------------------------------------------------------------

    async def _receive_loop(self) -> None:
        backoff = 0.1
        while True:
            try:
                message = await self.layer.receive(self.channel)
            except asyncio.CancelledError:
                raise
            except Exception:
                # redis-py can turn the cancellation of a blocked read into a
                # ConnectionError: retrying then would never let the loop end.
                raise_if_cancelled()
                if not self._layer_failed:
                    logger.exception("channel layer receive failed; retrying")
                self._layer_failed = True
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            backoff = 0.1
            # What this worker published itself was delivered here already.
            if message.get("origin") != self.channel:
                try:
                    await self._dispatch(from_layer(message))
                except Exception:
                    logger.exception("failed to dispatch %s", message.get("type"))
            raise_if_cancelled()

    async def _dispatch(self, message: LayerMessage) -> None:
        """Hand `message` to the method its type names, as Channels does for consumers."""
        await getattr(self, message.type.replace(".", "_"))(message)

    async def chat_deliver(self, message: Deliver) -> None:
        text = message.text
        for conn in self._targets(message.audience):
            if not _written_now(conn, text):
                await _write(conn, text)

    async def chat_notice(self, notice: Notice) -> None:
        if notice.member_change is not None:
            await self._apply_member_change(notice.member_change)
        self._queue_notice(notice)

    async def chat_notices(self, message: Notices) -> None:
        for notice in message.notices:
            await self.chat_notice(notice)

    async def chat_session_end(self, message: SessionEnd) -> None:
        for conn in list(self.by_user.get(message.user_id, ())):
            if conn.session_digest == message.session:
                await conn.close_with(CLOSE_POLICY_VIOLATION)

    def _targets(self, audience: Audience) -> list[Connection]:
        if audience.everyone:
            candidates = list(self.connections())
        elif audience.users:
            candidates = [c for u in audience.users for c in self.by_user.get(u, ())]
        elif audience.group is not None:
            members = self.members_here.get(audience.group, ())
            candidates = [c for u in list(members) for c in self.by_user.get(u, ())]
        else:
            candidates = []
        if not audience.excludes:
            return candidates  # every message; only notices exclude anyone
        exclude_user = audience.exclude_user
        exclude_username = audience.exclude_username
        exclude_connection = audience.exclude_connection
        return [
            conn
            for conn in candidates
            if conn.user_id != exclude_user
            and conn.username != exclude_username
            and conn.connection_id != exclude_connection
        ]

    # -- notices (presence, joined, left), batched ---------------------------

    def _queue_notice(self, notice: Notice) -> None:
        # Its audience is who is a member *now*: someone who joins the group
        # before the flush must not hear of a join that preceded theirs (their
        # `join` reply already lists that member).
        targets = None if notice.audience.shared else self._targets(notice.audience)
        self._notices.append((notice, targets))
        if self._flush_handle is None:
            delay = settings.CHAT_NOTICE_DELAY
            loop = asyncio.get_running_loop()
            self._flush_handle = loop.call_later(
                delay, lambda: asyncio.ensure_future(self._flush_notices())
            )

    async def _flush_notices(self) -> None:
        self._flush_handle = None
        pending, self._notices = _coalesce_presence(self._notices), []
        if not pending:
            return
        # Presence goes to every socket here but the user's own: such notices
        # are `shared` by most sockets, and one socket in a burst of opening
        # users misses just its own. Finding each notice's targets instead
        # cost notices x sockets steps (10% of the worker's CPU while 2,000
        # sockets opened); the others (joined, left) are few.
        shared: list[int] = []
        own: dict[str, set[int]] = {}
        targeted: dict[Connection, list[int]] = {}
        notices = [notice for notice, _ in pending]
        for index, (notice, targets) in enumerate(pending):
            if targets is None:
                shared.append(index)
                username = notice.audience.exclude_username
                if username is not None:
                    own.setdefault(username, set()).add(index)
            else:
                for conn in targets:
                    if conn in self.by_user.get(conn.user_id, ()):
                        targeted.setdefault(conn, []).append(index)
        receivers = list(self.connections()) if shared else list(targeted)
        # Most sockets receive the same set of notices: it is encoded once.
        # The other sets (a user in the burst misses just their own) are kept
        # only while the sockets next in line want the same one: a user's
        # sockets come one after another. Keeping them all until the end
        # meant, in a burst of n users, n texts of n notices alive at once,
        # which left the worker's RSS 2-4 KiB per idle socket higher after W3.
        shared_text: str | None = None
        last: tuple[tuple[int, ...], str] | None = None
        for conn in receivers:
            indexes = shared
            skipped = own.get(conn.username)
            if skipped:
                indexes = [i for i in shared if i not in skipped]
            more = targeted.get(conn)
            if more:
                indexes = sorted([*indexes, *more])
            if not indexes:
                continue
            if indexes is shared:
                if shared_text is None:
                    shared_text = _notices_text(notices, indexes)
                text = shared_text
            else:
                key = tuple(indexes)
                if last is None or last[0] != key:
                    last = (key, _notices_text(notices, indexes))
                text = last[1]
            if not _written_now(conn, text):
                await _write(conn, text)

    # -- memberships and layer groups --------------------------------------

    async def _apply_member_change(self, change: MemberChange) -> None:
        user_id, group_id = change.user_id, change.group_id
        groups = self.groups_of.get(user_id)
        if groups is None:
            return
        if change.joined:
            groups.add(group_id)
            self.members_here.setdefault(group_id, set()).add(user_id)
            await self._subscribe([group_layer_group(group_id)])
        else:
            groups.discard(group_id)
            self._forget_member(group_id, user_id)
            await self._unsubscribe_unused()

    def _forget_member(self, group_id: int, user_id: int) -> None:
        members = self.members_here.get(group_id)
        if members is not None:
            members.discard(user_id)
            if not members:
                del self.members_here[group_id]

    def _wanted_groups(self) -> set[str]:
        wanted = {user_layer_group(u) for u in self.by_user}
        wanted.update(group_layer_group(g) for g in self.members_here)
        if self.by_user:
            wanted.add(LAYER_ALL)
        return wanted

    async def _subscribe(self, layer_groups: Iterable[str]) -> None:
        added = [g for g in dict.fromkeys(layer_groups) if g not in self._subscribed]
        self._subscribed.update(added)
        if len(added) == 1:
            await self._joining(added[0])
        elif added:
            await asyncio.gather(*(self._joining(layer_group) for layer_group in added))

    async def _join_layer_groups(self, layer_groups: list[str]) -> list[None]:
        """Add this worker's channel to the groups and record them, or note the failure.

        A group that could not be joined stays in `_subscribed`: the
        maintenance loop joins it once the layer is back.
        """
        try:
            async with self._layer_slots:
                await group_add_many(self.layer, layer_groups, self.channel)
        except Exception:
            self._layer_failed = True
            logger.warning("could not join %d layer groups", len(layer_groups), exc_info=True)
        # Whoever reaps this worker if it is killed removes its channel from
        # these groups (the heartbeat records the rest).
        try:
            await self.presence.note_layer_groups(worker=self.worker_id, layer_groups=layer_groups)
        except Exception:
            self._layer_failed = True
            logger.warning("could not record %d layer groups", len(layer_groups), exc_info=True)
        return [None] * len(layer_groups)

    async def _unsubscribe_unused(self) -> None:
        unused = self._subscribed - self._wanted_groups()
        for layer_group in unused:
            self._subscribed.discard(layer_group)
            with contextlib.suppress(Exception):
                async with self._layer_slots:
                    await self.layer.group_discard(layer_group, self.channel)
            # A socket may have needed it again while the discard was in flight.
            if layer_group in self._wanted_groups() and layer_group not in self._subscribed:
                await self._subscribe([layer_group])

    # -- heartbeat, refresh, reaping --------------------------------------

    async def _maintenance_loop(self) -> None:
        interval = min(settings.CHAT_PRESENCE_TIMEOUT / 3, 10.0)
        while True:
            await asyncio.sleep(interval)
            try:
                await self._maintain()
            except asyncio.CancelledError:
                raise
            except Exception:
                raise_if_cancelled()
                self._layer_failed = True
                logger.warning("presence maintenance failed; retrying", exc_info=True)

    async def _heartbeat(self) -> bool:
        """Heartbeat, recording the layer channel and groups (for whoever reaps this worker)."""
        return await self.presence.heartbeat(
            worker=self.worker_id, channel=self.channel, layer_groups=list(self._subscribed)
        )

    async def _maintain(self) -> None:
        self._write_mirror()
        known = await self._heartbeat()
        if self._layer_failed or (not known and self.by_user):
            # Redis answers again, but live messages may have been dropped while
            # it was down, and a Redis that restarted empty (or other workers
            # that reaped this one while it was cut off) no longer lists these
            # sockets: close them so clients reconnect, `sync` what they missed
            # and are announced afresh.
            self._layer_failed = False
            await self._reset_connections()
        async with self._layer_slots:
            await group_add_many(self.layer, list(self._subscribed), self.channel)
        reaped = await self.presence.reap(max_silence=settings.CHAT_PRESENCE_TIMEOUT)
        if reaped.workers:
            logger.warning("reaped dead workers %s", ", ".join(reaped.workers))
            await database_sync_to_async(presence_module.connections_forget_workers)(reaped.workers)
        for username in reaped.offline:
            await self.publish(LAYER_ALL, presence_notice(username, online=False))
        # channels_redis would drop a dead channel from a group only after
        # `group_expiry`; meanwhile every group_send would still queue for it.
        for channel, layer_groups in reaped.layer_memberships:
            for layer_group in layer_groups:
                async with self._layer_slots:
                    await self.layer.group_discard(layer_group, channel)

    async def _reset_connections(self) -> None:
        """Close every local socket with 1012 and forget it at once."""
        connections = list(self.connections())
        if connections:
            logger.warning(
                "channel layer is back; closing %d sockets so clients reconnect and sync",
                len(connections),
            )
        for conn in connections:
            with contextlib.suppress(Exception):
                await conn.close_with(CLOSE_SERVICE_RESTART)
            # Detach now rather than when the socket's disconnect arrives, so
            # the next heartbeat does not count these sockets as still open.
            with contextlib.suppress(Exception):
                await self.detach(conn)


def _written_now(conn: Connection, text: str) -> bool:
    """`conn.write_now`, with the frame dropped if the socket fails: False when `write` must.

    Synchronous, so that a fan-out to every socket does not run a coroutine
    per socket; `_write` is the slow path, for sockets that must wait.
    """
    try:
        return conn.write_now(text)
    except Exception:
        logger.debug("dropping a frame for connection %s", conn.connection_id)
        return True


async def _write(conn: Connection, text: str) -> None:
    try:
        await conn.write(text)
    except Exception:
        logger.debug("dropping a frame for closed connection %s", conn.connection_id)


def _audience(stored: StoredMessage) -> tuple[Any, ...]:
    if stored.everyone:
        return ("all",)
    if stored.group_id is not None:
        return ("group", stored.group_id)
    return ("users", stored.user_ids)


def _audience_runs(messages: Sequence[StoredMessage]) -> Iterator[list[StoredMessage]]:
    """Consecutive messages to the same audience, at most `MAX_RUN` together."""
    run: list[StoredMessage] = []
    for stored in messages:
        if run and (len(run) == MAX_RUN or _audience(run[0]) != _audience(stored)):
            yield run
            run = []
        run.append(stored)
    if run:
        yield run


def _notices_text(notices: list[Notice], indexes: list[int]) -> str:
    """The frame text of these notices: the event alone, or a `batch` of them."""
    events = [notices[i].event for i in indexes]
    if len(events) == 1:
        return encode(events[0])
    return encode({"type": "batch", "events": events})


def _batch_text(texts: list[str]) -> str:
    """A `batch` event of already encoded events, without encoding them again."""
    return '{"type":"batch","events":[' + ",".join(texts) + "]}"


def _coalesce_presence(
    pending: list[tuple[Notice, list[Connection] | None]],
) -> list[tuple[Notice, list[Connection] | None]]:
    """Drop presence flaps: an even number of transitions in a window cancels out."""
    counts: dict[str, int] = {}
    last_index: dict[str, int] = {}
    for index, (notice, _) in enumerate(pending):
        if notice.presence is not None:
            counts[notice.presence] = counts.get(notice.presence, 0) + 1
            last_index[notice.presence] = index
    return [
        entry
        for index, entry in enumerate(pending)
        if (user := entry[0].presence) is None
        or (counts[user] % 2 == 1 and last_index[user] == index)
    ]


_hubs: dict[asyncio.AbstractEventLoop, Hub] = {}


async def get_hub() -> Hub:
    """The running loop's hub, started on first use."""
    loop = asyncio.get_running_loop()
    hub = _hubs.get(loop)
    if hub is None or (hub._started.done() and hub._started.exception() is not None):
        layer = get_channel_layer()
        if layer is None:
            raise RuntimeError("CHANNEL_LAYERS must configure a default layer")
        hub = _hubs[loop] = Hub(layer)
        for other in [other for other in _hubs if other.is_closed()]:
            del _hubs[other]
        await hub.start()
    else:
        await asyncio.shield(hub._started)
    return hub
