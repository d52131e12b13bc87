"""Accounts: sign-up rules and guest users.

Guest names start with a reserved prefix that sign-up refuses, so a guest
name never belongs to a registered user and vice versa.
"""

from __future__ import annotations

import secrets

from django import forms
from django.contrib.auth import get_user_model
from django.contrib.auth.forms import UserCreationForm
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction

from chat.lookalikes import lookalike_of, looks_like_prefix

GUEST_PREFIX = "guest-"


def is_guest_name(username: str) -> bool:
    return username.lower().startswith(GUEST_PREFIX)


class SignupForm(UserCreationForm):  # type: ignore[type-arg]
    def clean_username(self) -> str:
        username = super().clean_username()
        # Django's own check returns None (despite its type) once it has
        # recorded "name taken"; that error is enough.
        if username and (is_guest_name(username) or looks_like_prefix(username, GUEST_PREFIX)):
            raise forms.ValidationError(
                f"Names starting with “{GUEST_PREFIX}” are kept for guests."
            )
        if username:
            names = User._default_manager.values_list("username", flat=True)
            if lookalike_of(username, names.iterator(chunk_size=2000)) is not None:
                raise forms.ValidationError(
                    "This name looks the same as an existing user's. Please choose another."
                )
        return username


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
