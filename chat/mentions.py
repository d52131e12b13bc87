"""Which users a message body mentions (protocol 1.2), resolved by the server.

`@name` mentions the user `name` when that user exists and is in the
message's audience: the other party of a direct message, a member of the
group, anyone for a broadcast. After each `@` the longest run of username
characters that is an existing username counts, so `@bob.` and `(@bob)`
mention bob: the run is tried whole, then cut before each of its
punctuation characters (`.`, `@`, `+`, `-`), longest first.

A batch of sends costs at most one query (none when no body has an `@`, and
none when only direct messages have one: their one candidate is known).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from django.contrib.auth import get_user_model
from django.db import connection, models

from chat.models import ChatGroup, Membership, group_key

# A run of the characters a username may hold (Django's UnicodeUsernameValidator).
_RUN = re.compile(r"@([\w.@+-]{1,150})")
_CUTS = frozenset(".@+-")
# A hostile body must not turn into thousands of lookups: the first this many
# `@` runs of a body, and this many candidate names in all, are considered.
MAX_RUNS = 50
MAX_CANDIDATES = 100


def candidates(body: str) -> list[list[str]]:
    """Per `@` run of `body`: the names it could mention, longest first."""
    if "@" not in body:
        return []
    runs: list[list[str]] = []
    total = 0
    position = 0
    while len(runs) < MAX_RUNS and total < MAX_CANDIDATES:
        found = _RUN.search(body, position)
        if found is None:
            break
        run = found.group(1)
        names = [run] + [run[:i] for i in range(len(run) - 1, 0, -1) if run[i] in _CUTS]
        names = names[: MAX_CANDIDATES - total]
        runs.append(names)
        total += len(names)
        # The next `@` may be inside this run ("@ann@bob" mentions both).
        position = found.start() + 1
    return runs


@dataclass(frozen=True, slots=True)
class MentionRequest:
    """A body and its audience: a direct message's other party, a group's key, or everyone."""

    body: str
    peer: str | None = None
    group: str | None = None


def resolve(requests: Sequence[MentionRequest]) -> list[list[str]]:
    """The sorted usernames each body mentions, in one query for the whole batch at most."""
    runs = [candidates(request.body) for request in requests]
    wanted: set[str] = set()
    keys: set[str] = set()
    for request, body_runs in zip(requests, runs, strict=True):
        if body_runs and request.peer is None:
            wanted.update(name for names in body_runs for name in names)
            if request.group is not None:
                keys.add(group_key(request.group))
    existing, members = _lookup(wanted, keys) if wanted else (set(), {})
    answers: list[list[str]] = []
    for request, body_runs in zip(requests, runs, strict=True):
        found: set[str] = set()
        for names in body_runs:
            for name in names:
                if request.peer is not None:
                    allowed = name == request.peer
                elif request.group is not None:
                    allowed = name in members.get(group_key(request.group), ())
                else:
                    allowed = name in existing
                if allowed:
                    found.add(name)
                    break
        answers.append(sorted(found))
    return answers


def _lookup(names: Iterable[str], keys: set[str]) -> tuple[set[str], dict[str, set[str]]]:
    """Which of `names` are users, and which of them belong to each group key: one query."""
    user_model = get_user_model()
    quote = connection.ops.quote_name
    users = quote(user_model._meta.db_table)
    field = user_model._meta.get_field(user_model.USERNAME_FIELD)
    assert isinstance(field, models.Field) and field.column
    username = quote(field.column)
    user_id = quote(user_model._meta.pk.column or "id")
    membership, groups = quote(Membership._meta.db_table), quote(ChatGroup._meta.db_table)
    names = sorted(set(names))
    key_list = sorted(keys)
    if key_list:
        join = (
            f" LEFT JOIN ({membership} m JOIN {groups} g ON g.id = m.group_id"
            f" AND g.{quote('key')} IN ({', '.join(['%s'] * len(key_list))}))"
            f" ON m.user_id = u.{user_id}"
        )
        select = f"SELECT u.{username}, g.{quote('key')} FROM {users} u{join}"
    else:
        select = f"SELECT u.{username}, NULL FROM {users} u"
    sql = f"{select} WHERE u.{username} IN ({', '.join(['%s'] * len(names))})"
    existing: set[str] = set()
    members: dict[str, set[str]] = {}
    with connection.cursor() as cursor:
        cursor.execute(sql, [*key_list, *names])
        for name, key in cursor.fetchall():
            existing.add(name)
            if key is not None:
                members.setdefault(key, set()).add(name)
    return existing, members


def stored_form(names: Sequence[str]) -> str:
    """The `Message.mentions` column for these names: " ann bob ", or ""."""
    return f" {' '.join(sorted(names))} " if names else ""
