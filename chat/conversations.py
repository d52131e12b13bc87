"""A user's conversations, how far they have read each, and finding people and groups.

A conversation is everyone (`all`), a group the user is in, or another user
(or the user themself) they have exchanged a direct message with. Read
positions are message ids in `ReadPosition`, keyed by `conversation_key`;
they only move forward and never past the conversation's newest message.
Plain synchronous functions over the ORM, called through the database thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.db import connection
from django.db.models import Case, Count, Exists, F, Max, OuterRef, Q, Value, When

from chat.accounts import is_guest_name
from chat.audience import Conversation, resolve
from chat.messaging import MESSAGE_RELATED, messages_json
from chat.models import ChatGroup, Membership, Message, ReadPosition, group_key
from chat.profiles import profiles_named
from chat.protocol import Address, ChatError
from chat.search_query import words_of

# -- the conversation list ---------------------------------------------------


def conversation_list(
    *, user: User, before: tuple[int, str] | None, limit: int
) -> tuple[list[dict[str, Any]], tuple[int, str] | None]:
    """A page of the user's conversations, newest last message first, and the next cursor.

    `before` is the (last message id, key) of the last item of the previous
    page; conversations with no message yet (a group just joined) come last.
    """
    newest: dict[str, tuple[int, Address, int | None, int | None]] = {}
    newest["all"] = (
        Message.objects.broadcasts().aggregate(m=Max("id"))["m"] or 0,
        Address("all"),
        None,
        None,
    )
    private_groups: set[int] = set()
    for group_id, name, last, private in (
        ChatGroup.objects.filter(memberships__user_id=user.pk)
        .annotate(last=Max("messages__id"))
        .values_list("pk", "name", "last", "private")
    ):
        newest[f"group:{group_id}"] = (last or 0, Address("group", name), None, group_id)
        if private:
            private_groups.add(group_id)
    user_model = get_user_model()
    direct = Message.objects.filter(kind=Message.Kind.DIRECT)
    peers: dict[int, int] = {}
    for peer_id, last in (
        direct.filter(sender_id=user.pk)
        .values("recipient_id")
        .annotate(last=Max("id"))
        .values_list("recipient_id", "last")
    ):
        peers[peer_id] = max(peers.get(peer_id, 0), last)
    for peer_id, last in (
        direct.filter(recipient_id=user.pk)
        .values("sender_id")
        .annotate(last=Max("id"))
        .values_list("sender_id", "last")
    ):
        peers[peer_id] = max(peers.get(peer_id, 0), last)
    names = dict(
        user_model._default_manager.filter(pk__in=peers).values_list(
            "pk", user_model.USERNAME_FIELD
        )
    )
    for peer_id, last in peers.items():
        newest[f"user:{peer_id}"] = (last, Address("user", names[peer_id]), peer_id, None)

    ordered = sorted(newest.items(), key=lambda item: (item[1][0], item[0]), reverse=True)
    if before is not None:
        ordered = [item for item in ordered if (item[1][0], item[0]) < before]
    page, more = ordered[:limit], len(ordered) > limit
    positions = dict(
        ReadPosition.objects.filter(
            user_id=user.pk, conversation__in=[key for key, _ in page]
        ).values_list("conversation", "message_id")
    )
    # How far the other party of each direct conversation on the page has read it.
    peer_ids = [item[1][2] for item in page if item[1][2] is not None]
    theirs = {
        peer_id: message_id
        for peer_id, message_id in ReadPosition.objects.filter(
            user_id__in=peer_ids, conversation=f"user:{user.pk}"
        ).values_list("user_id", "message_id")
    }
    last_messages = {
        message.id: message
        for message in Message.objects.filter(
            id__in=[item[1][0] for item in page if item[1][0]]
        ).select_related(*MESSAGE_RELATED)
    }
    last_json = {
        message.id: json
        for message, json in zip(
            last_messages.values(), messages_json(list(last_messages.values())), strict=True
        )
    }
    items = []
    for key, (last, address, peer, group) in page:
        read_id = positions.get(key, 0)
        conversation = Conversation(key, address, peer_id=peer, group_id=group)
        unread = mentions = 0
        if last > read_id:
            unseen = conversation.messages(user.pk).filter(id__gt=read_id)
            unseen = unseen.exclude(sender_id=user.pk)
            unread = unseen.aggregate(n=Count("id"))["n"]
            mentions = _mentioning(unseen, user.get_username())
        item = {
            "of": address.as_json(),
            "last": last_json.get(last),
            "unread": unread,
            "read_id": read_id,
            "mentions": mentions,
            "their_read_id": theirs.get(peer, 0) if peer is not None else None,
        }
        if group is not None:
            # Protocol 1.2: a page marks a private group (a lock).
            item["private"] = group in private_groups
        items.append(item)
    cursor = (page[-1][1][0], page[-1][0]) if more and page else None
    return items, cursor


def _mentioning(messages: Any, username: str) -> int:
    """How many of `messages` mention `username`.

    The database narrows them down (`contains` ignores case on SQLite); the
    exact, case-sensitive match is made here, on those few.
    """
    marked = f" {username} "
    found = messages.filter(mentions__contains=marked).values_list("mentions", flat=True)
    return sum(1 for mentions in found if marked in mentions)


def encode_cursor(cursor: tuple[int, str]) -> str:
    return f"{cursor[0]}:{cursor[1]}"


def decode_cursor(text: str) -> tuple[int, str] | None:
    """A cursor from `encode_cursor`, or None if `text` is not one."""
    last, _, key = text.partition(":")
    if not last.isascii() or not last.isdigit() or not key or len(text) > 64:
        return None
    return int(last), key


# -- read positions ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReadRequest:
    user: User
    of: Address
    id: int


@dataclass(frozen=True, slots=True)
class ReadMove:
    """Where a read request left the user's position, and whether it moved."""

    conversation: Conversation
    id: int
    advanced: bool


