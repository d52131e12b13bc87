"""Test users, made fast: each password is hashed once per run."""

from __future__ import annotations

import functools


def _make_user(username: str, password: str | None = None):
    """A user whose password is `password` (`pw-<username>` unless given), hashed
    as in production (PBKDF2).

    A hash costs about half a second of CPU and hundreds of tests make the
    same users, so each password is hashed once per run and the (salted,
    valid) hash reused: servers the tests start check it as any other.
    """
    from django.contrib.auth import get_user_model

    user_model = get_user_model()
    user = user_model(username=user_model.normalize_username(username))
    user.password = _password_hash(password or "pw-" + username)
    user.save()
    return user


@functools.cache
def _password_hash(password: str) -> str:
    from django.contrib.auth.hashers import make_password

    return make_password(password)
