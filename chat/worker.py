"""What one worker keeps for all its sockets, owned by one object per event loop.

A worker process serves every socket from one event loop, and some things
exist once for all of them: the hub (its one layer subscriber), the send queue
(one writer storing every send in batches), the rate limiter (with its
reserves), the Redis client (its connections belong to the loop that opened
them) and the shared trips of sockets opening together. `current_worker()`
returns the running loop's `Worker`, which makes each on first use.

Keyed by loop rather than by process because tests and management commands
run several loops in one process; code outside a loop (a sync test, say)
gets a worker of its own.

The parts chosen by settings are made once and made again after Django's
`setting_changed` names one of their settings, as Channels does for its
layers: reading settings on every use cost each command a few lookups.

A new per-worker thing: a lazily made attribute here, built from settings
and from the worker's other parts, and closed in `close` if it runs tasks.
Hub parts (chat.delivery) belong to the hub instead.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import redis.asyncio as aioredis
from channels.db import database_sync_to_async
from django.conf import settings
from django.core.signals import setting_changed

from chat.coalesce import Coalescer, bulk_read
from chat.conversations import ReadMove, ReadRequest, read_positions_move
from chat.groups import MembershipChange, groups_of_users
from chat.joining import JoinRequest, group_join_many
from chat.messaging import last_visible_marks
from chat.models import group_key
from chat.redis_client import redis_connect

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from chat.actions.services import Services
    from chat.delivery.hub import Hub
    from chat.messaging import StoredMessage
    from chat.presence import PresenceStore
    from chat.ratelimit import RateLimiter
    from chat.registry import WorkerRegistry
    from chat.send_queue import SendQueue
    from chat.sockets.socket_caps import SocketCaps


class Worker:
    """The running loop's hub, send queue, rate limiter, Redis client and shared trips."""

    def __init__(self) -> None:
        self._redis: aioredis.Redis | None = None
        self._presence: PresenceStore | None = None
        self._registry: WorkerRegistry | None = None
        self._limiter: RateLimiter | None = None
        # A 1-tuple once made, since None means "off".
        self._membership_limiter: tuple[RateLimiter | None] | None = None
        self._hub: Hub | None = None
        self._socket_caps: SocketCaps | None = None
        self._send_queue: SendQueue | None = None
        # What a socket reads when it opens; sockets opening together share the trips.
        self.groups_of: Coalescer[int, list[tuple[int, str]]] = bulk_read(groups_of_users)
        # `hello`'s last_id and last_rev, read together.
        self.last_marks_of: Coalescer[int, tuple[int, int]] = bulk_read(last_visible_marks)
        # Read positions moved by sockets at the same time are written in one statement.
        self.move_read_position: Coalescer[ReadRequest, ReadMove] = Coalescer(
            database_sync_to_async(read_positions_move)
        )
        # Joins of sockets opening together, committed in one transaction (chat.joining).
        self.join_group: Coalescer[JoinRequest, MembershipChange] = Coalescer(
            database_sync_to_async(group_join_many)
        )
        # Groups seen by this worker's sockets, by `group_key`: (id, spelling).
        # Typing checks its audience here and in the hub's index, never in the database.
        self.group_named: dict[str, tuple[int, str]] = {}

    def settings_changed(self, setting: str) -> None:
        """Make the parts chosen by `setting` again when next used (the hub keeps its own)."""
        if setting in _REDIS_SETTINGS:
            self._redis = None
            self._presence = None
            self._socket_caps = None
        if setting in _REDIS_SETTINGS or setting == "CHAT_PRESENCE_TIMEOUT":
            self._registry = None
        if setting in _REDIS_SETTINGS or setting in ("CHAT_RATE_BURST", "CHAT_RATE_PER_SECOND"):
            self._limiter = None
        if setting in _REDIS_SETTINGS or setting == "CHAT_MEMBERSHIP_CHANGES_PER_MINUTE":
            self._membership_limiter = None

    async def close_redis(self) -> None:
        """Close the Redis client, if one was made."""
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    @property
    def redis(self) -> aioredis.Redis:
        """The client for `REDIS_URL` (presence, registry, rate limits, health)."""
        if self._redis is None:
            self._redis = redis_connect(settings.REDIS_URL)
        return self._redis

    # The stores, the hub and the send queue are imported when first made:
    # the hub's modules import the stores, and a worker that only serves a
    # health check or a test needs none of them.

    @property
    def presence(self) -> PresenceStore:
        """The presence store: Redis when `REDIS_URL` is set, else memory."""
        if self._presence is None:
            from chat.presence import MemoryPresenceStore, RedisPresenceStore

            self._presence = (
                RedisPresenceStore(prefix=f"{settings.REDIS_PREFIX}:", redis=self.redis)
                if settings.REDIS_URL
                else MemoryPresenceStore()
            )
        return self._presence

    @property
    def registry(self) -> WorkerRegistry:
        """The worker registry: Redis when `REDIS_URL` is set, else this process's memory."""
        if self._registry is None:
            from chat.registry import MemoryWorkerRegistry, RedisWorkerRegistry

            self._registry = (
                RedisWorkerRegistry(
                    prefix=f"{settings.REDIS_PREFIX}:",
                    redis=self.redis,
                    info_seconds=int(settings.CHAT_PRESENCE_TIMEOUT * 2) + 1,
                )
                if settings.REDIS_URL
                else MemoryWorkerRegistry()
            )
        return self._registry

    @property
    def rate_limiter(self) -> RateLimiter:
        """The command budget (`CHAT_RATE_BURST`, `CHAT_RATE_PER_SECOND`)."""
        if self._limiter is None:
            self._limiter = self._make_limiter(
                burst=settings.CHAT_RATE_BURST, per_second=settings.CHAT_RATE_PER_SECOND
            )
        return self._limiter

    @property
    def membership_limiter(self) -> RateLimiter | None:
        """Joins and leaves per user (`CHAT_MEMBERSHIP_CHANGES_PER_MINUTE`); None when off.

        A budget of its own, because each change is a notice to every online
        member of the group: the command budget alone let a client send them
        a few notices a second for as long as it liked.
        """
        if self._membership_limiter is None:
            per_minute = settings.CHAT_MEMBERSHIP_CHANGES_PER_MINUTE
            self._membership_limiter = (
                self._make_limiter(burst=per_minute, per_second=per_minute / 60)
                if per_minute
                else None,
            )
        return self._membership_limiter[0]

    def _make_limiter(self, *, burst: int, per_second: float) -> RateLimiter:
        """A limiter in Redis when `REDIS_URL` is set (shared by all workers), else in memory."""
        from chat.ratelimit import MemoryRateLimiter, RedisRateLimiter

        if settings.REDIS_URL:
            return RedisRateLimiter(
                burst=burst,
                per_second=per_second,
                prefix=f"{settings.REDIS_PREFIX}:",
                redis=self.redis,
            )
        return MemoryRateLimiter(burst=burst, per_second=per_second)

    @property
    def socket_caps(self) -> SocketCaps:
        """This worker's count of sockets per user and per address (`chat.sockets.socket_caps`)."""
        if self._socket_caps is None:
            from chat.sockets.socket_caps import SocketCaps

            self._socket_caps = SocketCaps(self.presence)
        return self._socket_caps

    @property
    def stopping(self) -> bool:
        """Whether this worker's hub is stopping (and refusing new sockets)."""
        return self._hub is not None and self._hub.stopping

    async def hub(self) -> Hub:
        """The hub, started on first use (and again if starting it failed)."""
        hub = self._hub
        if hub is None or (hub.started.done() and hub.started.exception() is not None):
            from channels.layers import get_channel_layer

            from chat.delivery.hub import Hub

            layer = get_channel_layer()
            if layer is None:
                raise RuntimeError("CHANNEL_LAYERS must configure a default layer")
            hub = self._hub = Hub(layer, presence=self.presence, registry=self.registry)
            # A user added to a group on another worker (1.2 `invite`) may type to it here.
            hub.handlers.name_group = self._name_group
            await hub.start()
        else:
            await asyncio.shield(hub.started)
        return hub

    def _name_group(self, group_id: int, name: str) -> None:
        self.group_named[group_key(name)] = (group_id, name)

    def services(self, hub: Hub) -> Services:
        """What actions work with (`chat.actions`): this worker's parts and its hub."""
        from chat.actions.services import Services

        return Services(self, outbox=hub, roster=hub)

    @property
    def send_queue(self) -> SendQueue:
        """The send queue, started on first use (and again if its tasks ended)."""
        from chat.send_queue import SendQueue

        queue = self._send_queue
        if queue is None or not queue.running:
            if queue is not None:
                queue.close()
            queue = self._send_queue = SendQueue(deliver=self._deliver)
        return queue

    def send_queue_depth(self) -> int:
        """Sends waiting in this worker's queue (none before its first send)."""
        return self._send_queue.depth if self._send_queue is not None else 0

    async def _deliver(self, messages: list[StoredMessage]) -> None:
        await (await self.hub()).deliver_messages(messages)


