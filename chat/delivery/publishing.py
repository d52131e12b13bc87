"""Stored messages into layer messages: which layer groups, and how they are grouped.

Consecutive messages to the same audience travel together: one `group_send`
per layer group, one layer message for a receiving worker to take, and one
`batch` frame per socket (docs/protocol.md: events already waiting for a
connection may share a frame). Under load the send queue hands over
everything stored meanwhile, so these per-message costs shrink as the load
grows; a message alone goes as it always did.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from chat.delivery.messages import (
    LAYER_ALL,
    Audience,
    Deliver,
    group_layer_group,
    user_layer_group,
)
from chat.messaging import StoredMessage
from chat.protocol import encode

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
        texts = [encode(stored.event) for stored in run]
        text = texts[0] if len(texts) == 1 else batch_text(texts)
        first, count = run[0], len(run)
        if first.everyone:
            audience = Audience(everyone=True)
            sends.append((LAYER_ALL, Deliver(text, audience, origin, count, stored_at)))
        elif first.group_id is not None:
            audience = Audience(group=first.group_id)
            sends.append(
                (
                    group_layer_group(first.group_id),
                    Deliver(text, audience, origin, count, stored_at),
                )
            )
        else:
            sends.extend(
                (user_layer_group(u), Deliver(text, Audience(users=(u,)), origin, count, stored_at))
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


def batch_text(texts: list[str]) -> str:
    """A `batch` event of already encoded events, without encoding them again."""
    return '{"type":"batch","events":[' + ",".join(texts) + "]}"
