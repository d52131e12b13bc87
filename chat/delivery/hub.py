"""The hub: each worker's one subscriber to the channel layer, coordinating its parts.

The Channels tutorial design gives every socket its own layer channel and
adds it to layer groups, so a message to 200 people costs 200 Redis writes,
200 reads and 200 consumer dispatches. Here the *process* is the unit: the
worker's one channel (`WorkerChannel`) is in the layer groups its sockets
need (`LayerSubscriptions`); a message crosses the layer once per worker and
is written to every local socket of its audience, found in memory
(`SocketIndex`). The worker that stored a message writes it to its own
sockets first and drops the copy the layer brings back.

The hub's own code is the order of things: what happens when a socket opens
or closes, when messages were stored, and when the worker stops. The rest
lives in its parts:

- `messages`: what travels on the layer, typed;
- `handlers`: what a worker does with each layer message, by its `type`;
- `sockets`: the local sockets by user and group;
- `subscriptions`: the channel's layer groups;
- `online`: presence transitions recorded, and the shared read of who is online;
- `notices`: presence and joined/left held and sent as one `batch`;
- `mirror`: the admin's list of open sockets;
- `maintenance`: heartbeat, reaping and outage recovery;
- `publishing`: stored messages and events into addressed layer messages;
- `draining`: a stopping worker's sockets closed over a window;
- `relay`: without Redis, layer messages written by other processes.

A new per-worker part: a class in a module of its own here, built in
`Hub.__init__` from what it needs (not from the hub), started in `start` and
stopped in `stop` if it runs a task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Container, Iterable, Sequence
from typing import Any

from channels.db import database_sync_to_async
from channels.layers import BaseChannelLayer, InMemoryChannelLayer
from django.conf import settings

from chat.cancellation import cancel_and_wait
from chat.coalesce import Coalescer
from chat.delivery.channel import WorkerChannel
from chat.delivery.draining import close_spread
from chat.delivery.handlers import LayerHandlers
from chat.delivery.maintenance import Maintenance
from chat.delivery.messages import (
    LAYER_ALL,
    LayerMessage,
    MemberChange,
    Notice,
    Notices,
    Renamed,
    presence_notice,
    user_layer_group,
)
from chat.delivery.mirror import ConnectionMirror
from chat.delivery.notices import NoticeBatcher
from chat.delivery.online import OnlineReader, PresenceRecorder
from chat.delivery.publishing import (
    Addressed,
    deliveries,
    membership_notice_pair,
    to_everyone,
    to_group,
    to_message_audience,
    to_user,
    to_username,
)
from chat.delivery.receipts import ReceiptThrottle
from chat.delivery.relay import RelayReader
from chat.delivery.sockets import LocalSocket, SocketIndex
from chat.delivery.subscriptions import LayerSubscriptions
from chat.message_changes import Change
from chat.messaging import StoredMessage
from chat.presence import PresenceStore
from chat.profiles import names_of
from chat.protocol import CLOSE_SERVICE_RESTART
from chat.registry import WorkerRegistry
from chat.upstream.twisted import run_before_reactor_shutdown

logger = logging.getLogger(__name__)

# Seconds a shutting-down worker waits, beyond CHAT_RESTART_SPREAD, for its
# last sockets to close and its presence to be dropped before it exits anyway.
_STOP_TIMEOUT = 5.0


class Hub:
    """Opens and closes sockets, publishes what was stored, and handles layer messages."""

    def __init__(
        self, layer: BaseChannelLayer, *, presence: PresenceStore, registry: WorkerRegistry
    ) -> None:
        self.presence = presence
        self.registry = registry
        self.worker_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.channel = WorkerChannel(layer)
        self.sockets = SocketIndex()
        self.subscriptions = LayerSubscriptions(
            self.channel,
            registry=self.registry,
            worker_id=self.worker_id,
            wants=self.sockets.wants,
        )
        self.recorder = PresenceRecorder(self.presence, worker_id=self.worker_id)
        self.online_reader = OnlineReader(self.presence)
        self.notices = NoticeBatcher(self.sockets)
        self.handlers = LayerHandlers(
            self.sockets, subscriptions=self.subscriptions, notices=self.notices
        )
        self.mirror = ConnectionMirror(self.worker_id)
        self.receipts = ReceiptThrottle(
            lambda group_id, event, reader: self.tell(
                to_group(group_id, event, exclude_user=reader)
            )
        )
        self.maintenance = Maintenance(
            presence=self.presence,
            registry=self.registry,
            worker_id=self.worker_id,
            channel=self.channel,
            subscriptions=self.subscriptions,
            mirror=self.mirror,
            has_sockets=lambda: bool(self.sockets),
            reset_sockets=self._reset_sockets,
            announce_offline=self._announce_offline,
        )
        # Other processes' layers cannot reach an in-memory one.
        in_memory = isinstance(layer, InMemoryChannelLayer)
        self.relay = RelayReader(self.handlers.dispatch) if in_memory else None
        # Notices (presence, joined, left) of sockets opening, closing or
        # joining together travel in one layer message to every worker: one
        # `group_send` (four Redis round trips) per burst instead of one or two
        # per socket.
        self.announcing: Coalescer[Notice, None] = Coalescer(self._publish_notices)
        self.started = asyncio.get_running_loop().create_future()
        self._stopped = False
        self._tasks: list[asyncio.Task[None]] = []

    # -- life cycle ---------------------------------------------------------

    async def start(self) -> None:
        try:
            await self.channel.open()
            await self.maintenance.start()
            spread = settings.CHAT_RESTART_SPREAD
            run_before_reactor_shutdown(
                lambda: asyncio.wait_for(self.stop(spread=spread), spread + _STOP_TIMEOUT)
            )
            self._tasks = [
                asyncio.create_task(
                    self.channel.receive_loop(self.handlers.dispatch), name="chat-hub-receive"
                ),
                asyncio.create_task(self.maintenance.run(), name="chat-hub-maintenance"),
            ]
            if self.relay is not None:
                self._tasks.append(asyncio.create_task(self.relay.run(), name="chat-hub-relay"))
        except BaseException as exc:
            self.started.set_exception(exc)
            raise
        self.started.set_result(None)

    @property
    def stopping(self) -> bool:
        """Whether `stop` has begun: new sockets are refused from then on."""
        return self._stopped

    async def stop(self, *, close_code: int = CLOSE_SERVICE_RESTART, spread: float = 0.0) -> None:
        """Close the local sockets over `spread` seconds (chat.delivery.draining), then
        drop this worker's presence. Delivery and heartbeats go on until the last is closed."""
        if self._stopped:
            return
        self._stopped = True
        await close_spread(list(self.sockets), spread, lambda conn: conn.close_with(close_code))
        for task in self._tasks:
            task.cancel()
        await self._announce_offline(await self.presence.drop_worker(worker=self.worker_id))
        await self.registry.forget(worker=self.worker_id)
        await self.subscriptions.unsubscribe_all()
        await self.mirror.stop()
        await cancel_and_wait(self._tasks, within=2.0)
        logger.info("worker %s stopped: sockets closed, presence dropped", self.worker_id)

    # -- sockets coming and going ------------------------------------------

    async def attach(
        self,
        conn: LocalSocket,
        *,
        group_ids: Iterable[int],
        endpoint: str,
        name: str | None = None,
    ) -> None:
        """Register an open socket: index, layer groups, presence, admin mirror.

        `name` is the user's display name as the handshake read it: the
        presence notices carry it without a read of their own.
        """
        if self._stopped:
            await conn.close_with(CLOSE_SERVICE_RESTART)
            raise RuntimeError("this worker is shutting down")
        wanted = self.sockets.add(conn, group_ids=group_ids, name=name)
        try:
            await self.subscriptions.subscribe(wanted)
            self.mirror.opened(conn.connection_id, user_id=conn.user_id, endpoint=endpoint)
            if await self.recorder.connected(conn.connection_id, conn.username):
                await self.announcing(presence_notice(conn.username, online=True, name=name))
        except BaseException:
            # The socket will be closed (Redis down, say): do not keep it in
            # the index, since its consumer will not detach it.
            with contextlib.suppress(Exception):
                await self.detach(conn)
            raise

    async def detach(self, conn: LocalSocket) -> None:
        """Forget a closed socket; announce the user offline if it was the last."""
        name = self.sockets.names.get(conn.username)
        released = self.sockets.remove(conn)
        if released is None:
            return
        # Presence first: the socket stops counting against CHAT_SOCKETS_PER_USER
        # before the layer groups are left.
        try:
            if await self.recorder.disconnected(conn.connection_id, conn.username):
                await self.announcing(await self.recorder.went_offline(conn.username, name))
        finally:
            self.mirror.closed(conn.connection_id)
            await self.subscriptions.unsubscribe(released)

    async def _reset_sockets(self) -> None:
        """Close every local socket with 1012 and forget it at once."""
        sockets = list(self.sockets)
        if sockets:
            logger.warning(
                "channel layer is back; closing %d sockets so clients reconnect and sync",
                len(sockets),
            )
        for conn in sockets:
            with contextlib.suppress(Exception):
                await conn.close_with(CLOSE_SERVICE_RESTART)
            # Detach now rather than when the socket's disconnect arrives, so
            # the next heartbeat does not count these sockets as still open.
            with contextlib.suppress(Exception):
                await self.detach(conn)

    async def _announce_offline(self, usernames: Sequence[str]) -> None:
        """Tell every worker that these users (of a reaped or stopping worker) went offline.

        Their names come from the sockets here, else from one read for all:
        a reaped worker's users have no socket here.
        """
        if not usernames:
            return
        names = self.sockets.names
        unknown = [username for username in usernames if username not in names]
        read: dict[str, str] = {}
        if unknown:
            try:
                read = await database_sync_to_async(names_of)(unknown)
            except Exception:
                logger.warning("could not read the names of users gone offline", exc_info=True)
        for username in usernames:
            name = names.get(username) or read.get(username)
            await self.publish(LAYER_ALL, await self.recorder.went_offline(username, name))

    async def online(self) -> frozenset[str]:
        return await self.online_reader.online()

    async def online_names(self) -> tuple[str, ...]:
        return await self.online_reader.online_names()

    # -- publishing ---------------------------------------------------------

    async def publish(
        self, layer_group: str, message: LayerMessage, *, local_fallback: bool = True
    ) -> bool:
        """`group_send` that never raises; during a layer outage, deliver locally."""
        if await self.channel.publish(layer_group, message):
            return True
        if local_fallback:
            await self.handlers.dispatch(message)
        return False

    async def deliver_messages(self, messages: Sequence[StoredMessage]) -> None:
        """Send stored messages, in the order given, to their audiences.

        This worker's own sockets get each first, straight from here: the
        trip through Redis and back is latency they need not wait for. The
        copy the layer brings back carries this worker's channel as its
        origin and is dropped.
        """
        stored_at = time.time()
        for layer_group, message in deliveries(
            messages, origin=self.channel.name, stored_at=stored_at
        ):
            await self.handlers.chat_deliver(message)
            await self.publish(layer_group, message, local_fallback=False)

    async def _publish_notices(self, notices: list[Notice]) -> list[None]:
        """Publish notices to every worker, in order, as one layer message."""
        await self.publish(LAYER_ALL, notices[0] if len(notices) == 1 else Notices(tuple(notices)))
        return [None] * len(notices)

    async def tell(self, addressed: Addressed) -> None:
        """Publish events addressed by `chat.delivery.publishing` (`to_user`, `to_group`, ...)."""
        for layer_group, message in addressed:
            await self.publish(layer_group, message)

    async def note_membership(self, *, user_id: int, group_id: int, joined: bool) -> None:
        """Update this worker's membership index at once (before the reply)."""
        await self.handlers.apply(MemberChange(user_id=user_id, group_id=group_id, joined=joined))

    # -- the outbox and roster of actions (chat.actions.services) -----------

    async def to_user(
        self, user_id: int, event: dict[str, Any], *, exclude_connection: str | None = None
    ) -> None:
        await self.tell(to_user(user_id, event, exclude_connection=exclude_connection))

    async def to_username(self, username: str, event: dict[str, Any]) -> None:
        await self.tell(to_username(username, event))

    async def to_group(
        self,
        group_id: int,
        event: dict[str, Any],
        *,
        exclude_user: int | None = None,
        exclude_connection: str | None = None,
    ) -> None:
        await self.tell(
            to_group(
                group_id, event, exclude_user=exclude_user, exclude_connection=exclude_connection
            )
        )

    async def renamed(
        self,
        event: dict[str, Any],
        *,
        user_id: int,
        username: str,
        name: str,
        exclude_connection: str,
    ) -> None:
        # The name first: a worker has noted it by the time its sockets read `profile`.
        self.sockets.rename(username, name)
        await self.publish(user_layer_group(user_id), Renamed(username=username, name=name))
        await self.tell(to_everyone(event, exclude_connection=exclude_connection))

    async def to_message_audience(
        self, change: Change, event: dict[str, Any], *, exclude_connection: str | None = None
    ) -> None:
        await self.tell(to_message_audience(change, event, exclude_connection=exclude_connection))

    async def group_receipt(self, *, reader_id: int, group_id: int, event: dict[str, Any]) -> None:
        await self.receipts.receipt(reader_id=reader_id, group_id=group_id, event=event)

    async def membership_changed(
        self,
        event: dict[str, Any],
        *,
        user_id: int,
        group_id: int,
        joined: bool,
        exclude_connection: str | None,
        announce: bool,
        by_connection: str | None = None,
    ) -> None:
        await self.note_membership(user_id=user_id, group_id=group_id, joined=joined)
        if announce:
            # With presence (`announcing`): a burst of joins was two
            # `group_send`s per join, to the group's and the user's layer
            # groups; a worker with none of the sockets concerned drops them
            # at a dict lookup.
            await self.announcing.many(
                membership_notice_pair(
                    event,
                    user_id=user_id,
                    group_id=group_id,
                    joined=joined,
                    exclude_connection=exclude_connection,
                    by_connection=by_connection,
                )
            )

    def groups_here(self, user_id: int) -> Container[int]:
        return self.sockets.groups_of.get(user_id, ())
