"""Django: a database session store that is handed its row instead of reading it."""

from __future__ import annotations

import functools
import inspect
from typing import Any

from django.contrib.sessions.backends.base import SessionBase
from django.contrib.sessions.backends.db import SessionStore as DatabaseSessionStore

from chat.upstream.reaches import missing_assignments, missing_attributes

_READS_ROW = "_get_session_from_db"


def session_store_problem() -> str | None:
    """`preloading` overrides `_get_session_from_db` and names its class as the engine's."""
    found = missing_attributes(DatabaseSessionStore, _READS_ROW, "load") or missing_assignments(
        SessionBase.__init__, "_session_key"
    )
    if found is not None:
        return found
    try:
        salt = inspect.getsource(SessionBase.key_salt.fget)  # type: ignore[attr-defined]
    except (AttributeError, OSError, TypeError):
        return "django's SessionBase.key_salt cannot be read"
    if "__qualname__" not in salt:
        return "django no longer salts sessions with the store's __qualname__"
    return None


@functools.cache
def preloading(engine: type[Any]) -> type[Any] | None:
    """`engine` reading its session from a row given beforehand; None if it cannot.

    Only for the database engine and subclasses that read their row as it
    does (not cached_db, which asks its cache first), and only while
    `session_store_problem` finds nothing.
    """
    if session_store_problem() is not None:
        return None
    if not issubclass(engine, DatabaseSessionStore) or (
        engine.load is not DatabaseSessionStore.load
        or getattr(engine, _READS_ROW) is not getattr(DatabaseSessionStore, _READS_ROW)
    ):
        return None

    class Preloaded(engine):  # type: ignore[misc]
        row: Any = None

        def _get_session_from_db(self) -> Any:
            # As the database engine does when its query finds no live row:
            # the key is dropped (a new one would be made on saving).
            if self.row is None:
                self._session_key = None
            return self.row

    # Django salts a session's signed data with its store's class name:
    # named as the engine, this subclass reads (and writes) what it does.
    Preloaded.__qualname__ = engine.__qualname__
    return Preloaded
