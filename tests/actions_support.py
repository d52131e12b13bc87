"""What the action tests share: services with real parts and an outbox that records.

Actions run here without a socket or a hub: the parts are the real ones
(send queue, in-memory rate limiters and presence, the read-position
coalescer) and the outbox keeps each event with the audience it was named for.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Container
from dataclasses import dataclass, field
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async

from chat.actions import Actor, Services
from chat.coalesce import Coalescer, bulk_read
from chat.conversations import ReadMove, ReadRequest, read_positions_move
from chat.groups import MembershipChange
from chat.joining import JoinRequest, group_join_many
from chat.messaging import StoredMessage, last_visible_marks
from chat.presence import MemoryPresenceStore
from chat.ratelimit import MemoryRateLimiter, RateLimiter
from chat.send_queue import SendQueue
from tests.chatclient import TIMEOUT


@dataclass
class RecordingOutbox:
    """`Outbox` and `Roster` of the hub, recording (audience, event) in order."""

    told: list[tuple[tuple[Any, ...], dict[str, Any]]] = field(default_factory=list)
    online_users: tuple[str, ...] = ()
    groups: dict[int, set[int]] = field(default_factory=dict)

    async def to_user(
        self, user_id: int, event: dict[str, Any], *, exclude_connection: str | None = None
    ) -> None:
        self.told.append((("user", user_id, exclude_connection), event))

    async def to_username(self, username: str, event: dict[str, Any]) -> None:
        self.told.append((("username", username), event))

    async def to_group(self, group_id: int, event: dict[str, Any], *, exclude_user: int) -> None:
        self.told.append((("group", group_id, exclude_user), event))

    async def to_message_audience(
        self, change: Any, event: dict[str, Any], *, exclude_connection: str | None = None
    ) -> None:
        audience = ("message", change.user_ids, change.group_id, change.everyone)
        self.told.append(((*audience, exclude_connection), event))

    async def renamed(
        self,
        event: dict[str, Any],
        *,
        user_id: int,
        username: str,
        name: str,
        exclude_connection: str,
    ) -> None:
        self.told.append((("renamed", user_id, exclude_connection), event))

    async def group_receipt(self, *, reader_id: int, group_id: int, event: dict[str, Any]) -> None:
        self.told.append((("group receipt", group_id, reader_id), event))

    async def membership_changed(
        self,
        event: dict[str, Any],
        *,
        user_id: int,
        group_id: int,
        joined: bool,
        exclude_connection: str,
        announce: bool,
    ) -> None:
        members = self.groups.setdefault(user_id, set())
        (members.add if joined else members.discard)(group_id)
        if announce:
            self.told.append((("members of", group_id, user_id, exclude_connection), event))

    async def online(self) -> frozenset[str]:
        return frozenset(self.online_users)

    async def online_names(self) -> tuple[str, ...]:
        return tuple(sorted(self.online_users))

    def groups_here(self, user_id: int) -> Container[int]:
        return self.groups.get(user_id, set())


class Parts:
    """A worker's parts that actions use, the real ones, with delivery recorded."""

    def __init__(self) -> None:
        self.delivered: list[StoredMessage] = []
        self._more = asyncio.Event()
        self.send_queue = SendQueue(deliver=self._deliver)
        self.rate_limiter: RateLimiter = MemoryRateLimiter(burst=1000, per_second=1000)
        self.membership_limiter: RateLimiter | None = None
        self.presence = MemoryPresenceStore()
        self.group_named: dict[str, tuple[int, str]] = {}
        self.move_read_position: Coalescer[ReadRequest, ReadMove] = Coalescer(
            database_sync_to_async(read_positions_move)
        )
        self.join_group: Coalescer[JoinRequest, MembershipChange] = Coalescer(
            database_sync_to_async(group_join_many)
        )
        self.last_marks_of: Coalescer[int, tuple[int, int]] = bulk_read(last_visible_marks)

    async def _deliver(self, messages: list[StoredMessage]) -> None:
        self.delivered.extend(messages)
        self._more.set()

    async def delivered_at_least(self, count: int) -> list[StoredMessage]:
        """The messages handed to delivery, once there are `count` (else a timeout)."""
        async with asyncio.timeout(TIMEOUT):
            while len(self.delivered) < count:
                self._more.clear()
                await self._more.wait()
        return self.delivered


@dataclass
class Bench:
    services: Services
    parts: Parts
    outbox: RecordingOutbox


@pytest.fixture
async def bench(transactional_db: None) -> AsyncIterator[Bench]:
    parts = Parts()
    outbox = RecordingOutbox()
    yield Bench(Services(parts, outbox=outbox, roster=outbox), parts, outbox)
    parts.send_queue.close()


def actor(user: Any, connection_id: str = "conn-1") -> Actor:
    return Actor(user, user.pk, user.get_username(), connection_id)


def run_sync(function: Any) -> Any:
    """A database helper as a coroutine function (the test runs in the event loop)."""
    return sync_to_async(function, thread_sensitive=True)
