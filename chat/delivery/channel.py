"""The worker's one channel on the channel layer: publish, receive, and note outages.

Every layer call of the worker goes through here, so that two things hold for
all of them: no more than `_LAYER_CONCURRENCY` are in flight (channels_redis's
connection pool refuses calls past its size with MaxConnectionsError, and a
burst of connecting sockets would then look like a layer outage and get every
socket closed with 1012), and a failure is remembered in `failed` until the
maintenance loop has recovered from it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from channels.layers import BaseChannelLayer

from chat import upstream
from chat.cancellation import raise_if_cancelled
from chat.delivery.messages import LayerMessage, from_layer, to_layer
from chat.upstream.channels_redis import group_add_many, group_discard_many

logger = logging.getLogger(__name__)

# Layer calls in flight at once per worker; well under channels_redis's pool size.
_LAYER_CONCURRENCY = 32


class WorkerChannel:
    """This worker's layer channel and the calls made on it."""

    def __init__(self, layer: BaseChannelLayer) -> None:
        self.layer = layer
        self.name = ""
        # Set by any failed call; the maintenance loop recovers and clears it.
        self.failed = False
        self._slots = asyncio.Semaphore(_LAYER_CONCURRENCY)

    async def open(self) -> None:
        self.name = await self.layer.new_channel("chatworker")

    async def publish(self, layer_group: str, message: LayerMessage) -> bool:
        """`group_send` that never raises: False (and `failed`) if the layer failed."""
        try:
            async with self._slots:
                await self.layer.group_send(layer_group, to_layer(message))
        except Exception:
            if not self.failed:
                logger.exception("channel layer failed; delivering locally until it is back")
            self.failed = True
            return False
        return True

    async def join(self, layer_groups: Iterable[str]) -> None:
        """Add this channel to the layer groups, in one trip per Redis shard."""
        async with self._slots:
            await group_add_many(
                self.layer,
                layer_groups,
                self.name,
                pipelined=upstream.is_on(upstream.PIPELINED_JOINS),
            )

    async def leave_many(self, layer_groups: Sequence[str]) -> None:
        """Remove this channel from the layer groups, in one trip per Redis shard."""
        async with self._slots:
            await group_discard_many(
                self.layer,
                layer_groups,
                self.name,
                batched=upstream.is_on(upstream.PIPELINED_JOINS),
            )

    async def leave(self, layer_group: str, channel: str | None = None) -> None:
        """Remove this channel (or a dead worker's) from a layer group."""
        async with self._slots:
            await self.layer.group_discard(layer_group, channel or self.name)

    async def receive_loop(self, dispatch: Callable[[LayerMessage], Awaitable[None]]) -> None:
        """Hand every message sent to this channel to `dispatch`, until cancelled.

        What this worker published itself (`origin`) was delivered here
        already and is dropped.
        """
        backoff = 0.1
        while True:
            try:
                message: dict[str, Any] = await self.layer.receive(self.name)
            except asyncio.CancelledError:
                raise
            except Exception:
                # redis-py can turn the cancellation of a blocked read into a
                # ConnectionError: retrying then would never let the loop end.
                raise_if_cancelled()
                if not self.failed:
                    logger.exception("channel layer receive failed; retrying")
                self.failed = True
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            backoff = 0.1
            if message.get("origin") != self.name:
                try:
                    await dispatch(from_layer(message))
                except Exception:
                    logger.exception("failed to dispatch %s", message.get("type"))
            raise_if_cancelled()
