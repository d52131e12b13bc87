"""What actions work with: the acting user, the outbox and the worker's services.

An action never looks a collaborator up (no `current_worker()`): the socket
hands it the `Services` its worker built (`chat.worker.Worker.services`) and
the `Actor` it speaks for. Tests build both without a socket.
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from chat.coalesce import Coalescer
    from chat.conversations import ReadMove, ReadRequest
    from chat.groups import MembershipChange
    from chat.joining import JoinRequest
    from chat.message_changes import Change
    from chat.presence import PresenceStore
    from chat.ratelimit import RateLimiter
    from chat.send_queue import SendQueue

Event = dict[str, Any]
Reply = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Actor:
    """The user a command is carried out for, and the connection it came on."""

    user: Any
    user_id: int
    username: str
    connection_id: str


class Outbox(Protocol):
    """Where actions put the events they cause, each with its audience; the hub carries them.

    Stored messages do not pass here: the send queue hands them to the hub
    once committed, in id order.
    """

    async def to_user(
        self, user_id: int, event: Event, *, exclude_connection: str | None = None
    ) -> None:
        """Every socket of one user, on every worker."""

    async def to_username(self, username: str, event: Event) -> None:
        """Every socket of a user known by name only (typing), on every worker."""

    async def to_group(
        self,
        group_id: int,
        event: Event,
        *,
        exclude_user: int | None = None,
        exclude_connection: str | None = None,
    ) -> None:
        """A group's online members (but one user, or one connection), on every worker."""

    async def renamed(
        self, event: Event, *, user_id: int, username: str, name: str, exclude_connection: str
    ) -> None:
        """Every socket online, the user's own too, on every worker (`event` is `profile`);
        the workers with the user's sockets note `name` for their presence notices."""

    async def to_message_audience(
        self, change: Change, event: Event, *, exclude_connection: str | None = None
    ) -> None:
        """A changed message's audience (edited, deleted, reaction), on every worker."""

    async def group_receipt(self, *, reader_id: int, group_id: int, event: Event) -> None:
        """A read receipt for a group's members, at most one per reader a moment."""

    async def membership_changed(
        self,
        event: Event,
        *,
        user_id: int,
        group_id: int,
        joined: bool,
        exclude_connection: str | None,
        announce: bool,
        by_connection: str | None = None,
    ) -> None:
        """Note a join or leave at once; with `announce`, tell the group's online
        members and the user's other sockets (`event` is `joined` or `left`).

        A change made by someone else (1.2: `invite`, `remove`) tells all the
        user's sockets (`exclude_connection` None) and skips `by_connection`,
        the acting socket, among the group's members."""


class Roster(Protocol):
    """Who is online and, on this worker, in which groups (the hub's view)."""

    async def online(self) -> frozenset[str]: ...

    async def online_names(self) -> tuple[str, ...]: ...

    def groups_here(self, user_id: int) -> Container[int]:
        """Ids of the groups a user with a socket on this worker is in."""
        ...


class WorkerParts(Protocol):
    """The parts of a worker that actions use (`chat.worker.Worker` has them)."""

    @property
    def send_queue(self) -> SendQueue: ...

    @property
    def rate_limiter(self) -> RateLimiter: ...

    @property
    def membership_limiter(self) -> RateLimiter | None: ...

    @property
    def presence(self) -> PresenceStore: ...

    @property
    def group_named(self) -> dict[str, tuple[int, str]]: ...

    @property
    def move_read_position(self) -> Coalescer[ReadRequest, ReadMove]: ...

    @property
    def last_marks_of(self) -> Coalescer[int, tuple[int, int]]: ...

    @property
    def join_group(self) -> Coalescer[JoinRequest, MembershipChange]: ...


class Services:
    """One worker's collaborators for actions: the hub's outbox and roster, and its parts.

    The parts are read at each use, so a settings change (a new rate limit,
    say) reaches sockets already open, as it did before actions existed.
    """

    __slots__ = ("_parts", "outbox", "roster")

    def __init__(self, parts: WorkerParts, *, outbox: Outbox, roster: Roster) -> None:
        self._parts = parts
        self.outbox = outbox
        self.roster = roster

    @property
    def send_queue(self) -> SendQueue:
        return self._parts.send_queue

    @property
    def rate_limiter(self) -> RateLimiter:
        return self._parts.rate_limiter

    @property
    def membership_limiter(self) -> RateLimiter | None:
        return self._parts.membership_limiter

    @property
    def presence(self) -> PresenceStore:
        return self._parts.presence

    @property
    def group_named(self) -> dict[str, tuple[int, str]]:
        """Groups this worker has seen, by `group_key`: (id, spelling). Typing checks here."""
        return self._parts.group_named

    @property
    def move_read_position(self) -> Coalescer[ReadRequest, ReadMove]:
        return self._parts.move_read_position

    @property
    def last_marks_of(self) -> Coalescer[int, tuple[int, int]]:
        """A user's newest visible message id and change `rev`, for the greeting."""
        return self._parts.last_marks_of

    @property
    def join_group(self) -> Coalescer[JoinRequest, MembershipChange]:
        """Joins arriving together, committed in one transaction (`chat.joining`)."""
        return self._parts.join_group


def reply(kind: str, ref: str | None, **fields: Any) -> Reply:
    """A reply event, echoing the command's `ref` when it had one."""
    event = {"type": kind, **fields}
    if ref is not None:
        event["ref"] = ref
    return event
