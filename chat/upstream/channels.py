"""Channels: `get_user` without its hop to the database thread, and its session key reader."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from channels import auth


def get_user_problem() -> str | None:
    """`get_user_sync` is `get_user` as `database_sync_to_async` keeps it, `__wrapped__`."""
    if not callable(getattr(auth.get_user, "__wrapped__", None)):
        return "channels.auth.get_user no longer keeps the function it wraps as __wrapped__"
    if not callable(getattr(auth, "_get_user_session_key", None)):
        return "channels.auth has no _get_user_session_key"
    return None


def get_user_sync() -> Callable[[dict[str, Any]], Any]:
    """Channels' `get_user`, run on the calling thread (already the database thread)."""
    return auth.get_user.__wrapped__  # type: ignore[no-any-return]


def user_session_key(session: Any) -> Any:
    """The user id a session names, as `get_user` reads it (KeyError if none)."""
    return auth._get_user_session_key(session)