def read_positions_move(requests: Sequence[ReadRequest]) -> list[ReadMove | ChatError]:
    """Move read positions forward, clamped to each conversation's newest message.

    A batch (`chat.coalesce`) is written in one statement; the statement
    keeps the larger of the stored and the new position, so two workers
    moving one position at the same moment never move it back.
    """
    results: list[ReadMove | ChatError] = []
    wanted: list[tuple[int, str, int]] = []
    for request in requests:
        try:
            conversation = resolve(request.user.pk, request.of)
        except ChatError as error:
            results.append(error)
            continue
        newest = conversation.messages(request.user.pk).aggregate(m=Max("id"))["m"] or 0
        results.append(ReadMove(conversation, min(request.id, newest), False))
        wanted.append((request.user.pk, conversation.key, min(request.id, newest)))
    if not wanted:
        return results
    before = {
        (user_id, key): message_id
        for user_id, key, message_id in ReadPosition.objects.filter(
            Q(*[Q(user_id=u, conversation=k) for u, k, _ in wanted], _connector=Q.OR)
        ).values_list("user_id", "conversation", "message_id")
    }
    _upsert_positions(wanted)
    answered: list[ReadMove | ChatError] = []
    for request, result in zip(requests, results, strict=True):
        if isinstance(result, ChatError):
            answered.append(result)
            continue
        stored = before.get((request.user.pk, result.conversation.key), 0)
        position = max(stored, result.id)
        answered.append(ReadMove(result.conversation, position, position > stored))
        # Later requests of the same batch see this one's position.
        before[request.user.pk, result.conversation.key] = position
    return answered


def _upsert_positions(rows: list[tuple[int, str, int]]) -> None:
    table = connection.ops.quote_name(ReadPosition._meta.db_table)
    merged: dict[tuple[int, str], int] = {}
    for user_id, key, message_id in rows:
        merged[user_id, key] = max(merged.get((user_id, key), 0), message_id)
    values = ", ".join(["(%s, %s, %s)"] * len(merged))
    params = [
        value
        for (user_id, key), message_id in merged.items()
        for value in (user_id, key, message_id)
    ]
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (user_id, conversation, message_id) VALUES {values}"
            " ON CONFLICT (user_id, conversation) DO UPDATE SET message_id = CASE"
            f" WHEN excluded.message_id > {table}.message_id THEN excluded.message_id"
            f" ELSE {table}.message_id END",
            params,
        )


# -- finding people and groups -----------------------------------------------


