"""Display names: what people chose to be called (protocol 1.2 `profile`).

The rule for a name is `chat.protocol.display_name_refusal`. A user who
chose none is called by their username.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from django.contrib.auth import get_user_model
from django.db import connection
from django.db.models import BooleanField, CharField, F, Func, QuerySet, Value

from chat.models import Profile
from chat.protocol import display_name_refusal
from chat.search_query import FINAL_SIGMA, SIGMA, fold, folded_words, tsquery_prefix

# PostgreSQL: names are split and folded by message search's configuration
# (simple + unaccent, migration 0014), under a GIN index (migration 0018).
NAME_CONFIG = "chat_search"


def name_of(user: Any) -> str:
    """A user's display name: their chosen one, else their username.

    Reads `user.chat_profile`, so callers listing many select it with the users.
    """
    try:
        return str(user.chat_profile.name)
    except Profile.DoesNotExist:
        return str(user.get_username())


def names_of(usernames: Iterable[str]) -> dict[str, str]:
    """Display names of these users by username (their username when they chose none)."""
    wanted = list(dict.fromkeys(usernames))
    names = {username: username for username in wanted}
    if not wanted:
        return names
    user_model = get_user_model()
    field = f"user__{user_model.USERNAME_FIELD}"
    rows = Profile.objects.filter(**{f"{field}__in": wanted}).values_list(field, "name")
    names.update({username: name for username, name in rows})
    return names


def set_name(user: Any, name: str) -> str:
    """Store `name` (checked by `display_name_refusal`, trimmed) as the user's display name."""
    refused = display_name_refusal(name)
    if refused is not None:
        raise ValueError(refused)
    name = name.strip()
    Profile.objects.update_or_create(user=user, defaults={"name": name})
    return name


def refresh_names(users: Iterable[Any]) -> None:
    """Read these users' names afresh, in one query, so `name_of` answers without another.

    A socket's user object lives as long as the socket; its cached profile
    would keep the name it had when the socket opened.
    """
    people = list({user.pk: user for user in users}.values())
    if not people:
        return
    profiles = {p.user_id: p for p in Profile.objects.filter(user_id__in=[u.pk for u in people])}
    related = type(people[0]).chat_profile.related
    for user in people:
        related.set_cached_value(user, profiles.get(user.pk))


def note_nameless(user: Any) -> None:
    """Cache that a user created just now has no profile, so `name_of` answers without a read."""
    type(user).chat_profile.related.set_cached_value(user, None)


def spaced_words(name: str) -> str:
    """A name's words folded as search folds them, each after a space: " alice lee".

    SQLite's `chat_name_words` (registered with `chat_fold`, chat.search).
    """
    return "".join(" " + word for word in folded_words(name))


def profiles_named(words: Sequence[str]) -> QuerySet[Profile]:
    """The profiles whose name has a word starting with each of `words`.

    Case and accents are ignored. PostgreSQL: a prefix tsquery against the
    name's tsvector, which the GIN index of migration 0018 answers. SQLite
    (small installations): LIKE over the folded words, a scan of the profiles.
    Expressions, not raw SQL, so that the name's table keeps whatever alias
    a query that nests this one gives it.
    """
    profiles = Profile.objects.all()
    if connection.vendor == "postgresql":
        quoted = [tsquery_prefix(word) for word in words]
        vector = Func(
            F("name"),
            template=f"to_tsvector('{NAME_CONFIG}'::regconfig,"
            f" translate(%(expressions)s, '{FINAL_SIGMA}', '{SIGMA}'))",
        )
        query = Func(
            Value(" & ".join(quoted)),
            template=f"to_tsquery('{NAME_CONFIG}'::regconfig, %(expressions)s)",
        )
        return profiles.filter(
            Func(
                vector,
                query,
                arg_joiner=" @@ ",
                template="(%(expressions)s)",
                output_field=BooleanField(),
            )
        )
    profiles = profiles.alias(
        words=Func(F("name"), function="chat_name_words", output_field=CharField())
    )
    for word in words:
        profiles = profiles.filter(words__contains=" " + fold(word))
    return profiles
