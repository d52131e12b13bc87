"""The admin's list of open sockets (`chat.models.Connection`), written in batches.

Opening or closing a socket must not wait for the database: the admin's rows
are written off the connect path, one database call per batch of changes
rather than one per socket, so a burst of connections does not queue behind
these writes on Channels' single database thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import Iterable

from channels.db import database_sync_to_async
from django.contrib.auth import get_user_model

from chat.models import Connection

logger = logging.getLogger(__name__)


class ConnectionMirror:
    """Pending changes to this worker's rows, written by one task at a time."""

    def __init__(self, worker_id: str) -> None:
        self.worker_id = worker_id
        # Connection id -> (user id, endpoint) to record; ids to delete.
        self._opened: dict[str, tuple[int, str]] = {}
        self._closed: set[str] = set()
        self._writer: asyncio.Task[None] | None = None

    def opened(self, connection_id: str, *, user_id: int, endpoint: str) -> None:
        self._opened[connection_id] = (user_id, endpoint)
        self.write()

    def closed(self, connection_id: str) -> None:
        # A socket that closes before its row was written is never recorded.
        if self._opened.pop(connection_id, None) is None:
            self._closed.add(connection_id)
        self.write()

    def write(self) -> None:
        """Start writing pending changes unless a write is running."""
        if self._writer is None and (self._opened or self._closed):
            self._writer = asyncio.create_task(
                self._write_all(), name="chat-hub-mirror", context=contextvars.Context()
            )

    async def _write_all(self) -> None:
        try:
            while self._opened or self._closed:
                opened, self._opened = self._opened, {}
                closed, self._closed = self._closed, set()
                try:
                    await database_sync_to_async(connections_mirror)(
                        worker=self.worker_id, opened=opened, closed=closed
                    )
                except Exception:
                    # Kept for the maintenance loop's next try (a socket that
                    # closed meanwhile is no longer to be recorded).
                    logger.warning("could not update the admin's connection list", exc_info=True)
                    for cid, row in opened.items():
                        if cid in self._closed:
                            self._closed.discard(cid)
                        else:
                            self._opened.setdefault(cid, row)
                    self._closed.update(closed)
                    return
        finally:
            self._writer = None

    async def stop(self) -> None:
        """Finish the write in flight, drop what is pending, and delete this worker's rows."""
        if self._writer is not None:
            with contextlib.suppress(Exception):
                await self._writer
        self._opened.clear()
        self._closed.clear()
        await database_sync_to_async(connections_forget_workers)([self.worker_id])


# Synchronous: the mirror calls these through database_sync_to_async.


def connection_record(*, user_id: int, worker: str, connection_id: str, endpoint: str) -> None:
    Connection.objects.create(
        user_id=user_id, worker=worker, connection_id=connection_id, endpoint=endpoint
    )


def connections_mirror(
    *, worker: str, opened: dict[str, tuple[int, str]], closed: Iterable[str]
) -> None:
    """Apply a batch of socket changes in one go: `opened` maps id to (user id, endpoint).

    Sockets of users deleted meanwhile are skipped, and ids already recorded
    are left as they are, so that a batch never fails for one of its rows.
    """
    closed = list(closed)
    if closed:
        Connection.objects.filter(connection_id__in=closed).delete()
    if opened:
        users = set(
            get_user_model()
            ._default_manager.filter(pk__in={user_id for user_id, _ in opened.values()})
            .values_list("pk", flat=True)
        )
        Connection.objects.bulk_create(
            [
                Connection(user_id=user_id, worker=worker, connection_id=cid, endpoint=endpoint)
                for cid, (user_id, endpoint) in opened.items()
                if user_id in users
            ],
            ignore_conflicts=True,
        )


def connections_forget_workers(workers: list[str]) -> None:
    Connection.objects.filter(worker__in=workers).delete()


def connections_forget_other_workers(worker: str) -> None:
    """Without Redis the one worker owns every row: the others are a dead process's."""
    Connection.objects.exclude(worker=worker).delete()
