"""Display names: what people chose to be called (protocol 1.2 `profile`).

The rule for a name is `chat.protocol.display_name_refusal`. A user who
chose none is called by their username.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.contrib.auth import get_user_model

from chat.models import Profile
from chat.protocol import display_name_refusal


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
