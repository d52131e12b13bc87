"""Notices (presence, joined, left) held for `CHAT_NOTICE_DELAY` and sent as one frame.

A burst of logins would otherwise cost one frame per pair of users; held
together, each socket gets one `batch`, and a user who comes and goes within
the window (a reload) is not announced at all.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_left

from django.conf import settings

from chat.delivery.messages import Notice, frame_text
from chat.delivery.sockets import LocalSocket, SocketIndex, write_to, written_now
from chat.protocol import encode

# A notice with the sockets it goes to: None for every socket here (but perhaps
# its own user's); for a group's members, the index's `clock` when it arrived
# (worked out at the flush); otherwise the sockets themselves.
Pending = tuple[Notice, list[LocalSocket] | int | None]


class NoticeBatcher:
    """Notices waiting for the next flush to the sockets of `index`."""

    def __init__(self, index: SocketIndex) -> None:
        self.index = index
        self._pending: list[Pending] = []
        self._flush_handle: asyncio.TimerHandle | None = None

    def add(self, notice: Notice) -> None:
        """Hold `notice` for the next flush, which starts `CHAT_NOTICE_DELAY` from the first."""
        index = self.index
        if not self._pending:
            index.record_arrivals(True)
        # Its audience is who is a member *now*: someone who joins the group
        # before the flush must not hear of a join that preceded theirs (their
        # `join` reply already lists that member). For a group, when it came
        # is noted instead of its members (a burst of joins into one group
        # would cost joins x members steps).
        audience = notice.audience
        targets: list[LocalSocket] | int | None
        if audience.shared:
            targets = None
        elif audience.group is not None and not audience.users and not audience.everyone:
            targets = index.clock
        else:
            targets = index.targets(audience)
        self._pending.append((notice, targets))
        if self._flush_handle is None:
            loop = asyncio.get_running_loop()
            self._flush_handle = loop.call_later(
                settings.CHAT_NOTICE_DELAY, lambda: asyncio.ensure_future(self.flush())
            )

    async def flush(self) -> None:
        self._flush_handle = None
        pending, self._pending = drop_flaps(self._pending), []
        index = self.index
        # Presence goes to every socket here but the user's own, so it is
        # `shared` rather than targeted (which costs notices x sockets steps).
        shared: list[int] = []
        own: dict[str, set[int]] = {}
        targeted: dict[LocalSocket, list[int]] = {}
        by_group: dict[int, list[tuple[int, int]]] = {}
        for position, (notice, targets) in enumerate(pending):
            if targets is None:
                shared.append(position)
                username = notice.audience.exclude_username
                if username is not None:
                    own.setdefault(username, set()).add(position)
            elif isinstance(targets, int):
                group_id = notice.audience.group
                assert group_id is not None
                by_group.setdefault(group_id, []).append((targets, position))
            else:
                for conn in targets:
                    if conn in index:
                        targeted.setdefault(conn, []).append(position)
        for group_id, held in by_group.items():
            _to_members(index, group_id, held, pending, targeted)
        # Worked out: what arrives from now on starts a batch of its own.
        index.record_arrivals(bool(self._pending))
        if not pending:
            return
        notices = [notice for notice, _ in pending]
        frames = _Frames(notices)
        receivers = list(index) if shared else list(targeted)
        # The common set is encoded once; another set is kept only while the
        # next sockets (the same user's, in a row) want it, to bound memory.
        shared_text: str | None = None
        last: tuple[tuple[int, ...], str] | None = None
        for conn in receivers:
            positions = shared
            skipped = own.get(conn.username)
            if skipped:
                positions = [i for i in shared if i not in skipped]
            more = targeted.get(conn)
            if more:
                positions = sorted([*positions, *more])
            if not positions:
                continue
            if positions is shared:
                if shared_text is None:
                    shared_text = frames.text(positions)
                text = shared_text
            else:
                key = tuple(positions)
                if last is None or last[0] != key:
                    last = (key, frames.text(positions))
                text = last[1]
            if not written_now(conn, text):
                await write_to(conn, text, [notices[i].event for i in positions])


def _to_members(
    index: SocketIndex,
    group_id: int,
    held: list[tuple[int, int]],
    pending: list[Pending],
    targeted: dict[LocalSocket, list[int]],
) -> None:
    """Add the positions of a group's held notices to each member socket's, in one pass.

    `held`: (clock when it arrived, position), in order. A socket gets those
    that arrived once it was here and its user a member here (a suffix), but
    the ones whose audience leaves it out.
    """
    arrived = [clock for clock, _ in held]
    positions = [position for _, position in held]
    left_out: dict[object, set[int]] = {}
    for position in positions:
        audience = pending[position][0].audience
        for key in (
            ("user", audience.exclude_user),
            ("name", audience.exclude_username),
            ("conn", audience.exclude_connection),
        ):
            if key[1] is not None:
                left_out.setdefault(key, set()).add(position)
    for user_id in list(index.members_here.get(group_id, ())):
        for conn in index.by_user.get(user_id, ()):
            start = bisect_left(arrived, index.here_since(conn, group_id))
            if start == len(positions):
                continue
            chosen = positions[start:]
            if left_out:
                skip = (
                    left_out.get(("user", conn.user_id), set())
                    | left_out.get(("name", conn.username), set())
                    | left_out.get(("conn", conn.connection_id), set())
                )
                if skip:
                    chosen = [p for p in chosen if p not in skip]
            if chosen:
                targeted.setdefault(conn, []).extend(chosen)


class _Frames:
    """Frame texts of a flush's notices: each event encoded once, however many frames."""

    __slots__ = ("_encoded", "_notices")

    def __init__(self, notices: list[Notice]) -> None:
        self._notices = notices
        self._encoded: dict[int, str] = {}

    def _event(self, position: int) -> str:
        text = self._encoded.get(position)
        if text is None:
            text = self._encoded[position] = encode(self._notices[position].event)
        return text

    def text(self, positions: list[int]) -> str:
        """The event alone, or a `batch` of them."""
        return frame_text([self._event(position) for position in positions])


def drop_flaps(pending: list[Pending]) -> list[Pending]:
    """Drop presence flaps: an even number of transitions in a window cancels out."""
    counts: dict[str, int] = {}
    last_position: dict[str, int] = {}
    for position, (notice, _) in enumerate(pending):
        if notice.presence is not None:
            counts[notice.presence] = counts.get(notice.presence, 0) + 1
            last_position[notice.presence] = position
    return [
        entry
        for position, entry in enumerate(pending)
        if (user := entry[0].presence) is None
        or (counts[user] % 2 == 1 and last_position[user] == position)
    ]
