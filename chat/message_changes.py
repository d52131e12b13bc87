"""Changing stored messages (protocol 1.2): edit, delete, react, unreact; and `changes`.

Change numbers. One counter numbers every change: it is the counter that
gives messages their ids (PostgreSQL's sequence of the id column, SQLite's
`sqlite_sequence` row), so storing a message takes its `rev` with its id and
writes nothing more (`rev` stays NULL, read as the id). An edit, a delete or a
reaction change takes the next number from that counter for the message's
`rev`. `changes(since)` must never miss a change, for the reason `sync` must
never miss a message (chat.messaging): so every change takes the same order
lock as the message inserts (PostgreSQL's advisory lock; SQLite's single
writer lock, taken at BEGIN) before it draws its number, and commits while
holding it. Numbers thus become visible in number order, across workers.

Plain synchronous functions over the ORM, like chat.messaging.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import emoji as emoji_data
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.db import connection, transaction

from chat.mentions import MentionRequest, resolve, stored_form
from chat.messaging import (
    _MESSAGE_ORDER_LOCK,
    MESSAGE_RELATED,
    fit_in_bytes,
    message_json,
    messages_json,
)
from chat.models import Message, MessageEdit, Reaction, Upload
from chat.protocol import (
    BAD_EMOJI,
    NO_SUCH_MESSAGE,
    NOT_YOURS,
    TOO_LATE,
    TOO_MANY_REACTIONS,
    ChatError,
)
from chat.search import forget_deleted

# Distinct emoji one message may hold.
MAX_EMOJI_PER_MESSAGE = 20
_FULLY_QUALIFIED = emoji_data.STATUS["fully_qualified"]


def is_emoji(text: str) -> bool:
    """Whether `text` is exactly one fully-qualified emoji sequence (Unicode's emoji-test.txt)."""
    entry = emoji_data.EMOJI_DATA.get(text)
    return entry is not None and entry["status"] == _FULLY_QUALIFIED


@dataclass(frozen=True, slots=True)
class Change:
    """What a change command did: the reply's content and who is told.

    `changed` False: the command changed nothing (a repeated reaction, say);
    it is answered but no one is told.
    """

    kind: Literal["edited", "deleted", "reaction"]
    # The event without `type` and `ref`: the message object, or a reaction's fields.
    event: dict[str, Any]
    changed: bool
    # Exactly one of these describes the audience (as chat.messaging.StoredMessage).
    user_ids: tuple[int, ...] = ()
    group_id: int | None = None
    everyone: bool = False
    # `edited` only: the usernames the edit mentions that it did not before.
    new_mentions: list[str] = field(default_factory=list)


@contextmanager
def _in_change_order() -> Iterator[None]:
    """A transaction holding the order lock that message inserts take."""
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_MESSAGE_ORDER_LOCK])
        yield


def _next_rev() -> int:
    """The next number of the counter that numbers messages and changes (under the lock)."""
    table = Message._meta.db_table
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SELECT nextval(pg_get_serial_sequence(%s, 'id'))", [table])
        else:
            cursor.execute(
                "UPDATE sqlite_sequence SET seq = seq + 1 WHERE name = %s RETURNING seq", [table]
            )
        row = cursor.fetchone()
    if row is None:
        raise RuntimeError("the message counter has no row: no message was ever stored")
    return int(row[0])


def _bump_rev(message_id: int) -> int:
    """Give the message the next change number (under the lock); PostgreSQL in one statement."""
    if connection.vendor != "postgresql":
        rev = _next_rev()
        Message.objects.filter(id=message_id).update(rev=rev)
        return rev
    table = connection.ops.quote_name(Message._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET rev = nextval(pg_get_serial_sequence(%s, 'id'))"
            " WHERE id = %s RETURNING rev",
            [Message._meta.db_table, message_id],
        )
        row = cursor.fetchone()
    assert row is not None
    return int(row[0])


def _audience(message: Message) -> dict[str, Any]:
    if message.kind == Message.Kind.DIRECT:
        assert message.recipient_id is not None
        return {"user_ids": tuple({message.sender_id, message.recipient_id})}
    if message.kind == Message.Kind.GROUP:
        return {"group_id": message.group_id}
    return {"everyone": True}


def _visible(user: User, message_id: int, *, deleted_too: bool = False) -> Message:
    """The message if this user may see it (and, unless `deleted_too`, it is not deleted)."""
    found = (
        Message.objects.visible_to(user.pk)
        .filter(id=message_id)
        .select_related(*MESSAGE_RELATED)
        .first()
    )
    if found is None or (found.deleted and not deleted_too):
        raise ChatError(NO_SUCH_MESSAGE, f"there is no message {message_id}")
    return found


def _mention_request(message: Message, body: str) -> MentionRequest:
    if message.kind == Message.Kind.DIRECT:
        assert message.recipient is not None
        return MentionRequest(body, peer=message.recipient.get_username())
    if message.kind == Message.Kind.GROUP:
        assert message.group is not None
        return MentionRequest(body, group=message.group.name)
    return MentionRequest(body)


def message_edit(*, user: User, message_id: int, body: str) -> Change:
    """Replace a message's body; the earlier body is kept (admin only).

    Only the author, within CHAT_EDIT_WINDOW seconds of its `ts` (0: any
    time), and not once deleted. `body` is already valid as `send`'s.
    """
    with _in_change_order():
        message = _visible(user, message_id)
        if message.sender_id != user.pk:
            raise ChatError(NOT_YOURS, "only its author may edit a message")
        now = datetime.now(UTC)
        window = settings.CHAT_EDIT_WINDOW
        if window and now - message.created_at > timedelta(seconds=window):
            raise ChatError(TOO_LATE, f"a message can be edited for {window} seconds after it")
        if body == message.body:
            return Change("edited", messages_json([message])[0], False, **_audience(message))
        before = set(message.mentioned_names())
        [names] = resolve([_mention_request(message, body)])
        MessageEdit.objects.create(
            message=message, body=message.body, edited_by=user, edited_at=now
        )
        message.body = body
        message.mentions = stored_form(names)
        message.edited_at = now
        message.rev = _next_rev()
        message.save(update_fields=["body", "mentions", "edited_at", "rev"])
    return Change(
        "edited",
        messages_json([message])[0],
        True,
        new_mentions=sorted(set(names) - before),
        **_audience(message),
    )


