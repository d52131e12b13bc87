"""Stored messages and events into layer messages: which layer groups, and how grouped.

Consecutive messages to the same audience travel together: one `group_send`
per layer group, one layer message for a receiving worker to take, and one
`batch` frame per socket (docs/protocol.md: events already waiting for a
connection may share a frame). Under load the send queue hands over
everything stored meanwhile, so these per-message costs shrink as the load
grows; a message alone goes as it always did.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from chat.delivery.messages import (
    LAYER_ALL,
    Audience,
    Deliver,
    LayerMessage,
    MemberChange,
    Notice,
    Typing,
    events_text,
    group_layer_group,
    user_layer_group,
)
from chat.message_changes import Change
from chat.messaging import StoredMessage

# Most messages carried by one layer message and one frame. Bodies are bounded
# (CHAT_MAX_BODY_CHARS), so this bounds the frame; a client gets at most this
# many messages to unwrap at once.
MAX_RUN = 50


def deliveries(
    messages: Sequence[StoredMessage], *, origin: str, stored_at: float = 0.0
) -> list[tuple[str, Deliver]]:
    """(layer group, message) to publish for `messages`, in order; runs keep their order."""
    sends: list[tuple[str, Deliver]] = []
    for run in audience_runs(messages):
        events = tuple(stored.event for stored in run)
        first, count = run[0], len(run)
        text = events_text(events)
        if first.everyone:
            audience = Audience(everyone=True)
            sends.append((LAYER_ALL, Deliver(text, events, audience, origin, count, stored_at)))
        elif first.group_id is not None:
            audience = Audience(group=first.group_id)
            sends.append(
                (
                    group_layer_group(first.group_id),
                    Deliver(text, events, audience, origin, count, stored_at),
                )
            )
        else:
            sends.extend(
                (
                    user_layer_group(u),
                    Deliver(text, events, Audience(users=(u,)), origin, count, stored_at),
                )
                for u in first.user_ids
            )
    return sends


def audience_runs(messages: Sequence[StoredMessage]) -> Iterator[list[StoredMessage]]:
    """Consecutive messages to the same audience, at most `MAX_RUN` together."""
    run: list[StoredMessage] = []
    for stored in messages:
        if run and (len(run) == MAX_RUN or _audience(run[0]) != _audience(stored)):
            yield run
            run = []
        run.append(stored)
    if run:
        yield run


def _audience(stored: StoredMessage) -> tuple[object, ...]:
    if stored.everyone:
        return ("all",)
    if stored.group_id is not None:
        return ("group", stored.group_id)
    return ("users", stored.user_ids)


# -- events that are not stored messages (read, receipt, typing, joined/left) --

Addressed = list[tuple[str, LayerMessage]]


def to_user(
    user_id: int, event: dict[str, Any], *, exclude_connection: str | None = None
) -> Addressed:
    """An event for every socket of one user, on every worker (read, receipt)."""
    audience = Audience(users=(user_id,), exclude_connection=exclude_connection)
    return [(user_layer_group(user_id), Deliver.of([event], audience))]


def to_group(
    group_id: int,
    event: dict[str, Any],
    *,
    exclude_user: int | None = None,
    exclude_connection: str | None = None,
) -> Addressed:
    """An event for a group's online members (but one user, or one connection), on every worker."""
    audience = Audience(
        group=group_id, exclude_user=exclude_user, exclude_connection=exclude_connection
    )
    return [(group_layer_group(group_id), Deliver.of([event], audience))]


def to_everyone(event: dict[str, Any], *, exclude_connection: str | None = None) -> Addressed:
    """An event for every socket online, on every worker (a changed display name)."""
    audience = Audience(everyone=True, exclude_connection=exclude_connection)
    return [(LAYER_ALL, Deliver.of([event], audience))]


def to_username(username: str, event: dict[str, Any]) -> Addressed:
    """An event for every socket of a user known by name only (typing), on every worker."""
    return [(LAYER_ALL, Typing(event, username))]


def membership_notice_pair(
    event: dict[str, Any],
    *,
    user_id: int,
    group_id: int,
    joined: bool,
    exclude_connection: str | None,
    by_connection: str | None = None,
) -> tuple[Notice, Notice]:
    """`joined`/`left` for the group's online members, and for the user's other sockets.

    Both travel with presence, to every worker (`LAYER_ALL`, `Hub.announcing`):
    one layer message for a burst of joins. The user's own copy carries the
    change, so that each worker with one of their sockets updates its index
    and layer groups. A change made by another member (1.2: `invite`,
    `remove`) skips `by_connection`, the socket that made it, which gets the
    reply instead.
    """
    group_audience = Audience(
        group=group_id, exclude_user=user_id, exclude_connection=by_connection
    )
    return (
        Notice(event, group_audience),
        Notice(
            event,
            Audience(users=(user_id,), exclude_connection=exclude_connection),
            member_change=MemberChange(user_id=user_id, group_id=group_id, joined=joined),
        ),
    )


def to_message_audience(
    change: Change, event: dict[str, Any], *, exclude_connection: str | None = None
) -> Addressed:
    """A change's event (edited, deleted, reaction) for the message's audience, on every worker.

    `exclude_connection`: the socket that made the change, which gets the reply instead.
    """
    if change.everyone:
        audience = Audience(everyone=True, exclude_connection=exclude_connection)
        return [(LAYER_ALL, Deliver.of([event], audience))]
    if change.group_id is not None:
        audience = Audience(group=change.group_id, exclude_connection=exclude_connection)
        return [(group_layer_group(change.group_id), Deliver.of([event], audience))]
    return [
        (
            user_layer_group(user_id),
            Deliver.of([event], Audience(users=(user_id,), exclude_connection=exclude_connection)),
        )
        for user_id in change.user_ids
    ]
