"""Layer messages from other processes when the channel layer is in memory.

Without Redis every process has a layer of its own: a user deactivated, a
session deleted or a membership ended from `manage.py` or a shell would reach
no worker. Such a process writes the message to the database instead
(`relay_if_local`) and the single worker reads it back within a second or so
(`RelayReader`), so revocation and membership changes hold whoever makes them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.layers import BaseChannelLayer, InMemoryChannelLayer, get_channel_layer
from django.db import transaction
from django.utils import timezone

from chat.cancellation import raise_if_cancelled
from chat.delivery.messages import LayerMessage, UnknownMessage, from_layer, to_layer
from chat.models import RelayedMessage

logger = logging.getLogger(__name__)

# This process: its own in-memory layer already carried what it wrote.
PROCESS = f"{socket.gethostname()}-{os.getpid()}"
POLL_SECONDS = 1.0
# Rows are read again for this long, since ids may commit out of order.
WINDOW = timedelta(seconds=30)
# Rows older than this are deleted by the reader.
KEEP = timedelta(minutes=5)


def relay_if_local(layer: BaseChannelLayer | None, message: LayerMessage) -> None:
    """Write `message` for the worker if `layer` is this process's memory only."""
    if isinstance(layer, InMemoryChannelLayer):
        RelayedMessage.objects.create(
            origin=PROCESS, message=to_layer(message), created=timezone.now()
        )


def publish_on_commit(addressed: Sequence[tuple[str, LayerMessage]]) -> None:
    """Tell every worker, from synchronous code, once the change commits."""
    transaction.on_commit(lambda: _publish(addressed))


def _publish(addressed: Sequence[tuple[str, LayerMessage]]) -> None:
    layer = get_channel_layer()
    for layer_group, message in addressed:
        try:
            if layer is not None:
                async_to_sync(layer.group_send)(layer_group, to_layer(message))
            relay_if_local(layer, message)
        except Exception:
            logger.exception("could not tell the workers: %s to %s", message.type, layer_group)


def relayed_recently(since: datetime) -> list[tuple[int, dict[str, Any]]]:
    """Rows of other processes within the window and after `since`, oldest first."""
    now = timezone.now()
    rows = (
        RelayedMessage.objects.filter(created__gte=max(now - WINDOW, since))
        .exclude(origin=PROCESS)
        .order_by("id")
        .values_list("id", "message")
    )
    return list(rows)


def relayed_forget_old() -> None:
    """Delete rows older than `KEEP`, only if there are: a delete takes SQLite's write lock."""
    old = RelayedMessage.objects.filter(created__lt=timezone.now() - KEEP)
    if old.exists():
        old.delete()


class RelayReader:
    """Polls the relayed messages and hands each new one to the worker's handlers once."""

    def __init__(self, dispatch: Callable[[LayerMessage], Awaitable[None]]) -> None:
        self._dispatch = dispatch
        self._seen: set[int] = set()
        # What was written before this worker started concerns no socket of it.
        self._since = timezone.now()

    async def run(self) -> None:
        polls = 0
        while True:
            await asyncio.sleep(POLL_SECONDS)
            polls += 1
            try:
                await self.poll()
                if polls % 60 == 0:
                    await database_sync_to_async(relayed_forget_old)()
            except asyncio.CancelledError:
                raise
            except Exception:
                raise_if_cancelled()
                logger.warning("could not read relayed layer messages; retrying", exc_info=True)

    async def poll(self) -> None:
        rows = await database_sync_to_async(relayed_recently)(self._since)
        fresh = [data for pk, data in rows if pk not in self._seen]
        # Ids that left the window are never read again.
        self._seen = {pk for pk, _ in rows}
        for data in fresh:
            try:
                message = from_layer(data)
            except (UnknownMessage, KeyError, TypeError, ValueError):
                logger.warning("ignoring a relayed layer message it cannot read: %r", data)
                continue
            await self._dispatch(message)
