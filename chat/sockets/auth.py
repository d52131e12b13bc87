"""A websocket's Django session and user, in one ASGI middleware layer.

Channels' `AuthMiddlewareStack` is three layers (cookies, session, user). Each
keeps a copy of the scope and a suspended coroutine frame for the socket's
whole life, and the session layer wraps `send` in an `InstanceSessionWrapper`
that checks the session on every frame: kilobytes per idle socket (figures
in bench/RESULTS.md). `SessionAuthMiddleware` does their work with one scope
copy and one frame, and passes the server's `send` on untouched.

What decides who a socket belongs to is Channels' own: the first `cookie`
header parsed by Django's `parse_cookie`, the session from
`settings.SESSION_ENGINE` (any engine), and the user as
`channels.auth.get_user` finds it (backend listed in AUTHENTICATION_BACKENDS,
session auth hash checked, the session flushed and AnonymousUser on any
mismatch). One trip to the database thread loads both, as with Channels, whose
session is lazy and is read inside `get_user`'s trip; sockets that open
together share that trip (`chat.coalesce`), and with the database session
engine their sessions are read in one query and their users in another
(`sessions_and_users`, `users_of`: `get_user`'s steps with the user reads
together), checked against Channels' stack case by case in tests/test_auth.py.

Left out because nothing here needs it:

- `scope["cookies"]`: nothing reads it, and it would be one more dict per socket.
- `scope["session"]`: the consumers need only the session's key (to close the
  sockets of a session that logs out), so the scope gets `session_key`, the
  key as Channels' session would hold it once the user is loaded (None when
  there is no session or it was flushed). The session object and its decoded
  data would stay in memory for the socket's life.
- The lazy wrapper around `scope["user"]`: it is resolved before the consumer runs.
- Saving the session. Channels saves a modified session only when an
  `http.response.start` goes out, which never happens on a websocket, and the
  consumers never modify the session (get_user's flush deletes it itself).
"""

from __future__ import annotations

import copy
import re
import time
from importlib import import_module
from typing import Any

from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, get_user_model, load_backend
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.models import AnonymousUser
from django.contrib.sessions.backends.base import SessionBase
from django.http.cookie import parse_cookie
from django.utils import timezone
from django.utils.crypto import constant_time_compare

from chat.coalesce import Coalescer, each
from chat.database import bounded, handshake_admitted, handshake_done
from chat.protocol import UNAVAILABLE, ChatError
from chat.upstream.channels import get_user_sync, user_session_key
from chat.upstream.django import preloading

# Channels' `get_user` without its `database_sync_to_async` wrapper, so that
# the session and the user load in one trip to the database thread.
_get_user = get_user_sync()


# What any of Django's session engines makes a key of: letters and digits
# (database, cache, file), and signing's URL-safe base64, ':' and '.'
# (signed cookies); Django itself refuses keys under 8 characters. A cookie
# of anything else (a NUL, which PostgreSQL refuses in a query) is no session.
_WELL_FORMED_KEY = re.compile(r"[A-Za-z0-9_:.\-]{8,4096}")


def session_key_of(headers: Any) -> str | None:
    """The session key in the first `cookie` header, as Channels' CookieMiddleware reads it.

    None when there is none or it is not well formed: such a key is never
    looked up, so it costs no query and cannot fail anyone else's.
    """
    for name, value in headers:
        if name == b"cookie":
            key = parse_cookie(value.decode("latin1")).get(settings.SESSION_COOKIE_NAME)
            return key if key is not None and _WELL_FORMED_KEY.fullmatch(key) else None
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
    preloaded = preloading(engine)
    if preloaded is None:
        return each(session_and_user, session_keys)
    model = engine.get_model_class()
    live = model.objects.filter(
        session_key__in={key for key in session_keys if key and _WELL_FORMED_KEY.fullmatch(key)},
        expire_date__gt=timezone.now(),
    )
    rows = {row.session_key: row for row in live}
    sessions = []
    for key in session_keys:
        session = preloaded(key)
        session.row = rows.get(session.session_key) if session.session_key else None
        sessions.append(session)
    users = users_of(sessions)
    return [
        user if isinstance(user, BaseException) else (session.session_key, user)
        for session, user in zip(sessions, users, strict=True)
    ]


