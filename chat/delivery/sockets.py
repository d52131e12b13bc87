"""The sockets open on this worker, found by user and by chat group.

The hub writes one text to every socket of an audience: this index answers
"which sockets here" from memory, so a fan-out costs no I/O. It knows the
group memberships of the users connected here only, which is all a worker
needs to route a group message it was sent.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol

from chat.delivery.messages import (
    LAYER_ALL,
    Audience,
    MemberChange,
    group_layer_group,
    user_layer_group,
)

logger = logging.getLogger(__name__)

_USER_LAYER_PREFIX = user_layer_group(0).rpartition(".")[0]
_GROUP_LAYER_PREFIX = group_layer_group(0).rpartition(".")[0]


def session_digest(session_key: str) -> str:
    """A session key as it travels between workers (never the key itself)."""
    return hashlib.sha256(session_key.encode()).hexdigest()[:32]


class LocalSocket(Protocol):
    """What the hub needs of a socket open on this worker; the consumers implement it.

    (Not `chat.models.Connection`, which is the admin's row for a socket.)
    """

    connection_id: str
    user_id: int
    username: str
    session_digest: str

    async def write(self, text: str) -> None:
        """Send one frame of text; must not block on the network."""

    def write_now(self, text: str) -> bool:
        """`write` without a coroutine when nothing needs awaiting; False if it did nothing.

        A fan-out calls this for every member: a coroutine per socket would
        be paid for every socket at every message.
        """

    async def write_events(self, text: str, events: Sequence[dict[str, Any]]) -> None:
        """`write` of a frame the hub made for many sockets: `text` is `events` encoded.

        A socket that speaks another format (the classic endpoint) translates
        the events instead of parsing the text back.
        """

    async def close_with(self, code: int) -> None:
        """Close the socket with this code."""


class SocketIndex:
    """Open sockets by user, and the chat groups of the users who have one here."""

    def __init__(self) -> None:
        self.by_user: dict[int, set[LocalSocket]] = {}
        self.groups_of: dict[int, set[int]] = {}
        self.members_here: dict[int, set[int]] = {}
        # User id by username, for events addressed by name (typing).
        self.user_named: dict[str, int] = {}
        # Display name by username, for the presence notice of a user's last
        # socket here: from their first socket's handshake, then `Renamed`.
        self.names: dict[str, str] = {}
        # While notices are held (`chat.delivery.notices`), when sockets came
        # and users joined groups here, as readings of `clock`: a held notice
        # goes only to those who were there when it arrived, and working
        # that out at the flush costs a step per socket, not per socket and
        # notice. Whoever came before the first held notice is not recorded.
        self.clock = 0
        self._recording = False
        self._attached_at: dict[LocalSocket, int] = {}
        self._joined_at: dict[tuple[int, int], int] = {}

    def __bool__(self) -> bool:
        return bool(self.by_user)

    def __len__(self) -> int:
        return sum(len(sockets) for sockets in self.by_user.values())

    def __iter__(self) -> Iterator[LocalSocket]:
        for sockets in self.by_user.values():
            yield from sockets

    def __contains__(self, conn: LocalSocket) -> bool:
        return conn in self.by_user.get(conn.user_id, ())

    def add(
        self, conn: LocalSocket, *, group_ids: Iterable[int], name: str | None = None
    ) -> list[str]:
        """Index an open socket (its user's display `name`, when known); the layer
        groups its user needs.

        A user's groups are taken from their first socket here; later ones
        share them (memberships then change through `apply`).
        """
        first_here = conn.user_id not in self.by_user
        self.by_user.setdefault(conn.user_id, set()).add(conn)
        if self._recording:
            self.clock += 1
            self._attached_at[conn] = self.clock
        if first_here:
            self.groups_of[conn.user_id] = set(group_ids)
            self.user_named[conn.username] = conn.user_id
        # The first socket's name; `Renamed` keeps it current from then on (a
        # later handshake may have read the name before a rename it then missed).
        if name is not None and conn.username not in self.names:
            self.names[conn.username] = name
        wanted = [LAYER_ALL, user_layer_group(conn.user_id)]
        for group_id in self.groups_of[conn.user_id]:
            self.members_here.setdefault(group_id, set()).add(conn.user_id)
            wanted.append(group_layer_group(group_id))
        return wanted

    def remove(self, conn: LocalSocket) -> list[str] | None:
        """Forget a socket: the layer groups no socket here needs any more (its
        user's, and those of their groups with no other member here), or None if
        it was not indexed. Linear in the user's groups."""
        sockets = self.by_user.get(conn.user_id)
        if sockets is None or conn not in sockets:
            return None
        sockets.discard(conn)
        self._attached_at.pop(conn, None)
        if sockets:
            return []
        del self.by_user[conn.user_id]
        self.user_named.pop(conn.username, None)
        self.names.pop(conn.username, None)
        released = [user_layer_group(conn.user_id)]
        for group_id in self.groups_of.pop(conn.user_id, set()):
            if self._forget_member(group_id, conn.user_id):
                released.append(group_layer_group(group_id))
        if not self.by_user:
            released.append(LAYER_ALL)
        return released

    def rename(self, username: str, name: str) -> None:
        """Note a user's new display name, if they have a socket here."""
        if username in self.names or username in self.user_named:
            self.names[username] = name

    def apply(self, change: MemberChange) -> bool:
        """Record a membership change of a user connected here; False if none is."""
        groups = self.groups_of.get(change.user_id)
        if groups is None:
            return False
        if change.joined:
            groups.add(change.group_id)
            members = self.members_here.setdefault(change.group_id, set())
            if self._recording and change.user_id not in members:
                self.clock += 1
                self._joined_at[(change.group_id, change.user_id)] = self.clock
            members.add(change.user_id)
        else:
            groups.discard(change.group_id)
            self._forget_member(change.group_id, change.user_id)
        return True

    def record_arrivals(self, on: bool) -> None:
        """Start (or stop) recording when sockets come and members join, from scratch."""
        self._recording = on
        self._attached_at.clear()
        self._joined_at.clear()

    def here_since(self, conn: LocalSocket, group_id: int) -> int:
        """The `clock` reading since which `conn` is here and its user in the group here
        (-1: since before recording began)."""
        return max(
            self._attached_at.get(conn, -1), self._joined_at.get((group_id, conn.user_id), -1)
        )

    def _forget_member(self, group_id: int, user_id: int) -> bool:
        """Drop a member of a group here; True if the group has none left here."""
        self._joined_at.pop((group_id, user_id), None)
        members = self.members_here.get(group_id)
        if members is None:
            return False
        members.discard(user_id)
        if members:
            return False
        del self.members_here[group_id]
        return True

    def wants(self, layer_group: str) -> bool:
        """Whether the sockets here need `layer_group`: one of `wanted_layer_groups`, in O(1)."""
        if layer_group == LAYER_ALL:
            return bool(self.by_user)
        kind, _, number = layer_group.rpartition(".")
        if not number.isdigit():
            return False
        if kind == _USER_LAYER_PREFIX:
            return int(number) in self.by_user
        if kind == _GROUP_LAYER_PREFIX:
            return int(number) in self.members_here
        return False

    def sockets_of(self, user_id: int) -> list[LocalSocket]:
        return list(self.by_user.get(user_id, ()))

    def wanted_layer_groups(self) -> set[str]:
        """The layer groups this worker's channel must be in for the sockets here."""
        wanted = {user_layer_group(u) for u in self.by_user}
        wanted.update(group_layer_group(g) for g in self.members_here)
        if self.by_user:
            wanted.add(LAYER_ALL)
        return wanted

    def targets(self, audience: Audience) -> list[LocalSocket]:
        """The sockets here that `audience` is for."""
        by_user = self.by_user
        if audience.everyone:
            candidates = [conn for sockets in by_user.values() for conn in sockets]
        elif audience.users:
            candidates = [c for u in audience.users for c in by_user.get(u, ())]
        elif audience.group is not None:
            members = self.members_here.get(audience.group, ())
            candidates = [c for u in list(members) for c in by_user.get(u, ())]
        else:
            candidates = []
        if not audience.excludes:
            return candidates  # every message; only notices exclude anyone
        exclude_user = audience.exclude_user
        exclude_username = audience.exclude_username
        exclude_connection = audience.exclude_connection
        return [
            conn
            for conn in candidates
            if conn.user_id != exclude_user
            and conn.username != exclude_username
            and conn.connection_id != exclude_connection
        ]


def written_now(conn: LocalSocket, text: str) -> bool:
    """`conn.write_now`: True only if the frame was written, False when `write` must.

    Synchronous, so that a fan-out to every socket does not run a coroutine
    per socket; `write_to` is the slow path, for sockets that must wait (and
    for those whose `write_now` failed: a frame is never taken as written
    when it was not).
    """
    try:
        return conn.write_now(text)
    except Exception:
        logger.warning("write_now failed for connection %s", conn.connection_id, exc_info=True)
        return False


async def write_to(conn: LocalSocket, text: str, events: Sequence[dict[str, Any]]) -> None:
    """`conn.write_events`; a socket that fails is closing, and its frame is dropped."""
    try:
        await conn.write_events(text, events)
    except Exception:
        logger.debug("dropping a frame for closed connection %s", conn.connection_id)


async def write_to_all(
    sockets: Iterable[LocalSocket], text: str, events: Sequence[dict[str, Any]]
) -> None:
    """Write one frame to each socket, without a coroutine for those that take it at once."""
    for conn in sockets:
        if not written_now(conn, text):
            await write_to(conn, text, events)
