"""How many sockets one user, and one client address, may hold open.

`CHAT_SOCKETS_PER_USER` counts a user's sockets on every worker: the
presence store's count (Redis when configured; the handshakes opening
together ask for theirs in one trip) or, if higher, this worker's own
count, which includes sockets admitted here and not yet recorded in
presence. So one worker never lets a user past the cap, and several workers
only by the handshakes that are mid-way on the others at the same instant.
`CHAT_SOCKETS_PER_ADDRESS` counts the sockets of one client address
(`chat.addresses`) on this worker. `0` turns either off.

A socket over a cap is accepted and closed at once with `CLOSE_TOO_MANY_SOCKETS`
(4429), so that its client can tell it apart from a refused session (a
handshake answered 403) and waits its longest backoff before trying again.
"""

from __future__ import annotations

import logging
from typing import TypeVar

from django.conf import settings

from chat.coalesce import Coalescer
from chat.presence import PresenceStore

logger = logging.getLogger(__name__)

CLOSE_TOO_MANY_SOCKETS = 4429

K = TypeVar("K")


class SocketCaps:
    """This worker's sockets by user and by client address, and the caps on them."""

    def __init__(self, presence: PresenceStore) -> None:
        self._by_user: dict[int, int] = {}
        self._by_address: dict[str, int] = {}
        self._counts: Coalescer[str, int] = Coalescer(presence.socket_counts)

    async def admit(self, *, user_id: int, username: str, address: str) -> bool:
        """Count a socket opening; False (nothing counted) if it would pass a cap."""
        per_user = settings.CHAT_SOCKETS_PER_USER
        per_address = settings.CHAT_SOCKETS_PER_ADDRESS
        if per_address and self._by_address.get(address, 0) >= per_address:
            return False
        if per_user:
            if self._by_user.get(user_id, 0) >= per_user:
                return False
            try:
                everywhere = await self._counts(username)
            except Exception:
                # Presence unreachable: the socket fails when it registers anyway.
                logger.warning("could not count %s's sockets", username, exc_info=True)
                everywhere = 0
            # Checked again: others may have been admitted here meanwhile.
            if max(everywhere, self._by_user.get(user_id, 0)) >= per_user:
                return False
            if per_address and self._by_address.get(address, 0) >= per_address:
                return False
        self._by_user[user_id] = self._by_user.get(user_id, 0) + 1
        self._by_address[address] = self._by_address.get(address, 0) + 1
        return True

    def release(self, *, user_id: int, address: str) -> None:
        """Uncount a socket that `admit` counted (it closed); empty entries are dropped."""
        _uncount(self._by_user, user_id)
        _uncount(self._by_address, address)


def _uncount(table: dict[K, int], key: K) -> None:
    left = table.get(key, 0) - 1
    if left > 0:
        table[key] = left
    else:
        table.pop(key, None)
