"""How many sockets one user, and one client address, may hold open.

`CHAT_SOCKETS_PER_USER` counts a user's sockets on every worker. An opening
socket claims its place in the presence store (Redis when configured; the
handshakes opening together claim in one trip): one atomic step counts the
user's recorded sockets and the places claimed by handshakes still under way
on any worker, and grants the claim only under the cap. So handshakes that
arrive on several workers at the same instant cannot pass it together. A
claim turns into the socket's presence record when the socket is registered;
a handshake that fails before that leaves a claim that lapses after
`chat.presence.CLAIM_SECONDS`.
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
from chat.presence import PresenceStore, SocketClaim

logger = logging.getLogger(__name__)

K = TypeVar("K")


class SocketCaps:
    """This worker's sockets by user and by client address, and the caps on them."""

    def __init__(self, presence: PresenceStore) -> None:
        self._by_user: dict[int, int] = {}
        self._by_address: dict[str, int] = {}
        self._claims: Coalescer[SocketClaim, bool] = Coalescer(presence.claim_sockets)

    async def admit(self, *, user_id: int, username: str, connection_id: str, address: str) -> bool:
        """Count a socket opening; False (nothing counted) if it would pass a cap."""
        per_user = settings.CHAT_SOCKETS_PER_USER
        per_address = settings.CHAT_SOCKETS_PER_ADDRESS
        if per_address and self._by_address.get(address, 0) >= per_address:
            return False
        if per_user:
            if self._by_user.get(user_id, 0) >= per_user:
                return False
            try:
                granted = await self._claims(SocketClaim(username, connection_id, per_user))
            except Exception:
                # Presence unreachable: the socket fails when it registers anyway.
                logger.warning("could not count %s's sockets", username, exc_info=True)
                granted = True
            if not granted:
                return False
            # Checked again: others may have been admitted here meanwhile (a
            # claim granted for a socket refused here lapses on its own).
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
