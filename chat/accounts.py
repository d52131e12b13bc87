"""Accounts: sign-up rules, guest users, and how many one client address may create.

Guest names start with a reserved prefix that sign-up refuses, so a guest
name never belongs to a registered user and vice versa. Guests that have
not connected for CHAT_GUEST_RETENTION_DAYS are removed by
`manage.py removeguests` (`guests_remove_inactive`); what they wrote stays.
"""

from __future__ import annotations

import datetime
import functools
import logging
import secrets
import threading
import time
from typing import NamedTuple

import redis
from django import forms
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.forms import UserCreationForm
from django.contrib.auth.models import User
from django.db import DatabaseError, IntegrityError, transaction
from django.db.models.functions import Coalesce
from django.utils import timezone

from chat.lookalikes import lookalike_taken, looks_like_prefix
from chat.profiles import set_name
from chat.protocol import MAX_NAME_CHARS, display_name_refusal

logger = logging.getLogger(__name__)

GUEST_PREFIX = "guest-"
# The one account that removed guests' messages are handed to, so that others'
# history keeps them. Not a name a guest can get (ids are digits or 8 hex
# digits), nor one sign-up gives (the guest prefix).
REMOVED_GUEST = GUEST_PREFIX + "removed"


def is_guest_name(username: str) -> bool:
    return username.lower().startswith(GUEST_PREFIX)


def clean_display_name(value: str) -> str:
    """A display name typed into a form, trimmed; `ValidationError` saying why if refused."""
    refused = display_name_refusal(value)
    if refused is not None:
        raise forms.ValidationError(refused[:1].upper() + refused[1:] + ".")
    return value.strip()


class SignupForm(UserCreationForm):  # type: ignore[type-arg]
    """Django's sign-up, with the username rules above and an optional display name."""

    display_name = forms.CharField(
        label="Display name",
        required=False,
        # Room for spaces that trimming removes; the rule counts after trimming.
        max_length=MAX_NAME_CHARS * 2,
        help_text="What people see. Leave it empty to be shown by your username.",
    )

    def clean_username(self) -> str:
        username = super().clean_username()
        # Django's own check returns None (despite its type) once it has
        # recorded "name taken"; that error is enough.
        if username and (is_guest_name(username) or looks_like_prefix(username, GUEST_PREFIX)):
            raise forms.ValidationError(
                f"Names starting with “{GUEST_PREFIX}” are kept for guests."
            )
        if username and lookalike_taken(username):
            raise forms.ValidationError(
                "This name looks the same as an existing user's. Please choose another."
            )
        return username

    def clean_display_name(self) -> str:
        name = str(self.cleaned_data.get("display_name") or "")
        return clean_display_name(name) if name.strip() else ""

    def save(self, commit: bool = True) -> User:
        user: User = super().save(commit=commit)
        if commit and self.cleaned_data.get("display_name"):
            set_name(user, self.cleaned_data["display_name"])
        return user


class GuestForm(forms.Form):
    """The name a guest chooses before entering (the login page fills in a suggestion)."""

    name = forms.CharField(label="Your name", max_length=MAX_NAME_CHARS * 2)

    def clean_name(self) -> str:
        return clean_display_name(str(self.cleaned_data["name"]))


_SUGGESTED_ADJECTIVES = (
    "Amber", "Brave", "Calm", "Clever", "Gentle", "Happy", "Lucky", "Merry", "Quiet", "Swift",
    "Bright", "Kind", "Jolly", "Sunny", "Witty", "Cosy",
)  # fmt: skip
_SUGGESTED_ANIMALS = (
    "Otter", "Heron", "Fox", "Badger", "Robin", "Panda", "Lynx", "Koala", "Owl", "Seal",
    "Wren", "Hare", "Finch", "Marten", "Puffin", "Gecko",
)  # fmt: skip


def guest_name_suggestion() -> str:
    """A friendly name to fill in for a guest, who may keep or change it."""
    return f"{secrets.choice(_SUGGESTED_ADJECTIVES)} {secrets.choice(_SUGGESTED_ANIMALS)}"


def guest_create(*, suffix: str | None = None) -> User | None:
    """A new guest user; with `suffix`, exactly `guest-<suffix>` or None if taken."""
    user_model = get_user_model()
    for _ in range(5):
        name = GUEST_PREFIX + (suffix if suffix is not None else secrets.token_hex(4))
        try:
            with transaction.atomic():
                user = user_model._default_manager.create_user(username=name)
        except IntegrityError:
            if suffix is not None:
                return None
            continue
        return user
    raise RuntimeError("could not find a free guest name")


def account_creation_allowed(address: str) -> bool:
    """Count one account created by `address`; False past CHAT_ACCOUNTS_PER_ADDRESS.

    A fixed window of CHAT_ACCOUNTS_WINDOW seconds per address (`counted`).
    """
    return counted(
        "accounts",
        address,
        limit=settings.CHAT_ACCOUNTS_PER_ADDRESS,
        window=settings.CHAT_ACCOUNTS_WINDOW,
    )