def users_of(sessions: list[SessionBase]) -> list[Any]:
    """Channels' `get_user` of each session, the users of model backends read in one query.

    `ModelBackend.get_user` reads its user by primary key, one query per
    socket; the users that it (or a backend inheriting it unchanged) would
    read are read together here. Every other step is `get_user`'s, in its
    order: the user id and backend taken from the session, the backend
    listed in AUTHENTICATION_BACKENDS, the backend's `user_can_authenticate`,
    the session auth hash (the session flushed on a mismatch). A session
    whose steps fail gets its exception.
    """
    claims = each(_claim_of, sessions)
    by_model_backend = {
        claim[0] for claim in claims if isinstance(claim, tuple) and _reads_by_pk(claim[1])
    }
    # With each user's profile: `hello` names the user without a trip of its own.
    read = (
        get_user_model()._default_manager.select_related("chat_profile").in_bulk(by_model_backend)
    )
    handed_out: set[Any] = set()

    def user_of(pair: tuple[SessionBase, Any]) -> Any:
        session, claim = pair
        if isinstance(claim, BaseException):
            raise claim
        if claim is None:
            return AnonymousUser()
        user_id, backend = claim
        user: Any
        if _reads_by_pk(backend):
            user = read.get(user_id)
            if user is not None and user_id in handed_out:
                user = copy.copy(user)  # each socket its own, as get_user gives
            handed_out.add(user_id)
            user = user if user is not None and backend.user_can_authenticate(user) else None
        else:
            user = backend.get_user(user_id)
        if hasattr(user, "get_session_auth_hash"):
            session_hash = session.get(HASH_SESSION_KEY)
            verified = session_hash and constant_time_compare(
                session_hash, user.get_session_auth_hash()
            )
            if not verified:
                session.flush()
                user = None
        return user or AnonymousUser()

    return each(user_of, list(zip(sessions, claims, strict=True)))


def _reads_by_pk(backend: Any) -> bool:
    """Whether the backend reads its users as `ModelBackend.get_user` does, by primary key."""
    return type(backend).get_user is ModelBackend.get_user


def _claim_of(session: SessionBase) -> tuple[Any, Any] | None:
    """The user id and backend a session names, as `get_user` reads them; None if none."""
    try:
        user_id = user_session_key(session)
        backend_path = session[BACKEND_SESSION_KEY]
    except KeyError:
        return None
    if backend_path not in settings.AUTHENTICATION_BACKENDS:
        return None
    return user_id, load_backend(backend_path)


# Sockets opening together load their sessions and users in one trip
# (`sessions_and_users` is looked up at each trip, so that a test can wrap it).
_load: Coalescer[str | None, tuple[str | None, Any]] = Coalescer(
    bounded(lambda keys: sessions_and_users(keys))
)


class SessionAuthMiddleware:
    """Puts `session_key` and `user` into a websocket's scope."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def __call__(self, scope: Any, receive: Any, send: Any) -> Any:
        key = session_key_of(scope["headers"])
        # While the database is stalled one handshake at a time tries it (chat.database).
        handshake = (object(), time.monotonic())
        try:
            if not handshake_admitted(handshake[0]):
                raise ChatError(UNAVAILABLE, "the database is stalled")
            session_key, user = await _load(key)
        except ChatError as error:
            handshake_done(handshake[0], started=handshake[1], ok=False)
            if error.code != UNAVAILABLE:
                raise
            # Not "no session" (403, which a client takes as logged out): the
            # consumer accepts and closes with 1013, try again later.
            scope = dict(scope, session_key=None, user=None, database_stalled=True)
            return await self.inner(scope, receive, send)
        scope = dict(scope, session_key=session_key, user=user, database_handshake=handshake)
        return await self.inner(scope, receive, send)
