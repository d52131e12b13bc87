"""Who is online: recorded as sockets come and go, and read once for all who ask together.

Every `hello` lists who is online; calls share a read, so a burst of N
connections does not read the whole set N times.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

from chat.coalesce import Coalescer
from chat.delivery.messages import Notice, presence_notice
from chat.messaging import format_ts
from chat.presence import PresenceStore

logger = logging.getLogger(__name__)


class OnlineReader:
    """Shared reads of the presence store's online set."""

    def __init__(self, presence: PresenceStore) -> None:
        self.presence = presence
        self._next: asyncio.Future[frozenset[str]] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._sorted: tuple[frozenset[str], tuple[str, ...]] | None = None

    async def online(self) -> frozenset[str]:
        """The users online everywhere, read after this call began.

        At most one read runs, and the next one serves every call that
        arrived while it ran, so no caller gets a state older than its own
        call (its socket is attached by then, so later changes reach it as
        notices).
        """
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
            if self._reader is None:
                self._reader = asyncio.create_task(self._read(), name="chat-hub-online")
        # Shielded: one caller giving up must not cancel the others' read.
        return await asyncio.shield(self._next)

    async def online_names(self) -> tuple[str, ...]:
        """`online()` sorted by name, once per read: every greeting of a burst shares it."""
        online = await self.online()
        cached = self._sorted
        if cached is None or cached[0] is not online:
            cached = self._sorted = (online, tuple(sorted(online)))
        return cached[1]

    async def _read(self) -> None:
        try:
            while self._next is not None:
                waiting, self._next = self._next, None
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
            self._reader = None
            unread, self._next = self._next, None
            if unread is not None:
                unread.cancel()


class PresenceRecorder:
    """Records sockets opening and closing; says which were their user's first or last.

    Sockets opening (or closing) together are recorded in one trip to the
    store: a burst of N connections costs a few trips, not N.
    """

    def __init__(self, presence: PresenceStore, *, worker_id: str) -> None:
        self.presence = presence
        self.connecting: Coalescer[tuple[str, str], bool] = Coalescer(
            lambda sockets: presence.connect_many(worker=worker_id, sockets=sockets)
        )
        self.disconnecting: Coalescer[tuple[str, str], bool] = Coalescer(
            lambda sockets: presence.disconnect_many(worker=worker_id, sockets=sockets)
        )

    async def connected(self, connection_id: str, username: str) -> bool:
        """Record an open socket; True if the user just came online."""
        return await self.connecting((connection_id, username))

    async def disconnected(self, connection_id: str, username: str) -> bool:
        """Forget a socket; True if the user just went offline."""
        return await self.disconnecting((connection_id, username))

    async def went_offline(self, username: str, name: str | None = None) -> Notice:
        """Record when a user went offline (`last_seen`); the notice that says so (with
        the user's display `name`, the username when unknown)."""
        moment = format_ts(datetime.now(UTC))
        try:
            await self.presence.note_seen(username, moment)
        except Exception:
            logger.warning("could not record when %s was last seen", username, exc_info=True)
        return presence_notice(username, online=False, name=name, last_seen=moment)
