"""Storing messages and reading them back: send, history, sync.

These are plain synchronous functions over the ORM; the consumers call them
through `database_sync_to_async` (sends go through `chat.send_queue`, which
stores them in batches), tests call them directly.

Ordering guarantee. `sync(since=N)` must never miss a committed message. With
a database sequence, an id can be allocated by a slow transaction and become
visible *after* higher ids were already delivered, so a client that synced
past them would skip it forever. Message inserts are therefore serialised:
under PostgreSQL by a transaction-scoped advisory lock taken before the id is
allocated (in the statement that inserts), under SQLite by its single writer
lock (taken at BEGIN, see settings). Ids thus become visible in id order. A
batch (`message_send_many`) takes the lock once and allocates all its ids under
it, so it commits as one step of that order.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson
from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.db import DatabaseError, IntegrityError, connection, models, transaction
from django.db.models import Q

from chat import audience
from chat.database import note_answered, note_if_timeout
from chat.mentions import MentionRequest, resolve, stored_form
from chat.models import ChatGroup, Membership, Message, Profile, Reaction, Upload, group_key
from chat.profiles import name_of, refresh_names
from chat.protocol import (
    NO_SUCH_MESSAGE,
    NO_SUCH_UPLOAD,
    SYNC_MAX_MESSAGES,
    UNAVAILABLE,
    Address,
    ChatError,
)
from chat.uploads import upload_json

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
    # A send repeated with the `cid` of a message stored earlier: that message,
    # answered again but neither stored nor delivered a second time.
    replayed: bool = False


def format_ts(moment: datetime) -> str:
    """ISO 8601 in UTC with a Z, to the millisecond."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# Messages selected with what `message_json` reads.
MESSAGE_RELATED = (
    "sender__chat_profile",
    "recipient",
    "group",
    "reply_to",
    "reply_to__sender__chat_profile",
)
# Characters of the replied message's body that a reply quotes.
EXCERPT_CHARS = 100
# Reactors listed per emoji; `count` says how many there are in all.
REACTION_USERS = 20


