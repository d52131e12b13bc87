"""A websocket's Django session and user, in one ASGI middleware layer.

Channels' `AuthMiddlewareStack` is three layers (cookies, session, user). Each
keeps a copy of the scope and a suspended coroutine frame for the socket's
whole life, and the session layer wraps `send` in an `InstanceSessionWrapper`
that checks the session on every frame: 3.8 KB per idle socket (tracemalloc,
300 sockets under daphne). `SessionAuthMiddleware` does their work with one
scope copy and one frame (under 1 KB), and passes the server's `send` on untouched.

What decides who a socket belongs to is Channels' own: the first `cookie`
header parsed by Django's `parse_cookie`, the session from
`settings.SESSION_ENGINE` (any engine), and the user from the body of
`channels.auth.get_user` (backend listed in AUTHENTICATION_BACKENDS, session
auth hash checked, the session flushed and AnonymousUser on any mismatch).
One trip to the database thread loads both, as with Channels, whose session
is lazy and is read inside `get_user`'s trip; sockets that open together share
that trip (`chat.coalesce`), and with the database session engine their
sessions are read in one query (`sessions_and_users`).

Left out because nothing here needs it:

- `scope["cookies"]`: nothing reads it, and it would be one more dict per socket.
- `scope["session"]`: the consumers need only the session's key (to close the
  sockets of a session that logs out), so the scope gets `session_key`, the
  key as Channels' session would hold it once the user is loaded (None when
  there is no session or it was flushed). The session object and its decoded
  data would stay in memory for the socket's life: 0.5 KB per idle socket.
- The lazy wrapper around `scope["user"]`: it is resolved before the consumer runs.
- Saving the session. Channels saves a modified session only when an
  `http.response.start` goes out, which never happens on a websocket, and the
  consumers never modify the session (get_user's flush deletes it itself).
"""

from __future__ import annotations

import functools
from importlib import import_module
from typing import Any

from channels.auth import get_user
from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.sessions.backends.db import SessionStore as DatabaseSessionStore
from django.http.cookie import parse_cookie
from django.utils import timezone

from chat.coalesce import Coalescer, each

# Channels' `get_user` without its `database_sync_to_async` wrapper, so that
# the session and the user load in one trip to the database thread.
_get_user = get_user.__wrapped__


def session_key_of(headers: Any) -> str | None:
    """The session key in the first `cookie` header, as Channels' CookieMiddleware reads it."""
    for name, value in headers:
        if name == b"cookie":
            return parse_cookie(value.decode("latin1")).get(settings.SESSION_COOKIE_NAME)
    return None


def session_and_user(session_key: str | None) -> tuple[str | None, Any]:
    """The key of `session_key`'s session and its user (AnonymousUser when it has none).

    Runs on the database thread: the session reads its store when `get_user`
    first looks into it, and the user is a query. The key is the session's
    own after that: None when the store has no such session or `get_user`
    flushed it.
    """
    session = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    user = _get_user({"session": session})
    return session.session_key, user


def sessions_and_users(
    session_keys: list[str | None],
) -> list[tuple[str | None, Any] | BaseException]:
    """`session_and_user` of each key, for sockets opening together (one trip, in order).

    With the database session engine (the default) their sessions are read
    in one query first, and each session is given its row instead of reading
    its own; everything else, the user and `get_user`'s checks, is per key as
    in `session_and_user`. A key whose load fails gets its exception.
    """
    engine = import_module(settings.SESSION_ENGINE).SessionStore
    preloaded = _preloading(engine)
    if preloaded is None:
        return each(session_and_user, session_keys)
    model = engine.get_model_class()
    live = model.objects.filter(
        session_key__in={key for key in session_keys if key}, expire_date__gt=timezone.now()
    )
    rows = {row.session_key: row for row in live}

    def with_its_row(key: str | None) -> tuple[str | None, Any]:
        session = preloaded(key)
        session.row = rows.get(session.session_key) if session.session_key else None
        user = _get_user({"session": session})
        return session.session_key, user

    return each(with_its_row, session_keys)


@functools.cache
def _preloading(engine: type[Any]) -> type[Any] | None:
    """`engine` reading its session from a row given beforehand; None if it cannot.

    Only for the database engine and subclasses that read their row as it
    does (not cached_db, which asks its cache first).
    """
    reads_rows = "_get_session_from_db"
    if not issubclass(engine, DatabaseSessionStore) or (
        engine.load is not DatabaseSessionStore.load
        or getattr(engine, reads_rows) is not getattr(DatabaseSessionStore, reads_rows)
    ):
        return None

    class Preloaded(engine):  # type: ignore[valid-type, misc]
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


# Sockets opening together load their sessions and users in one trip
# (`sessions_and_users` is looked up at each trip, so that a test can wrap it).
_load: Coalescer[str | None, tuple[str | None, Any]] = Coalescer(
    database_sync_to_async(lambda keys: sessions_and_users(keys))
)


class SessionAuthMiddleware:
    """Puts `session_key` and `user` into a websocket's scope."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def __call__(self, scope: Any, receive: Any, send: Any) -> Any:
        key = session_key_of(scope["headers"])
        session_key, user = await _load(key)
        scope = dict(scope, session_key=session_key, user=user)
        return await self.inner(scope, receive, send)