def message_delete(*, user: User, message_id: int) -> Change:
    """Delete a message, leaving a tombstone: its author, or a user with `chat.delete_message`.

    Deleting a deleted message changes nothing (a repeated command after a
    lost reply is harmless).
    """
    with _in_change_order():
        message = _visible(user, message_id, deleted_too=True)
        if message.sender_id != user.pk and not _may_delete_any(user):
            raise ChatError(NOT_YOURS, "only its author or a moderator may delete a message")
        if message.deleted:
            return Change("deleted", messages_json([message])[0], False, **_audience(message))
        _tombstone(message)
    return Change("deleted", messages_json([message])[0], True, **_audience(message))


def _may_delete_any(user: User) -> bool:
    """Read afresh: a socket's user object keeps the permissions it was opened with."""
    fresh = get_user_model()._default_manager.filter(pk=user.pk).first()
    return fresh is not None and fresh.is_active and fresh.has_perm("chat.delete_message")


def message_tombstone(message_id: int) -> Change | None:
    """Delete a message as a moderator does, without a user (the admin); None if it is gone."""
    with _in_change_order():
        message = Message.objects.select_related(*MESSAGE_RELATED).filter(id=message_id).first()
        if message is None:
            return None
        if message.deleted:
            return Change("deleted", messages_json([message])[0], False, **_audience(message))
        _tombstone(message)
    return Change("deleted", messages_json([message])[0], True, **_audience(message))


def _tombstone(message: Message) -> None:
    """Remove all that the message said: body, earlier bodies, reactions, mentions, reply, files."""
    MessageEdit.objects.filter(message=message).delete()
    # Their stored files go once this commits (chat.uploads); their URLs 404 from then.
    Upload.objects.filter(message=message).delete()
    Reaction.objects.filter(message=message).delete()
    message.body = ""
    message.mentions = ""
    message.deleted = True
    message.reply_to = None
    message.rev = _next_rev()
    message.save(update_fields=["body", "mentions", "deleted", "reply_to", "rev"])
    forget_deleted()


def message_react(*, user: User, message_id: int, emoji: str, on: bool) -> Change:
    """Add (`on`) or remove one user's reaction with one emoji.

    Adding one that is there, or removing one that is not, changes nothing.
    """
    if not is_emoji(emoji):
        raise ChatError(BAD_EMOJI, "emoji must be one fully-qualified Unicode emoji")
    with _in_change_order():
        message = _visible(user, message_id)
        # All of the message's reactions in one read: the rules and the count.
        rows = list(Reaction.objects.filter(message=message).values_list("emoji", "user_id"))
        mine = (emoji, user.pk) in rows
        count = sum(1 for used, _ in rows if used == emoji)
        changed = False
        if on and not mine:
            used_emoji = {used for used, _ in rows}
            if emoji not in used_emoji and len(used_emoji) >= MAX_EMOJI_PER_MESSAGE:
                raise ChatError(
                    TOO_MANY_REACTIONS,
                    f"a message holds at most {MAX_EMOJI_PER_MESSAGE} different emoji",
                )
            Reaction.objects.create(message=message, user_id=user.pk, emoji=emoji)
            changed, count = True, count + 1
        elif not on and mine:
            Reaction.objects.filter(message=message, user_id=user.pk, emoji=emoji).delete()
            changed, count = True, count - 1
        if changed:
            message.rev = _bump_rev(message.id)
    event = {
        "id": message.id,
        "to": message_json(message)["to"],
        "emoji": emoji,
        "user": user.get_username(),
        "on": on,
        "count": count,
        "rev": message.current_rev,
    }
    return Change("reaction", event, changed, **_audience(message))


def message_changes(
    *, user: User, since: int, limit: int, max_bytes: int = 0
) -> tuple[list[dict[str, Any]], bool]:
    """Every message the user may see whose `rev` > `since`, as it is now, in `rev` order.

    At most `limit` and `max_bytes` of JSON (0: unbounded); and whether more
    wait. Messages that never changed have `rev` = id (NULL stored), the others
    are found through the changed-message indexes: two queries, merged.
    """
    visible = Message.objects.visible_to(user.pk).select_related(*MESSAGE_RELATED)
    stored = list(visible.filter(rev__isnull=True, id__gt=since).order_by("id")[: limit + 1])
    changed = list(visible.filter(rev__gt=since).order_by("rev")[: limit + 1])
    merged = sorted(stored + changed, key=lambda m: m.current_rev)
    page = merged[:limit]
    kept = fit_in_bytes(messages_json(page), max_bytes)
    return kept, len(merged) > len(kept)


def change_event(change: Change, ref: str | None = None) -> dict[str, Any]:
    """The reply (with `ref`) or event (without) of a change (docs/protocol.md, 1.2)."""
    event: dict[str, Any] = {"type": change.kind}
    if ref is not None:
        event["ref"] = ref
    event.update(change.event)
    if change.kind != "reaction":
        # Flat like a `message` event, so one handler takes both; and whole
        # under `message` for clients that keep the object apart.
        event["message"] = change.event
    if change.kind == "edited":
        event["new_mentions"] = change.new_mentions
    return event