def users_matching(
    *, prefix: str, limit: int, online: frozenset[str]
) -> list[tuple[str, str, bool]]:
    """(username, display name, online) of the active users `prefix` finds, best first.

    Found: a username starting with `prefix` (any case), or (1.2) a display
    name with a word starting with each word of `prefix` ("lee" finds "Alice
    Lee"; case and accents ignored, `chat.profiles.profiles_named`). Order:
    the username `prefix` itself, then usernames starting with it (online
    first, then by username), then the rest, found by name (online first,
    then by name). Guests are listed only while online.

    One query. Its candidates are a union of small index reads, each bounded
    on PostgreSQL (migration 0018): the first three pages of usernames and of
    names that match, the exact username, the online usernames that match;
    so a short `q` matching thousands costs a few hundred rows, not a sort of
    them all. Online people found only by name are put first among those
    read. SQLite (small installations) reads every match.
    """
    user_model = get_user_model()
    field = user_model.USERNAME_FIELD
    users = user_model._default_manager
    people = users.filter(is_active=True)
    window = limit * 3
    bounded = connection.features.supports_slicing_ordering_in_compound
    folded = prefix.casefold()
    online_here = sorted(name for name in online if name.casefold().startswith(folded))[:limit]
    parts: list[tuple[Any, list[str]]] = []
    tier: Any = Value(1)
    if prefix:
        parts.append((users.filter(**{f"{field}__istartswith": prefix}).values("pk"), [field]))
        words = [prefix[start:end] for start, end in words_of(prefix)]
        if words:
            parts.append((profiles_named(words).values("user_id"), ["name", "user_id"]))
        tier = Case(
            When(**{f"{field}__iexact": prefix}, then=Value(0)),
            When(**{f"{field}__istartswith": prefix}, then=Value(1)),
            default=Value(2),
        )
    elif bounded:
        parts.append((people.values("pk"), [field]))
    reads = [part for part, _ in parts]
    if bounded:
        reads = [part.order_by(*by)[:window] for part, by in parts]
        if prefix:
            reads.append(users.filter(**{f"{field}__iexact": prefix}).values("pk"))
        if online_here:
            reads.append(users.filter(**{f"{field}__in": online_here}).values("pk"))
    if reads:
        candidates = reads[0].union(*reads[1:], all=True) if len(reads) > 1 else reads[0]
        people = people.filter(pk__in=candidates)
    order: list[Any] = ["tier"]
    if online_here:
        order.append(Case(When(**{f"{field}__in": online_here}, then=Value(0)), default=Value(1)))
    # People found only by name are listed by it.
    order.append(Case(When(tier=2, then=F("chat_profile__name")), default=Value("")))
    rows = (
        people.annotate(tier=tier)
        .order_by(*order, field)
        .values_list(field, "chat_profile__name", "tier")[:window]
    )
    found = [
        (name, chosen or name, name in online, rank)
        for name, chosen, rank in rows
        if name in online or not is_guest_name(name)
    ]
    found.sort(key=lambda row: (row[3], not row[2]))
    return [(name, chosen, is_online) for name, chosen, is_online, _ in found[:limit]]


@dataclass(frozen=True, slots=True)
class FoundGroup:
    name: str
    members: int
    # Members online, for a group the asker is in; None otherwise (who is in a
    # group is its members' business: watching the count would tell).
    online: int | None
    member: bool
    # Protocol 1.2: listed to its members only.
    private: bool = False


# Online names passed to the database per statement, well inside every
# backend's limit on parameters.
_ONLINE_CHUNK = 5000


def groups_matching(
    *, user: User, prefix: str, limit: int, online: frozenset[str]
) -> list[FoundGroup]:
    """Groups whose name starts with `prefix`, by name, counted in the database.

    A private group is listed to its members only (protocol 1.2): to anyone
    else it is not there, neither listed nor counted.

    One query for the page with its member counts, one for the online count of
    the asker's own groups in it: no member is loaded, so a page of large
    groups costs what a page of small ones does.
    """
    groups = ChatGroup.objects.all()
    if prefix:
        groups = groups.filter(key__startswith=group_key(prefix))
    mine = Membership.objects.filter(group_id=OuterRef("pk"), user_id=user.pk)
    page = list(
        groups.filter(Q(private=False) | Exists(mine))
        .order_by("key")
        .annotate(count=Count("memberships"), member=Exists(mine))
        .values_list("pk", "name", "count", "member", "private")[:limit]
    )
    online_counts = _online_members([pk for pk, _, _, member, _ in page if member], online)
    return [
        FoundGroup(name, count, online_counts.get(pk, 0) if member else None, member, private)
        for pk, name, count, member, private in page
    ]


def _online_members(group_ids: list[int], online: frozenset[str]) -> dict[int, int]:
    """Members of each group who are online, counted in the database."""
    counts: dict[int, int] = {}
    if not group_ids or not online:
        return counts
    field = f"user__{get_user_model().USERNAME_FIELD}__in"
    names = sorted(online)
    for start in range(0, len(names), _ONLINE_CHUNK):
        rows = (
            Membership.objects.filter(
                group_id__in=group_ids, **{field: names[start : start + _ONLINE_CHUNK]}
            )
            .values("group_id")
            .annotate(count=Count("pk"))
            .values_list("group_id", "count")
        )
        for group_id, count in rows:
            counts[group_id] = counts.get(group_id, 0) + count
    return counts