_workers: dict[asyncio.AbstractEventLoop | None, Worker] = {}


def current_worker() -> Worker:
    """The running loop's worker (outside a loop, the process's loop-less one)."""
    try:
        loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    worker = _workers.get(loop)
    if worker is None:
        worker = _workers[loop] = Worker()
        # Not a WeakKeyDictionary: a worker's futures refer to their loop.
        for closed in [other for other in _workers if other is not None and other.is_closed()]:
            del _workers[closed]
    return worker


_REDIS_SETTINGS = ("REDIS_URL", "REDIS_PREFIX")


def _on_setting_changed(*, setting: str, **kwargs: object) -> None:
    for worker in _workers.values():
        worker.settings_changed(setting)


setting_changed.connect(_on_setting_changed, dispatch_uid="chat-worker-settings")


def start_with_the_server() -> bool:
    """Under daphne, start the worker's hub as the server starts, not at its first socket.

    So it heartbeats (the Workers page lists it) and, without Redis, removes
    what a crashed earlier process left, before anyone connects.
    """
    from chat.upstream.twisted import run_when_reactor_runs

    async def start() -> None:
        try:
            await current_worker().hub()
        except Exception:
            logger.warning("the hub did not start; the first socket tries again", exc_info=True)

    return run_when_reactor_runs(start)


def forget_workers() -> None:
    """Drop every worker (tests start each case from a fresh process state)."""
    from chat.registry import forget_memory_registry

    _workers.clear()
    forget_memory_registry()
