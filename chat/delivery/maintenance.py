"""Keeping a worker's presence honest: heartbeat, refresh, reaping and outage recovery.

Every few seconds the worker tells the registry it is alive (with its layer
channel and groups, for whoever reaps it), renews its layer group
memberships (so a killed worker's channel expires from them), and reaps the
workers that stopped heartbeating: their sockets leave presence, their
channel leaves its layer groups. After a layer or Redis outage it closes its
sockets so that clients reconnect and `sync` what they may have missed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from channels.db import database_sync_to_async
from django.conf import settings

from chat.cancellation import raise_if_cancelled
from chat.delivery.channel import WorkerChannel
from chat.delivery.mirror import (
    ConnectionMirror,
    connections_forget_other_workers,
    connections_forget_workers,
)
from chat.delivery.subscriptions import LayerSubscriptions
from chat.metrics import TALLY
from chat.presence import PresenceStore
from chat.registry import WorkerRegistry

logger = logging.getLogger(__name__)


def reap_interval(timeout: float) -> float:
    """Seconds between two scans for dead workers: a tenth of the timeout, at most 3 s."""
    return min(timeout / 10, 3.0)


def reap_silence(timeout: float) -> float:
    """Silence after which a worker is dead, so that the next scan falls within `timeout`.

    It stays well above the heartbeat's period (a third of the timeout at most),
    so a live worker is never taken for dead.
    """
    return timeout - reap_interval(timeout)


class Maintenance:
    """The worker's periodic upkeep; `run` until cancelled."""

    def __init__(
        self,
        *,
        presence: PresenceStore,
        registry: WorkerRegistry,
        worker_id: str,
        channel: WorkerChannel,
        subscriptions: LayerSubscriptions,
        mirror: ConnectionMirror,
        has_sockets: Callable[[], bool],
        reset_sockets: Callable[[], Awaitable[None]],
        announce_offline: Callable[[list[str]], Awaitable[object]],
    ) -> None:
        self.presence = presence
        self.registry = registry
        self.worker_id = worker_id
        self.channel = channel
        self.subscriptions = subscriptions
        self.mirror = mirror
        self._has_sockets = has_sockets
        self._reset_sockets = reset_sockets
        self._announce_offline = announce_offline

    async def run(self) -> None:
        """Heartbeat every third of the timeout; look for dead workers ten times as often.

        A worker killed just after its heartbeat is reaped once it has been
        silent for `reap_silence()`, at the next scan after that: within
        CHAT_PRESENCE_TIMEOUT of the kill in the worst case, whatever the
        heartbeat's phase.
        """
        timeout = settings.CHAT_PRESENCE_TIMEOUT
        heartbeat_every = min(timeout / 3, 10.0)
        loop = asyncio.get_running_loop()
        next_heartbeat = loop.time() + heartbeat_every
        while True:
            await asyncio.sleep(reap_interval(timeout))
            try:
                if loop.time() >= next_heartbeat:
                    next_heartbeat = loop.time() + heartbeat_every
                    await self.maintain()
                else:
                    await self.reap()
            except asyncio.CancelledError:
                raise
            except Exception:
                raise_if_cancelled()
                self.channel.failed = True
                logger.warning("presence maintenance failed; retrying", exc_info=True)

    async def heartbeat(self) -> bool:
        """Heartbeat, recording the layer channel and groups; False if the registry forgot us."""
        return await self.registry.heartbeat(
            worker=self.worker_id,
            channel=self.channel.name,
            layer_groups=list(self.subscriptions.names),
        )

    async def maintain(self) -> None:
        self.mirror.write()
        known = await self.heartbeat()
        if self.channel.failed or (not known and self._has_sockets()):
            # Redis answers again, but live messages may have been dropped while
            # it was down, and a Redis that restarted empty (or other workers
            # that reaped this one while it was cut off) no longer lists these
            # sockets: close them so clients reconnect, `sync` what they missed
            # and are announced afresh.
            self.channel.failed = False
            await self._reset_sockets()
        await self.subscriptions.refresh()
        await self.reap()

    async def start(self) -> None:
        """Heartbeat once; a worker that owns everything drops what a dead process left."""
        await self.heartbeat()
        if self.registry.owns_everything:
            try:
                await database_sync_to_async(connections_forget_other_workers)(self.worker_id)
            except Exception:
                logger.warning("could not remove earlier processes' connections", exc_info=True)

    async def reap(self) -> None:
        """Drop the workers that stopped heartbeating; announce their users offline."""
        dead = await self.registry.dead(max_silence=reap_silence(settings.CHAT_PRESENCE_TIMEOUT))
        if not dead:
            return
        offline = []
        for found in dead:
            # Presence first: of two reapers racing, the second finds no
            # sockets left and reports nobody twice.
            offline.extend(await self.presence.drop_worker(worker=found.worker))
            await self.registry.forget(worker=found.worker)
        workers = [found.worker for found in dead]
        TALLY.reaped_workers += len(workers)
        TALLY.reaped_users += len(offline)
        logger.warning("reaped dead workers %s", ", ".join(workers))
        await database_sync_to_async(connections_forget_workers)(workers)
        await self._announce_offline(offline)
        # channels_redis would drop a dead channel from a group only after
        # `group_expiry`; meanwhile every group_send would still queue for it.
        for found in dead:
            if found.channel:
                for layer_group in found.layer_groups:
                    await self.channel.leave(layer_group, found.channel)