def message_json(
    message: Message,
    reactions: list[dict[str, Any]] | None = None,
    files: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A message as the protocol writes it (without `type`).

    `reactions` as `reactions_of` gives them; a message that never changed
    (`rev` NULL) has none, so callers need not look. `files` as `files_of`
    gives them.
    """
    to: dict[str, Any]
    if message.kind == Message.Kind.DIRECT:
        assert message.recipient is not None
        to = {"user": message.recipient.get_username()}
    elif message.kind == Message.Kind.GROUP:
        assert message.group is not None
        to = {"group": message.group.name}
    else:
        to = {"all": True}
    json = {
        "id": message.id,
        "from": message.sender.get_username(),
        # The sender's name now, not when they sent it (protocol 1.2).
        "from_name": name_of(message.sender),
        "to": to,
        "body": message.body,
        "ts": format_ts(message.created_at),
        "rev": message.current_rev,
        "edited_at": None if message.edited_at is None else format_ts(message.edited_at),
        "deleted": message.deleted,
        "reply_to": None if message.deleted else reply_json(message.reply_to),
        "reactions": [] if message.deleted or reactions is None else reactions,
        "mentions": [] if message.deleted else message.mentioned_names(),
        "files": [] if message.deleted or files is None else files,
    }
    if message.cid is not None:
        json["cid"] = message.cid
    return json


def reply_json(replied: Message | None) -> dict[str, Any] | None:
    """What a reply shows of the message it answers: its current body's start, and
    its sender's name now (1.2 `from_name`; selected with the sender)."""
    if replied is None:
        return None
    return {
        "id": replied.id,
        "from": replied.sender.get_username(),
        "from_name": name_of(replied.sender),
        "excerpt": replied.body[:EXCERPT_CHARS],
    }


def messages_json(
    messages: Sequence[Message], files: dict[int, list[dict[str, Any]]] | None = None
) -> list[dict[str, Any]]:
    """`message_json` of many, their reactions read in one query (none if none changed).

    Their files in one query too, unless the caller knows them (`files`).
    """
    reactions = reactions_of([m.id for m in messages if m.rev is not None and not m.deleted])
    if files is None:
        files = files_of([m.id for m in messages if not m.deleted])
    return [message_json(m, reactions.get(m.id, []), files.get(m.id, [])) for m in messages]


def files_of(message_ids: Sequence[int]) -> dict[int, list[dict[str, Any]]]:
    """Each message's files (1.2), in the order they were uploaded; one query, none if no ids."""
    if not message_ids:
        return {}
    found: dict[int, list[dict[str, Any]]] = {}
    for upload in Upload.objects.filter(message_id__in=message_ids).order_by("created", "pk"):
        assert upload.message_id is not None
        found.setdefault(upload.message_id, []).append(upload_json(upload))
    return found


def reactions_of(message_ids: Sequence[int]) -> dict[int, list[dict[str, Any]]]:
    """Each message's reactions: per emoji in order of first use, its count and first users."""
    if not message_ids:
        return {}
    user_model = get_user_model()
    rows = (
        Reaction.objects.filter(message_id__in=message_ids)
        .order_by("id")
        .values_list("message_id", "emoji", f"user__{user_model.USERNAME_FIELD}")
    )
    found: dict[int, dict[str, dict[str, Any]]] = {}
    for message_id, emoji, username in rows:
        entry = found.setdefault(message_id, {}).setdefault(
            emoji, {"emoji": emoji, "count": 0, "users": []}
        )
        entry["count"] += 1
        if len(entry["users"]) < REACTION_USERS:
            entry["users"].append(username)
    return {message_id: list(by_emoji.values()) for message_id, by_emoji in found.items()}


def _users_named(names: set[str]) -> dict[str, User]:
    """The users with these usernames, by username, in one query."""
    if not names:
        return {}
    user_model = get_user_model()
    users = user_model._default_manager.filter(**{f"{user_model.USERNAME_FIELD}__in": names})
    return {user.get_username(): user for user in users}


def _groups_of_members(pairs: set[tuple[int, str]]) -> dict[tuple[int, str], ChatGroup]:
    """For each (user id, group name) pair whose user is a member: the group, in one query.

    Names match ignoring case (`group_key`); the group keeps its own spelling.

    Hand-written: the same query through the ORM (select_related, two `__in`)
    cost more CPU per send batch on the single database thread than the
    insert itself (figures in bench/RESULTS.md).
    """
    if not pairs:
        return {}
    user_ids = sorted({user_id for user_id, _ in pairs})
    keys = sorted({group_key(name) for _, name in pairs})
    with connection.cursor() as cursor:
        cursor.execute(_member_groups_sql(len(user_ids), len(keys)), [*user_ids, *keys])
        rows = cursor.fetchall()
    found = {
        (member_id, group_key(name)): ChatGroup.from_db(
            connection.alias, ["id", "name"], [group_id, name]
        )
        for group_id, name, member_id in rows
    }
    return {
        (user_id, name): found[user_id, group_key(name)]
        for user_id, name in pairs
        if (user_id, group_key(name)) in found
    }


def _field(model: type[models.Model], name: str) -> models.Field[Any, Any]:
    """A concrete field, for hand-written SQL."""
    field = model._meta.get_field(name)
    assert isinstance(field, models.Field) and field.column
    return field


def _column(model: type[models.Model], name: str) -> str:
    """A field's column, quoted for hand-written SQL."""
    return connection.ops.quote_name(_field(model, name).column or name)


def _member_groups_sql(users: int, names: int) -> str:
    member, member_group = _column(Membership, "user"), _column(Membership, "group")
    group_id, group_name = _column(ChatGroup, "id"), _column(ChatGroup, "name")
    group_key_column = _column(ChatGroup, "key")
    quote = connection.ops.quote_name
    return (
        f"SELECT g.{group_id}, g.{group_name}, m.{member}"
        f" FROM {quote(Membership._meta.db_table)} m"
        f" JOIN {quote(ChatGroup._meta.db_table)} g ON g.{group_id} = m.{member_group}"
        f" WHERE m.{member} IN ({', '.join(['%s'] * users)})"
        f" AND g.{group_key_column} IN ({', '.join(['%s'] * names)})"
    )


@dataclass(frozen=True, slots=True)
class SendRequest:
    """One message someone wants to send."""

    sender: User
    to: Address
    body: str
    # Protocol 1.1: the client's id for this message; a second send with it
    # is answered with the first one's ack.
    cid: str | None = None
    # Protocol 1.2: the id of the message of the same conversation it answers.
    reply_to: int | None = None
    # Protocol 1.2: ids of uploads of the sender's, not yet sent, that it carries.
    files: tuple[str, ...] = ()


def _unavailable() -> ChatError:
    return ChatError(UNAVAILABLE, "the message store failed; nothing was stored, try again")


def message_send(
    *,
    sender: User,
    to: Address,
    body: str,
    cid: str | None = None,
    reply_to: int | None = None,
    files: tuple[str, ...] = (),
) -> StoredMessage:
    """Store a message for its audience; raise `ChatError` if it may not be sent."""
    [result] = message_send_many([SendRequest(sender, to, body, cid, reply_to, files)])
    if isinstance(result, ChatError):
        raise result
    return result


def message_send_many(requests: Sequence[SendRequest]) -> list[StoredMessage | ChatError]:
    """Store a batch of messages together; one result per request, in order.

    Group commit: the audience checks cost one query per kind for the whole
    batch, and the messages that may be sent share one transaction, one order
    lock and one commit, their ids ascending in request order. A request that
    may not be sent gets its `ChatError` and stores nothing; a database failure
    fails every request and stores nothing at all.

    A request whose `cid` its sender already used (stored earlier, or earlier
    in this batch) gets that message back as `replayed`, storing nothing.
    """
    firsts: dict[tuple[int, str], int] = {}
    repeats: dict[int, int] = {}
    unique: list[SendRequest] = []
    for index, request in enumerate(requests):
        if request.cid is not None:
            key = (request.sender.pk, request.cid)
            if key in firsts:
                repeats[index] = firsts[key]
                continue
            firsts[key] = len(unique)
        unique.append(request)
    started = time.monotonic()
    try:
        try:
            results = _send_many(unique)
        except IntegrityError:
            # Another worker stored one of these cids after this statement's
            # snapshot was taken: once more, which now sees it as a repeat.
            results = _send_many(unique)
    except DatabaseError as error:
        # A time limit (chat.database) ends here too: /healthz reports it.
        note_if_timeout(error, "write")
        return [_unavailable() for _ in requests]
    # Stored: whatever stall came before is over (chat.database).
    note_answered(started, "write")
    if not repeats:
        return results
    answers: list[StoredMessage | ChatError] = []
    kept = iter(results)
    for index in range(len(requests)):
        if index in repeats:
            first = results[repeats[index]]
            answers.append(first if isinstance(first, ChatError) else _replay(first))
        else:
            answers.append(next(kept))
    return answers


def _replay(message: StoredMessage) -> StoredMessage:
    return dataclasses.replace(message, replayed=True)


def _stored_earlier(requests: Sequence[SendRequest]) -> dict[tuple[int, str], Message]:
    """The messages stored before under these requests' (sender, cid) pairs, in one query."""
    pairs = {(r.sender.pk, r.cid) for r in requests if r.cid is not None}
    if not pairs:
        return {}
    wanted = Q()
    for sender_id, cid in pairs:
        wanted |= Q(sender_id=sender_id, cid=cid)
    found = Message.objects.filter(wanted).select_related(*MESSAGE_RELATED)
    return {(message.sender_id, message.cid): message for message in found if message.cid}


@dataclass(frozen=True, slots=True)
class _Extras:
    """What protocol 1.2 adds to a send: the resolved mentions, the replied message, the files."""

    mentions: list[str]
    replied: Message | None
    # The uploads it carries as message objects list them (`files_of`'s order).
    files: list[dict[str, Any]] = dataclasses.field(default_factory=list)


class _FilesTaken(IntegrityError):
    """An upload was attached to another message since it was checked: the batch is redone."""


def _extras(requests: Sequence[SendRequest]) -> list[_Extras | ChatError]:
    """Mentions and replies of a batch: one query each, only when some request has them."""
    mentions = resolve(
        [
            MentionRequest(
                r.body,
                peer=r.to.name if r.to.kind == "user" else None,
                group=r.to.name if r.to.kind == "group" else None,
            )
            for r in requests
        ]
    )
    wanted = {r.reply_to for r in requests if r.reply_to is not None}
    replied = (
        Message.objects.select_related("sender__chat_profile", "recipient", "group").in_bulk(wanted)
        if wanted
        else {}
    )
    uploads = _uploads_of(requests)
    claimed: set[str] = set()
    extras: list[_Extras | ChatError] = []
    for request, names in zip(requests, mentions, strict=True):
        target = None if request.reply_to is None else replied.get(request.reply_to)
        if request.reply_to is not None and (
            target is None or not _same_conversation(target, request)
        ):
            extras.append(
                ChatError(NO_SUCH_MESSAGE, f"there is no message {request.reply_to} to answer here")
            )
            continue
        files = _files_for(request, uploads, claimed)
        if isinstance(files, ChatError):
            extras.append(files)
            continue
        extras.append(_Extras(names, target, files))
    return extras


def _uploads_of(requests: Sequence[SendRequest]) -> dict[str, tuple[Upload, str | None]]:
    """The uploads a batch names, each with the `cid` of the message it is in: one query, if any."""
    wanted = {upload for r in requests for upload in r.files}
    if not wanted:
        return {}
    rows = Upload.objects.filter(pk__in=wanted).annotate(sent_cid=models.F("message__cid"))
    return {upload.pk: (upload, upload.sent_cid) for upload in rows}


def _files_for(
    request: SendRequest, uploads: dict[str, tuple[Upload, str | None]], claimed: set[str]
) -> list[dict[str, Any]] | ChatError:
    """The request's files as message objects list them, or `no_such_upload`.

    Each must be the sender's and not yet sent; one already in the message
    this request repeats (same `cid`) passes, for that message is answered
    again. Within a batch the first request naming an upload takes it.
    """
    if not request.files:
        return []
    found: list[Upload] = []
    for upload_id in request.files:
        upload, sent_cid = uploads.get(upload_id, (None, None))
        repeat = upload is not None and request.cid is not None and sent_cid == request.cid
        if (
            upload is None
            or upload.uploader_id != request.sender.pk
            or (upload.message_id is not None and not repeat)
            or (upload.message_id is None and upload_id in claimed)
        ):
            return ChatError(
                NO_SUCH_UPLOAD,
                f"there is no upload {upload_id[:32]!r} of yours that is not sent yet",
            )
        found.append(upload)
    claimed.update(request.files)
    return [upload_json(u) for u in sorted(found, key=lambda u: (u.created, u.pk))]


def _same_conversation(message: Message, request: SendRequest) -> bool:
    """Whether `message` belongs to the conversation `request` sends to (and so is seen)."""
    to = request.to
    if to.kind == "user":
        if message.kind != Message.Kind.DIRECT or message.recipient is None:
            return False
        pair = sorted([message.sender.get_username(), message.recipient.get_username()])
        return pair == sorted([request.sender.get_username(), to.name])
    if to.kind == "group":
        # The sender's membership is checked by the send itself.
        return (
            message.kind == Message.Kind.GROUP
            and message.group is not None
            and message.group.key == group_key(to.name)
        )
    return message.kind == Message.Kind.ALL


def _send_many(requests: Sequence[SendRequest]) -> list[StoredMessage | ChatError]:
    if not requests:
        return []
    extras = _extras(requests)
    accepted = [(r, e) for r, e in zip(requests, extras, strict=True) if isinstance(e, _Extras)]
    if len(accepted) == len(requests):
        return _send_checked(requests, [e for e in extras if isinstance(e, _Extras)])
    stored = iter(_send_checked([r for r, _ in accepted], [e for _, e in accepted]))
    return [next(stored) if isinstance(e, _Extras) else e for e in extras]


def _send_checked(
    requests: Sequence[SendRequest], extras: Sequence[_Extras]
) -> list[StoredMessage | ChatError]:
    if not requests:
        return []
    if connection.vendor == "postgresql":
        return _send_in_one_statement(requests, extras)
    return _send_with_orm(requests, extras)


def _send_with_orm(
    requests: Sequence[SendRequest], extras: Sequence[_Extras]
) -> list[StoredMessage | ChatError]:
    """SQLite (and others): one query per audience kind, then the inserts."""
    refresh_names(r.sender for r in requests)
    recipients = _users_named({r.to.name for r in requests if r.to.kind == "user"})
    groups = _groups_of_members(
        {(r.sender.pk, r.to.name) for r in requests if r.to.kind == "group"}
    )
    earlier = _stored_earlier(requests)
    checked: list[dict[str, Any] | StoredMessage | ChatError] = []
    for request, extra in zip(requests, extras, strict=True):
        if request.cid is not None and (request.sender.pk, request.cid) in earlier:
            checked.append(_replay(_stored(earlier[request.sender.pk, request.cid])))
            continue
        to = request.to
        row: dict[str, Any] = {
            "sender": request.sender,
            "body": request.body,
            "cid": request.cid,
            "reply_to": extra.replied,
            "mentions": stored_form(extra.mentions),
        }
        if to.kind == "user":
            row.update(kind=Message.Kind.DIRECT, recipient=recipients.get(to.name))
            if row["recipient"] is None:
                checked.append(audience.refusal(to))
                continue
        elif to.kind == "group":
            row.update(kind=Message.Kind.GROUP, group=groups.get((request.sender.pk, to.name)))
            if row["group"] is None:
                checked.append(audience.refusal(to))
                continue
        else:
            row.update(kind=Message.Kind.ALL)
        checked.append(row)
    rows = [row for row in checked if isinstance(row, dict)]
    attached = [extras[index].files for index, row in enumerate(checked) if isinstance(row, dict)]
    inserted = _insert_with_orm(rows, attached) if rows else []
    known = {message.id: json for message, json in zip(inserted, attached, strict=True)}
    stored = iter(inserted)
    return [_stored(next(stored), known) if isinstance(row, dict) else row for row in checked]


def _insert_with_orm(
    rows: list[dict[str, Any]], files: list[list[dict[str, Any]]]
) -> list[Message]:
    """SQLite (and others): one transaction, the rows inserted through the ORM.

    `files` per row: the uploads to attach, in one UPDATE for the batch, only
    where some row has any.
    """
    with transaction.atomic():
        messages = _insert_rows(rows)
        _attach(
            [(m.id, [f["upload"] for f in json]) for m, json in zip(messages, files, strict=True)]
        )
        return messages


def _attach(files: list[tuple[int, list[str]]]) -> None:
    """Attach each message's uploads, unless one was attached meanwhile (`_FilesTaken`)."""
    wanted = {upload: message_id for message_id, uploads in files for upload in uploads}
    if not wanted:
        return
    taken = Upload.objects.filter(pk__in=wanted, message__isnull=True).update(
        message_id=models.Case(
            *(models.When(pk=upload, then=models.Value(m)) for upload, m in wanted.items())
        )
    )
    if taken != len(wanted):
        raise _FilesTaken("an upload was sent in another message meanwhile")


def _insert_rows(rows: list[dict[str, Any]]) -> list[Message]:
    # SQLite: BEGIN IMMEDIATE took the writer lock, which orders inserts.
    # Taken under the lock, so timestamps never go back as ids go up.
    now = datetime.now(UTC)
    if len(rows) == 1 or not connection.features.can_return_rows_from_bulk_insert:
        # One row needs no bulk insert; without RETURNING a bulk insert
        # would not tell the ids, so each row gets its own INSERT instead.
        return [Message.objects.create(**row, created_at=now) for row in rows]
    messages = Message.objects.bulk_create([Message(**row, created_at=now) for row in rows])
    if any(message.pk is None for message in messages):
        # Rolls the batch back: a message without its id cannot be acked.
        raise DatabaseError("the bulk insert returned no message ids")
    return messages


def _send_in_one_statement(
    requests: Sequence[SendRequest], extras: Sequence[_Extras]
) -> list[StoredMessage | ChatError]:
    """PostgreSQL: check, lock, timestamp and insert a batch in one statement.

    Separate statements (the audience checks, BEGIN, the order lock, INSERT,
    COMMIT) were five round trips, each paying the database process's wake-up:
    at light load, over a third of a delivery's latency. Outside
    a transaction one statement commits on its own, holding the advisory lock
    until then; the timestamp is read after the lock and ids are allocated as
    the sorted rows go in, so ids ascend in request order, become visible in id
    order, and timestamps never go back. The statement answers, per accepted
    request in order, the recipient or group it resolved and the new id; per
    request whose `cid` was stored before, a mark (that message is loaded
    as the ORM path loads it, `_stored_earlier`). It also answers each
    sender's display name (a join), so a batch needs no query of its own
    for the names, which every sent message carries.

    A batch carrying files (1.2) attaches them in the same statement: each
    request's uploads are locked and must still be unsent, else it stores
    nothing and answers `no_such_upload` (another send took one since
    `_extras` looked).
    """
    with_files = any(extra.files for extra in extras)
    params: list[Any] = []
    for index, (request, extra) in enumerate(zip(requests, extras, strict=True)):
        kind = _KINDS[request.to.kind]
        target = group_key(request.to.name) if request.to.kind == "group" else request.to.name
        params += [index, request.sender.pk, kind, target, request.body, request.cid]
        params += [None if extra.replied is None else extra.replied.id]
        params += [stored_form(extra.mentions)]
        if with_files:
            params.append([f["upload"] for f in extra.files])
    params.append(_MESSAGE_ORDER_LOCK)
    cids = any(request.cid is not None for request in requests)
    accepted: dict[int, tuple[Any, int, datetime, str | None, str | None]] = {}
    earlier: set[int] = set()
    taken: set[int] = set()
    with connection.cursor() as cursor:
        cursor.execute(_send_sql(len(requests), cids=cids, files=with_files), params)
        for index, target, pk, created, name, sender_name, stored_before in cursor:
            if stored_before is None:
                taken.add(index)
            elif stored_before:
                earlier.add(index)
            else:
                accepted[index] = (target, pk, created, name, sender_name)
    replays = _stored_earlier([requests[index] for index in earlier])
    results: list[StoredMessage | ChatError] = []
    for index, (request, extra) in enumerate(zip(requests, extras, strict=True)):
        if index in earlier:
            assert request.cid is not None
            results.append(_replay(_stored(replays[request.sender.pk, request.cid])))
            continue
        found = accepted.get(index)
        if found is None:
            results.append(_files_taken() if index in taken else audience.refusal(request.to))
            continue
        target, pk, created, group_name, sender_name = found
        ts = format_ts(created)
        event: dict[str, Any] = {
            "type": "message",
            "id": pk,
            "from": request.sender.get_username(),
            "from_name": sender_name or request.sender.get_username(),
            # A group as its creator spelled it, whatever the case the sender used.
            "to": {"group": group_name} if request.to.kind == "group" else request.to.as_json(),
            "body": request.body,
            "ts": ts,
            "rev": pk,
            "edited_at": None,
            "deleted": False,
            "reply_to": reply_json(extra.replied),
            "reactions": [],
            "mentions": extra.mentions,
            "files": extra.files,
        }
        if request.cid is not None:
            event["cid"] = request.cid
        if request.to.kind == "user":
            user_ids = tuple({request.sender.pk, target})
            results.append(StoredMessage(pk, ts, event, user_ids=user_ids))
        elif request.to.kind == "group":
            results.append(StoredMessage(pk, ts, event, group_id=target))
        else:
            results.append(StoredMessage(pk, ts, event, everyone=True))
    return results


def _files_taken() -> ChatError:
    return ChatError(NO_SUCH_UPLOAD, "one of these uploads was just sent in another message")


# Address kinds as Message kinds.
_KINDS = {
    "user": Message.Kind.DIRECT.value,
    "group": Message.Kind.GROUP.value,
    "all": Message.Kind.ALL.value,
}


@functools.lru_cache(maxsize=256)
def _send_sql(rows: int, *, cids: bool, files: bool = False) -> str:
    """The statement for `rows` requests (PostgreSQL; built once per batch size).

    With `cids`, it also looks for messages stored earlier under the requests'
    (sender, cid): those requests insert nothing and answer a mark.
    A batch without cids (every version 1 client's) skips that lookup.

    With `files` (1.2), each request's upload ids come last in its row: they
    are locked (FOR UPDATE, which reads again a row another send changed and
    committed meanwhile), a request whose uploads are not all still the
    sender's and unsent inserts nothing and answers a NULL mark, and the
    others' uploads get their new message's id. A batch without files (nearly
    all) is the statement it was before files existed.
    """
    user_model = get_user_model()
    quote = connection.ops.quote_name
    message, group = quote(Message._meta.db_table), quote(ChatGroup._meta.db_table)
    member, user = quote(Membership._meta.db_table), quote(user_model._meta.db_table)
    username = _column(user_model, user_model.USERNAME_FIELD)
    user_id, group_id, group_name, group_key_column = (
        _column(user_model, user_model._meta.pk.name),
        _column(ChatGroup, "id"),
        _column(ChatGroup, "name"),
        _column(ChatGroup, "key"),
    )
    member_user, member_group = _column(Membership, "user"), _column(Membership, "group")
    columns = ", ".join(
        _column(Message, name)
        for name in (
            "sender",
            "kind",
            "recipient",
            "group",
            "body",
            "cid",
            "reply_to",
            "mentions",
            "created_at",
        )
    )
    direct, in_group = Message.Kind.DIRECT.value, Message.Kind.GROUP.value
    sender_type = _field(Message, "sender").db_type(connection)
    reply_type = _field(Message, "reply_to").db_type(connection)
    file_param = ", %s::text[]" if files else ""
    values = ", ".join(
        [
            f"(%s::integer, %s::{sender_type}, %s::text, %s::text, %s::text, %s::text,"
            f" %s::{reply_type}, %s::text{file_param})"
        ]
        * rows
    )
    sender, cid = _column(Message, "sender"), _column(Message, "cid")
    earlier = (
        f"""earlier AS MATERIALIZED (
  SELECT v.ord FROM v
  JOIN {message} m ON m.{sender} = v.sender AND m.{cid} = v.cid
  WHERE v.cid IS NOT NULL
),"""
        if cids
        else ""
    )
    not_earlier = "AND v.ord NOT IN (SELECT ord FROM earlier)" if cids else ""
    answer_earlier = (
        "UNION ALL SELECT e.ord, NULL, NULL, NULL, NULL, NULL, true FROM earlier e" if cids else ""
    )
    profile, profile_user = quote(Profile._meta.db_table), _column(Profile, "user")
    profile_name = _column(Profile, "name")
    file_column, locked, files_free, attach, answer_taken = "", "", "", "", ""
    numbered = "(SELECT id, created, row_number() OVER (ORDER BY id) AS n FROM inserted)"
    if files:
        upload = quote(Upload._meta.db_table)
        upload_id, uploader = _column(Upload, "id"), _column(Upload, "uploader")
        upload_message = _column(Upload, "message")
        file_column = ", files"
        # After the order lock: a send that took one of these commits first.
        locked = f"""locked AS MATERIALIZED (
  SELECT v.ord, f.{upload_id} AS id FROM order_lock, v
  JOIN {upload} f ON f.{upload_id} = ANY(v.files)
   AND f.{uploader} = v.sender AND f.{upload_message} IS NULL
  FOR UPDATE OF f
),"""
        free = "(SELECT count(*) FROM locked l WHERE l.ord = v.ord) = cardinality(v.files)"
        files_free = f"AND {free}"
        attach = f""",
numbered AS MATERIALIZED {numbered},
attached AS (
  UPDATE {upload} f SET {upload_message} = i.id
  FROM accepted a JOIN numbered i ON i.n = a.n JOIN locked l ON l.ord = a.ord
  WHERE f.{upload_id} = l.id
)"""
        numbered = "numbered"
        answer_taken = f"""UNION ALL SELECT v.ord, NULL, NULL, NULL, NULL, NULL, NULL FROM v
WHERE NOT {free} {not_earlier}"""
    return f"""
WITH v(ord, sender, kind, target_name, body, cid, reply_to, mentions{file_column})
  AS (VALUES {values}),
{earlier}
order_lock AS MATERIALIZED (SELECT pg_advisory_xact_lock(%s)),
stamp AS MATERIALIZED (SELECT clock_timestamp() AS now FROM order_lock),
{locked}
accepted AS MATERIALIZED (
  SELECT v.ord, v.sender, v.kind, v.body, v.cid, v.reply_to, v.mentions,
         u.{user_id} AS recipient, g.{group_id} AS grp,
         g.{group_name} AS group_name,
         row_number() OVER (ORDER BY v.ord) AS n
  FROM v
  LEFT JOIN {user} u ON v.kind = '{direct}' AND u.{username} = v.target_name
  LEFT JOIN {group} g ON v.kind = '{in_group}' AND g.{group_key_column} = v.target_name
    AND EXISTS (
      SELECT 1 FROM {member} m WHERE m.{member_group} = g.{group_id} AND m.{member_user} = v.sender
    )
  WHERE (v.kind NOT IN ('{direct}', '{in_group}')
     OR u.{user_id} IS NOT NULL OR g.{group_id} IS NOT NULL)
    {not_earlier} {files_free}
),
inserted AS (
  INSERT INTO {message} ({columns})
  SELECT a.sender, a.kind, a.recipient, a.grp, a.body, a.cid, a.reply_to, a.mentions, stamp.now
  FROM accepted a CROSS JOIN stamp ORDER BY a.ord
  RETURNING {_column(Message, "id")} AS id, {_column(Message, "created_at")} AS created
){attach}
SELECT a.ord, COALESCE(a.recipient, a.grp), i.id, i.created, a.group_name, p.{profile_name}, false
FROM accepted a
JOIN {numbered} i ON i.n = a.n
LEFT JOIN {profile} p ON p.{profile_user} = a.sender
{answer_earlier}
{answer_taken}
"""


def _stored(
    message: Message, files: dict[int, list[dict[str, Any]]] | None = None
) -> StoredMessage:
    """`files`: the message's files when known (a new message's), else read."""
    event = {"type": "message", **messages_json([message], files)[0]}
    if message.recipient is not None:
        user_ids = tuple({message.sender.pk, message.recipient.pk})
        return StoredMessage(message.id, event["ts"], event, user_ids=user_ids)
    if message.group is not None:
        return StoredMessage(message.id, event["ts"], event, group_id=message.group.pk)
    return StoredMessage(message.id, event["ts"], event, everyone=True)


def message_history(
    *, user: User, of: Address, before: int | None, limit: int
) -> list[dict[str, Any]]:
    """The newest `limit` messages of one conversation (ids below `before`), oldest first."""
    return message_history_page(user=user, of=of, before=before, limit=limit)[0]


def message_history_page(
    *, user: User, of: Address, before: int | None, limit: int, max_bytes: int = 0
) -> tuple[list[dict[str, Any]], bool]:
    """`message_history`, kept within `max_bytes` of JSON (0: unbounded), and `more`.

    `more` is True when older messages than the first one listed exist: the
    client asks again with `before` set to that message's id.
    """
    messages = audience.resolve(user.pk, of).messages(user.pk)
    if before is not None:
        messages = messages.filter(id__lt=before)
    newest = messages.select_related(*MESSAGE_RELATED).order_by("-id")
    rows = list(newest[: limit + 1])
    kept = fit_in_bytes(messages_json(rows[:limit]), max_bytes)
    return kept[::-1], len(rows) > len(kept)


def message_history_around(
    *, user: User, of: Address, around: int, limit: int, max_bytes: int = 0
) -> tuple[list[dict[str, Any]], bool, bool]:
    """The messages of one conversation around the id `around` (1.2), oldest first.

    Half of `limit` (rounded down) older than `around`, the rest from it on;
    within `max_bytes` of JSON (0: unbounded), the ones nearest `around` kept
    first. Then `more` (older ones exist than the first listed) and `newer`
    (newer ones exist than the last listed).
    """
    messages = audience.resolve(user.pk, of).messages(user.pk).select_related(*MESSAGE_RELATED)
    older_wanted = limit // 2
    newer_rows = list(messages.filter(id__gte=around).order_by("id")[: limit - older_wanted + 1])
    older_rows = list(messages.filter(id__lt=around).order_by("-id")[: older_wanted + 1])
    newer_kept = fit_in_bytes(messages_json(newer_rows[: limit - older_wanted]), max_bytes)
    room = 0
    if max_bytes:
        room = max(1, max_bytes - sum(len(orjson.dumps(m)) + 1 for m in newer_kept))
    older_json = messages_json(older_rows[:older_wanted])
    older_kept = fit_in_bytes(older_json, room) if room != 1 else []
    return (
        older_kept[::-1] + newer_kept,
        len(older_rows) > len(older_kept),
        len(newer_rows) > len(newer_kept),
    )


def message_sync(
    *, user: User, since: int, max_bytes: int = 0
) -> tuple[list[dict[str, Any]], bool]:
    """Every message the user may see with id > `since`, oldest first, and whether more wait.

    At most `SYNC_MAX_MESSAGES`, and at most `max_bytes` of JSON (0: unbounded).
    """
    rows = list(
        Message.objects.visible_to(user.pk)
        .filter(id__gt=since)
        .select_related(*MESSAGE_RELATED)
        .order_by("id")[: SYNC_MAX_MESSAGES + 1]
    )
    kept = fit_in_bytes(messages_json(rows[:SYNC_MAX_MESSAGES]), max_bytes)
    return kept, len(rows) > len(kept)


_Entry = TypeVar("_Entry")


def fit_in_bytes(messages: list[_Entry], max_bytes: int) -> list[_Entry]:
    """The first of `messages` (any entries) whose JSON together stays within `max_bytes`.

    `max_bytes` 0 keeps them all.

    The first message is always kept, so that a client paging through never
    gets stuck (one message is far below any allowed bound).
    """
    if not max_bytes:
        return messages
    total = 0
    for index, message in enumerate(messages):
        total += len(orjson.dumps(message)) + 1  # and its comma
        if total > max_bytes and index:
            return messages[:index]
    return messages


def last_visible_id(*, user: User) -> int:
    """The newest message id this user may see, or 0."""
    return last_visible_ids([user.pk])[user.pk]


def last_visible_ids(user_ids: Sequence[int]) -> dict[int, int]:
    """`last_visible_id` of many users in one statement (sockets opening together).

    The newest of: the last broadcast, the last direct message each user sent
    or received, the last message of each group they belong to, each read as
    a backward scan of one index (kind, sender, recipient, group, each with
    id), as `Message.objects.visible_to` would filter them. Users not in the
    database get 0.
    """
    wanted = sorted(set(user_ids))
    answer = dict.fromkeys(user_ids, 0)
    if not wanted:
        return answer
    with connection.cursor() as cursor:
        cursor.execute(_last_ids_sql(len(wanted)), [*_LAST_IDS_KINDS, *wanted])
        for user_id, *newest in cursor.fetchall():
            answer[user_id] = max((i for i in newest if i is not None), default=0)
    return answer


_LAST_IDS_KINDS = (Message.Kind.ALL.value, Message.Kind.DIRECT.value)


def last_visible_revs(user_ids: Sequence[int]) -> dict[int, int]:
    """The highest `rev` among the messages each user may see (`hello.last_rev`), or 0."""
    return {user_id: rev for user_id, (_, rev) in last_visible_marks(user_ids).items()}


def last_visible_marks(user_ids: Sequence[int]) -> dict[int, tuple[int, int]]:
    """Per user, (`last_visible_id`, highest visible `rev`), in one statement (`hello`).

    A message that never changed has its id for `rev`, so the highest `rev` is
    the newest visible id or a higher `rev` of a changed message, read as the
    ids are but through the partial indexes of changed messages.
    """
    wanted = sorted(set(user_ids))
    answer = dict.fromkeys(user_ids, (0, 0))
    if not wanted:
        return answer
    with connection.cursor() as cursor:
        cursor.execute(_last_marks_sql(len(wanted)), [*_LAST_IDS_KINDS, *_LAST_IDS_KINDS, *wanted])
        for user_id, *newest in cursor.fetchall():
            last_id = max((i for i in newest[:4] if i is not None), default=0)
            last_rev = max((i for i in newest[4:] if i is not None), default=last_id)
            answer[user_id] = (last_id, max(last_id, last_rev))
    return answer


@functools.lru_cache(maxsize=64)
def _last_marks_sql(count: int) -> str:
    ids, revs = _newest_of_kinds("id"), _newest_of_kinds("rev")
    users = get_user_model()._meta.db_table
    return f"""
        SELECT u.id, {ids}, {revs}
        FROM {users} u
        WHERE u.id IN ({", ".join(["%s"] * count)})
    """


def _newest_of_kinds(column: str) -> str:
    """Per user `u`, the newest `column` of each kind of visible message ("rev": changed ones)."""
    message = Message._meta.db_table
    membership = Membership._meta.db_table
    # The condition that lets the partial indexes of changed messages serve.
    only = " AND rev IS NOT NULL" if column == "rev" else ""
    return f"""
            (SELECT MAX({column}) FROM {message} WHERE kind = %s{only}),
            (SELECT MAX({column}) FROM {message} WHERE sender_id = u.id AND kind = %s{only}),
            (SELECT MAX({column}) FROM {message} WHERE recipient_id = u.id{only}),
            (SELECT MAX((SELECT MAX(m.{column}) FROM {message} m
                         WHERE m.group_id = ms.group_id{only.replace("rev", "m.rev")}))
                FROM {membership} ms WHERE ms.user_id = u.id)"""


@functools.lru_cache(maxsize=64)
def _last_ids_sql(count: int) -> str:
    users = get_user_model()._meta.db_table
    return f"""
        SELECT u.id, {_newest_of_kinds("id")}
        FROM {users} u
        WHERE u.id IN ({", ".join(["%s"] * count)})
    """