def counted(kind: str, key: str, *, limit: int, window: int) -> bool:
    """Count one `kind` of request for `key`; False once past `limit` in this window.

    A fixed window of `window` seconds, counted in Redis when REDIS_URL is
    set (all workers together), in this process's memory otherwise. A
    refused attempt counts too, so hammering does not reopen the limit
    early. `limit` or `window` 0: no limit. Runs on a thread (it may wait on
    Redis).
    """
    if not limit or not window:
        return True
    slot = int(time.time() // window)
    if settings.REDIS_URL:
        redis_key = f"{settings.REDIS_PREFIX}:{kind}:{key}:{slot}"
        pipe = _redis(settings.REDIS_URL).pipeline()
        pipe.incr(redis_key)
        pipe.expire(redis_key, window + 1)
        try:
            count, _ = pipe.execute()
        except redis.RedisError:
            # Sign-up and the rest keep working through a Redis outage, unlimited meanwhile.
            logger.warning("could not count the %s of %s", kind, key, exc_info=True)
            return True
        return int(count) <= limit
    return _memory_counts.count(kind, key, slot) <= limit


class _WindowCounts:
    """Counts per kind and key for each kind's current window, in memory; older windows pruned."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._windows: dict[str, tuple[int, dict[str, int]]] = {}

    def count(self, kind: str, key: str, slot: int) -> int:
        with self._lock:
            current, counts = self._windows.get(kind, (-1, {}))
            if slot != current:
                counts = {}
                self._windows[kind] = (slot, counts)
            counts[key] = counts.get(key, 0) + 1
            return counts[key]


_memory_counts = _WindowCounts()


@functools.cache
def _redis(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2)


class GuestRemoval(NamedTuple):
    """What one run of `guests_remove_inactive` did: how many removed, whom it could not."""

    removed: int
    failed: list[str]


def guests_remove_inactive(
    *, now: datetime.datetime | None = None, batch: int = 500
) -> GuestRemoval:
    """Remove the guests that have not connected for CHAT_GUEST_RETENTION_DAYS.

    A guest connects with a session made at its login (or, on the classic
    endpoint, at its creation), valid for SESSION_COOKIE_AGE: one whose
    last login (or creation) is older than both that and the retention, and
    that has no socket open now, cannot have connected within the retention.
    Its messages, sent and received, are handed to the `guest-removed`
    account first, so that they stay in everyone else's history (deleting a
    user deletes its messages); its memberships go with it.

    Each batch is one transaction, so a failure hands nothing over. A failed
    batch is retried guest by guest, and a guest that still fails is left for
    a later run (and named in `failed`): one bad row must not stop the rest
    from being removed, today or on any later run. If every guest of a batch
    of several fails, the cause is not the guests (the database is down,
    say): raise.
    """
    now = now or timezone.now()
    kept_for = max(
        datetime.timedelta(days=settings.CHAT_GUEST_RETENTION_DAYS),
        datetime.timedelta(seconds=settings.SESSION_COOKIE_AGE),
    )
    user_model = get_user_model()
    inactive = (
        user_model._default_manager.filter(username__istartswith=GUEST_PREFIX)
        .exclude(username=REMOVED_GUEST)
        .exclude(chat_connections__isnull=False)
        .alias(last_in=Coalesce("last_login", "date_joined"))
        .filter(last_in__lt=now - kept_for)
        .order_by("pk")
    )
    removed = 0
    failed: dict[int, str] = {}
    while ids := list(inactive.exclude(pk__in=failed).values_list("pk", flat=True)[:batch]):
        try:
            _guests_remove(ids)
            removed += len(ids)
            continue
        except DatabaseError:
            logger.warning("removing a batch of %d guest(s) failed; one by one", len(ids))
        last_error: DatabaseError | None = None
        for pk in ids:
            try:
                _guests_remove([pk])
                removed += 1
            except DatabaseError as error:
                last_error = error
                name = user_model._default_manager.filter(pk=pk).values_list("username", flat=True)
                failed[pk] = next(iter(name), str(pk))
                logger.exception("could not remove guest %s; left for a later run", failed[pk])
        if last_error is not None and len(ids) > 1 and all(pk in failed for pk in ids):
            raise last_error
    return GuestRemoval(removed, list(failed.values()))


def _guests_remove(ids: list[int]) -> None:
    """Hand these guests' messages to `guest-removed`, then delete them: all or nothing.

    The handed-over messages lose their `cid`: it only served the guest's own
    retries, and two guests may have used the same one, which `guest-removed`
    (one sender) cannot hold twice.
    """
    from chat.models import Message

    user_model = get_user_model()
    with transaction.atomic():
        heir, _ = user_model._default_manager.get_or_create(
            username=REMOVED_GUEST, defaults={"is_active": False}
        )
        Message.objects.filter(sender_id__in=ids).update(sender=heir, cid=None)
        Message.objects.filter(recipient_id__in=ids).update(recipient=heir)
        user_model._default_manager.filter(pk__in=ids).delete()
