"""Storing messages and reading them back: send, history, sync.

These are plain synchronous functions over the ORM; the consumers call them
through `database_sync_to_async`, tests call them directly.

Ordering guarantee. `sync(since=N)` must never miss a committed message. With
a database sequence, an id can be allocated by a slow transaction and become
visible *after* higher ids were already delivered, so a client that synced
past them would skip it forever. Message inserts are therefore serialised:
under PostgreSQL by a transaction-scoped advisory lock taken before the id is
allocated, under SQLite by its single writer lock (taken at BEGIN, see
settings). Ids thus become visible in id order.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.db import DatabaseError, connection, transaction
from django.db.models import Max

from chat.models import ChatGroup, Membership, Message
from chat.protocol import (
    NO_SUCH_USER,
    NOT_MEMBER,
    SYNC_MAX_MESSAGES,
    UNAVAILABLE,
    Address,
    ChatError,
)

# Arbitrary, fixed key of the PostgreSQL advisory lock that orders inserts.
_MESSAGE_ORDER_LOCK = 0x63686174  # "chat"


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A committed message and who must receive it live."""

    id: int
    ts: str
    event: dict[str, Any]
    # Exactly one of these describes the audience.
    user_ids: tuple[int, ...] = ()
    group_id: int | None = None
    everyone: bool = False


def format_ts(moment: datetime) -> str:
    """ISO 8601 in UTC with a Z, to the millisecond."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def message_json(message: Message) -> dict[str, Any]:
    """A message as the protocol writes it (without `type`)."""
    to: dict[str, Any]
    if message.kind == Message.Kind.DIRECT:
        assert message.recipient is not None
        to = {"user": message.recipient.get_username()}
    elif message.kind == Message.Kind.GROUP:
        assert message.group is not None
        to = {"group": message.group.name}
    else:
        to = {"all": True}
    return {
        "id": message.id,
        "from": message.sender.get_username(),
        "to": to,
        "body": message.body,
        "ts": format_ts(message.created_at),
    }


def _find_user(username: str) -> User:
    user_model = get_user_model()
    try:
        return user_model._default_manager.get(**{user_model.USERNAME_FIELD: username})
    except user_model.DoesNotExist:
        raise ChatError(NO_SUCH_USER, f"there is no user {username!r}") from None


def _member_group(user: User, name: str) -> ChatGroup:
    group = ChatGroup.objects.filter(name=name, memberships__user_id=user.pk).first()
    if group is None:
        raise ChatError(NOT_MEMBER, f"you are not a member of group {name!r}")
    return group


def _lock_message_order() -> None:
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_MESSAGE_ORDER_LOCK])


def message_send(*, sender: User, to: Address, body: str) -> StoredMessage:
    """Store a message for its audience; raise `ChatError` if it may not be sent."""
    try:
        recipient = _find_user(to.name) if to.kind == "user" else None
        group = _member_group(sender, to.name) if to.kind == "group" else None
        with transaction.atomic():
            _lock_message_order()
            message = Message.objects.create(
                kind={"user": Message.Kind.DIRECT, "group": Message.Kind.GROUP}.get(
                    to.kind, Message.Kind.ALL
                ),
                sender=sender,
                recipient=recipient,
                group=group,
                body=body,
                created_at=datetime.now(UTC),
            )
    except DatabaseError:
        raise ChatError(
            UNAVAILABLE, "the message store failed; nothing was stored, try again"
        ) from None
    event = {"type": "message", **message_json(message)}
    if recipient is not None:
        return StoredMessage(
            message.id, event["ts"], event, user_ids=tuple({sender.pk, recipient.pk})
        )
    if group is not None:
        return StoredMessage(message.id, event["ts"], event, group_id=group.pk)
    return StoredMessage(message.id, event["ts"], event, everyone=True)


def message_history(
    *, user: User, of: Address, before: int | None, limit: int
) -> list[dict[str, Any]]:
    """The newest `limit` messages of one conversation (ids below `before`), oldest first."""
    if of.kind == "user":
        messages = Message.objects.between(user.pk, _find_user(of.name).pk)
    elif of.kind == "group":
        messages = Message.objects.in_group(_member_group(user, of.name).pk)
    else:
        messages = Message.objects.broadcasts()
    if before is not None:
        messages = messages.filter(id__lt=before)
    newest = messages.select_related("sender", "recipient", "group").order_by("-id")[:limit]
    return [message_json(m) for m in reversed(newest)]


def message_sync(*, user: User, since: int) -> tuple[list[dict[str, Any]], bool]:
    """Every message the user may see with id > `since`, oldest first, and whether more wait."""
    rows = list(
        Message.objects.visible_to(user.pk)
        .filter(id__gt=since)
        .select_related("sender", "recipient", "group")
        .order_by("id")[: SYNC_MAX_MESSAGES + 1]
    )
    more = len(rows) > SYNC_MAX_MESSAGES
    return [message_json(m) for m in rows[:SYNC_MAX_MESSAGES]], more


def last_visible_id(*, user: User) -> int:
    """The newest message id this user may see, or 0."""
    return Message.objects.visible_to(user.pk).aggregate(last=Max("id"))["last"] or 0


def is_member(*, user_id: int, group_id: int) -> bool:
    return Membership.objects.filter(user_id=user_id, group_id=group_id).exists()
