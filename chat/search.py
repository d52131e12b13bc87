"""Searching messages (protocol 1.2 `search`): the permission filter, the query, the spans.

What is searched is exactly what `sync` would show the user now
(`Message.objects.visible_to`), by each message's current body; deleted
messages are in no index (migration 0014) and are filtered out besides.
The words are matched in the database: PostgreSQL's full-text search over
a stored `tsvector` column and its GIN index, SQLite's FTS5 table. The spans
(which words of a body matched) are found here, with `chat.search_query`'s
tokenisation. Plain synchronous functions, like chat.messaging.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.db import connection
from django.db.backends.signals import connection_created
from django.db.models import BooleanField, Exists, OuterRef, Q
from django.db.models.expressions import RawSQL

from chat import audience
from chat.messaging import MESSAGE_RELATED, fit_in_bytes, messages_json
from chat.models import Message, Upload
from chat.profiles import spaced_words
from chat.protocol import Address
from chat.search_query import (
    FINAL_SIGMA,
    SIGMA,
    SearchQuery,
    Term,
    fold,
    tsquery_prefix,
    words_of,
)

# PostgreSQL: the configuration, and the generated column the index covers
# (migrations 0014, 0015): to_tsvector of the body, Greek's final sigma made a
# sigma first (`chat.search_query.FINAL_SIGMA`).
SEARCH_CONFIG = "chat_search"
VECTOR_COLUMN = "search_vector"
# SQLite: the FTS5 table (migration 0014).
FTS_TABLE = "chat_message_search"


def register_sqlite_functions(*, connection: Any, **kwargs: Any) -> None:
    """`chat_fold`, which SQLite's search triggers call, on a new SQLite connection.

    A connection without it (the sqlite3 shell) cannot store or change a
    message: the triggers would fail, and so the statement.
    """
    if connection.vendor == "sqlite" and connection.connection is not None:
        connection.connection.create_function("chat_fold", 1, fold, deterministic=True)
        connection.connection.create_function(
            "chat_name_words", 1, spaced_words, deterministic=True
        )


def connect_search_signals() -> None:
    connection_created.connect(register_sqlite_functions, dispatch_uid="chat_search_sqlite")


def forget_deleted() -> None:
    """Take a just-deleted message's words out of SQLite's index pages (PostgreSQL: VACUUM).

    FTS5 before SQLite 3.42 records a delete as a marker beside the words
    until its segments merge; optimizing merges them now. 3.42 and later
    delete in place (`secure-delete`, set here once and kept by the table).
    Deletes are rare, and SQLite serves small installations.
    """
    if connection.vendor != "sqlite":
        return
    with connection.cursor() as cursor:
        if sqlite3.sqlite_version_info >= (3, 42):
            cursor.execute(
                f"INSERT INTO {FTS_TABLE}({FTS_TABLE}, rank) VALUES ('secure-delete', 1)"
            )
        else:
            cursor.execute(f"INSERT INTO {FTS_TABLE}({FTS_TABLE}) VALUES ('optimize')")


def message_search(
    *,
    user: User,
    query: SearchQuery,
    of: Address | None = None,
    before: int | None = None,
    limit: int,
    max_bytes: int = 0,
) -> tuple[list[dict[str, Any]], bool]:
    """The messages the user may see that match, newest first: `{message, spans}` each.

    At most `limit`, with ids below `before` when given, and at most
    `max_bytes` of JSON (0: unbounded); and whether more match.
    `not_member` or `no_such_user` for an `of` or `in:` naming nothing the user
    may read, as `history` answers.
    """
    messages = _candidates(user, query, of)
    if messages is None:
        return [], False
    if before is not None:
        messages = messages.filter(id__lt=before)
    rows = list(messages.select_related(*MESSAGE_RELATED).order_by("-id")[: limit + 1])
    listed = messages_json(rows[:limit])
    results = [
        {"message": message, "spans": spans_of(message["body"], query.terms)} for message in listed
    ]
    kept = fit_in_bytes(results, max_bytes)
    return kept, len(rows) > len(kept)


def _candidates(user: User, query: SearchQuery, of: Address | None) -> Any:
    """The matching messages as a queryset, or None when nothing can match."""
    within: audience.Conversation | None = None
    if of is not None:
        within = audience.resolve(user.pk, of)
    if query.within is not None:
        named = audience.resolve(user.pk, Address(query.within.kind, query.within.name))
        if within is not None and named.key != within.key:
            return None
        within = named
    messages = (
        within.messages(user.pk) if within is not None else Message.objects.visible_to(user.pk)
    )
    messages = messages.filter(deleted=False)
    if query.sender is not None:
        senders = list(_users_named(query.sender))
        if not senders:
            return None
        messages = messages.filter(sender_id__in=senders)
    if query.before is not None:
        messages = messages.filter(created_at__lt=_day_start(query.before))
    if query.after is not None:
        if query.after == date.max:
            # No day has ended after the last one a date names (and adding one overflows).
            return None
        messages = messages.filter(created_at__gte=_day_start(query.after) + timedelta(days=1))
    if query.has_link:
        messages = messages.filter(Q(body__icontains="http://") | Q(body__icontains="https://"))
    if query.has_file:
        messages = messages.filter(Exists(Upload.objects.filter(message_id=OuterRef("pk"))))
    if query.terms:
        messages = messages.filter(_matching(query.terms))
    if query.excluded:
        messages = messages.filter(_matching(query.excluded, none_of=True))
    return messages


def _users_named(name: str) -> Any:
    """Ids of the user called `name`: exactly, or else ignoring case."""
    user_model = get_user_model()
    field = user_model.USERNAME_FIELD
    users = user_model._default_manager
    exact = list(users.filter(**{field: name}).values_list("pk", flat=True)[:1])
    return exact or users.filter(**{f"{field}__iexact": name}).values_list("pk", flat=True)


def _day_start(day: Any) -> datetime:
    return datetime.combine(day, time(0), tzinfo=UTC)


def _matching(terms: tuple[Term, ...], *, none_of: bool = False) -> RawSQL:
    """The condition: a message has every term (with `none_of`: none of them)."""
    table = connection.ops.quote_name(Message._meta.db_table)
    if connection.vendor == "postgresql":
        parts, params = [], []
        for term in terms:
            sql, param = _tsquery(term)
            parts.append(sql)
            params.append(param)
        joined = (" || " if none_of else " && ").join(parts)
        vector = f"{table}.{connection.ops.quote_name(VECTOR_COLUMN)}"
        negation = "NOT " if none_of else ""
        return RawSQL(f"{negation}{vector} @@ ({joined})", params, output_field=BooleanField())
    match = (" OR " if none_of else " AND ").join(_fts_phrase(term) for term in terms)
    pk = f"{table}.{connection.ops.quote_name('id')}"
    return RawSQL(
        f"{pk} {'NOT IN' if none_of else 'IN'}"
        f" (SELECT rowid FROM {FTS_TABLE} WHERE {FTS_TABLE} MATCH %s)",
        [match],
        output_field=BooleanField(),
    )


def _tsquery(term: Term) -> tuple[str, str]:
    """One term as a PostgreSQL tsquery, parsed by the index's own configuration."""
    config = f"'{SEARCH_CONFIG}'::regconfig"
    text = term.text.replace(FINAL_SIGMA, SIGMA)
    if term.prefix:
        return f"to_tsquery({config}, %s)", tsquery_prefix(text)
    if term.phrase:
        return f"phraseto_tsquery({config}, %s)", text
    return f"plainto_tsquery({config}, %s)", text


def _fts_phrase(term: Term) -> str:
    """One term as an FTS5 string: its words folded as `chat_fold` folded the bodies."""
    text = " ".join(term.words)
    phrase = '"' + text.replace('"', '""') + '"'
    return phrase + " *" if term.prefix else phrase


def spans_of(body: str, terms: tuple[Term, ...]) -> list[list[int]]:
    """The [start, end) code-point offsets in `body` of the words the terms matched, in order."""
    if not terms or not body:
        return []
    found = words_of(body)
    folded = [fold(body[start:end]) for start, end in found]
    marked: set[int] = set()
    for term in terms:
        size = len(term.words)
        for first in range(len(folded) - size + 1):
            if all(
                _word_matches(folded[first + n], word, prefix=term.prefix and n == size - 1)
                for n, word in enumerate(term.words)
            ):
                marked.update(range(first, first + size))
    return [list(found[index]) for index in sorted(marked)]


def _word_matches(word: str, wanted: str, *, prefix: bool) -> bool:
    return word.startswith(wanted) if prefix else word == wanted
