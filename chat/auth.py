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
that trip (`chat.coalesce`).

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

from importlib import import_module
from typing import Any

from channels.auth import get_user
from django.conf import settings
from django.http.cookie import parse_cookie

from chat.coalesce import on_database_thread

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


# Sockets opening together load their sessions and users in one trip.
# `session_and_user` is looked up at each call, so that a test can wrap it.
def _session_and_user(session_key: str | None) -> tuple[str | None, Any]:
    return session_and_user(session_key)


_load = on_database_thread(_session_and_user)


class SessionAuthMiddleware:
    """Puts `session_key` and `user` into a websocket's scope."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def __call__(self, scope: Any, receive: Any, send: Any) -> Any:
        key = session_key_of(scope["headers"])
        session_key, user = await _load(key)
        scope = dict(scope, session_key=session_key, user=user)
        return await self.inner(scope, receive, send)
