"""Notices (presence, joined, left) held for `CHAT_NOTICE_DELAY` and sent as one frame.

A burst of logins would otherwise cost one frame per pair of users; held
together, each socket gets one `batch`, and a user who comes and goes within
the window (a reload) is not announced at all.
"""

from __future__ import annotations

import asyncio

from django.conf import settings

from chat.delivery.messages import Notice, events_text
from chat.delivery.sockets import LocalSocket, SocketIndex, write_to, written_now

# A notice with the sockets it goes to (None: every socket here but perhaps its
# own user's).
Pending = tuple[Notice, list[LocalSocket] | None]


class NoticeBatcher:
    """Notices waiting for the next flush to the sockets of `index`."""

    def __init__(self, index: SocketIndex) -> None:
        self.index = index
        self._pending: list[Pending] = []
        self._flush_handle: asyncio.TimerHandle | None = None

    def add(self, notice: Notice) -> None:
        """Hold `notice` for the next flush, which starts `CHAT_NOTICE_DELAY` from the first."""
        # Its audience is who is a member *now*: someone who joins the group
        # before the flush must not hear of a join that preceded theirs (their
        # `join` reply already lists that member).
        targets = None if notice.audience.shared else self.index.targets(notice.audience)
        self._pending.append((notice, targets))
        if self._flush_handle is None:
            loop = asyncio.get_running_loop()
            self._flush_handle = loop.call_later(
                settings.CHAT_NOTICE_DELAY, lambda: asyncio.ensure_future(self.flush())
            )

    async def flush(self) -> None:
        self._flush_handle = None
        pending, self._pending = drop_flaps(self._pending), []
        if not pending:
            return
        # Presence goes to every socket here but the user's own, so it is
        # `shared` rather than targeted (which costs notices x sockets steps).
        shared: list[int] = []
        own: dict[str, set[int]] = {}
        targeted: dict[LocalSocket, list[int]] = {}
        notices = [notice for notice, _ in pending]
        index = self.index
        for position, (notice, targets) in enumerate(pending):
            if targets is None:
                shared.append(position)
                username = notice.audience.exclude_username
                if username is not None:
                    own.setdefault(username, set()).add(position)
            else:
                for conn in targets:
                    if conn in index:
                        targeted.setdefault(conn, []).append(position)
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
                    shared_text = notices_text(notices, positions)
                text = shared_text
            else:
                key = tuple(positions)
                if last is None or last[0] != key:
                    last = (key, notices_text(notices, positions))
                text = last[1]
            if not written_now(conn, text):
                await write_to(conn, text, [notices[i].event for i in positions])


def notices_text(notices: list[Notice], positions: list[int]) -> str:
    """The frame text of these notices: the event alone, or a `batch` of them."""
    return events_text([notices[i].event for i in positions])


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
