"""Which layer groups this worker's channel is in, kept to what its sockets need.

A worker joins `chat.all`, `chat.user.<id>` for each user connected here and
`chat.group.<id>` for each chat group with a member connected here, and
leaves them as the last such socket closes. The groups are also recorded in
the worker registry, so that whoever reaps this worker if it is killed can
take its channel out of them.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable

from chat.coalesce import Coalescer
from chat.delivery.channel import WorkerChannel
from chat.registry import WorkerRegistry

logger = logging.getLogger(__name__)


class LayerSubscriptions:
    """The layer groups of this worker's channel."""

    def __init__(
        self,
        channel: WorkerChannel,
        *,
        registry: WorkerRegistry,
        worker_id: str,
        wants: Callable[[str], bool],
    ) -> None:
        self.channel = channel
        self.registry = registry
        self.worker_id = worker_id
        # Whether the sockets here need a layer group now (`SocketIndex.wants`).
        self._wants = wants
        # Joined, or to be joined again by `refresh` after a failure.
        self.names: set[str] = set()
        # Layer groups that sockets opening together need are joined in one
        # Redis trip, and recorded for the reaper in one call.
        self.joining: Coalescer[str, None] = Coalescer(self._join)

    async def subscribe(self, layer_groups: Iterable[str]) -> None:
        added = [g for g in dict.fromkeys(layer_groups) if g not in self.names]
        self.names.update(added)
        if len(added) == 1:
            await self.joining(added[0])
        elif added:
            await self.joining.many(added)

    async def _join(self, layer_groups: list[str]) -> list[None]:
        """Join the groups and record them, or note the failure.

        A group that could not be joined stays in `names`: the maintenance
        loop joins it once the layer is back.
        """
        try:
            await self.channel.join(layer_groups)
        except Exception:
            self.channel.failed = True
            logger.warning("could not join %d layer groups", len(layer_groups), exc_info=True)
        # The heartbeat records the rest.
        try:
            await self.registry.note_layer_groups(worker=self.worker_id, layer_groups=layer_groups)
        except Exception:
            self.channel.failed = True
            logger.warning("could not record %d layer groups", len(layer_groups), exc_info=True)
        return [None] * len(layer_groups)

    async def unsubscribe(self, layer_groups: Iterable[str]) -> None:
        """Leave those of `layer_groups` no socket here needs any more.

        One trip per Redis shard however many there are, and linear in their
        number: a socket of a user in 10,000 groups closes in milliseconds.
        """
        gone = [g for g in dict.fromkeys(layer_groups) if g in self.names and not self._wants(g)]
        if not gone:
            return
        self.names.difference_update(gone)
        with contextlib.suppress(Exception):
            await self.channel.leave_many(gone)
        # A socket may have needed some again while the leave was in flight.
        again = [g for g in gone if self._wants(g) and g not in self.names]
        if again:
            await self.subscribe(again)

    async def refresh(self) -> None:
        """Join every group again: channels_redis expires a membership not renewed."""
        await self.channel.join(list(self.names))

    async def unsubscribe_all(self) -> None:
        for layer_group in list(self.names):
            with contextlib.suppress(Exception):
                await self.channel.leave(layer_group)
        self.names.clear()
