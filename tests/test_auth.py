"""chat.auth: a socket belongs to whom Channels' AuthMiddlewareStack would say.

Every case is decided by our middleware and by Channels' stack on the same
cookie, and through the real application on both endpoints: only a session
that Channels would accept opens a socket.
"""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from collections.abc import Callable
from importlib import import_module
from types import SimpleNamespace
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.auth import AuthMiddlewareStack
from channels.db import DatabaseSyncToAsync
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
from django.contrib.auth.backends import ModelBackend
from django.db import connection
from django.test.utils import CaptureQueriesContext

from chat import auth
from chat.auth import SessionAuthMiddleware
from chat.transport import daphne_protocol
from tests.chatclient import TIMEOUT, session_cookie_for, socket_headers
from tests.conftest import _make_user

pytestmark = pytest.mark.django_db(transaction=True)

ORIGIN = (b"origin", b"http://localhost")
HOST = (b"host", b"localhost")


def cookie_header(value: str) -> tuple[bytes, bytes]:
    return (b"cookie", value.encode("latin1"))


def session_header(session_key: str) -> tuple[bytes, bytes]:
    return cookie_header(f"csrftoken=abc; {settings.SESSION_COOKIE_NAME}={session_key}")


def new_user(**fields: Any):
    user = _make_user(f"u{uuid.uuid4().hex[:10]}")
    for name, value in fields.items():
        setattr(user, name, value)
    user.save()
    return user


def stored_session(user, *, backend: str | None = None, auth_hash: bool = True) -> str:
    """A session made by hand, for the states Django's login never leaves behind."""
    session = import_module(settings.SESSION_ENGINE).SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = backend or "django.contrib.auth.backends.ModelBackend"
    if auth_hash:
        session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.save()
    return session.session_key


def session_exists(session_key: str) -> bool:
    return import_module(settings.SESSION_ENGINE).SessionStore().exists(session_key)


# Each case sets up its own state and returns the socket's headers and who
# must be found (None: AnonymousUser, so the handshake is refused).
Case = Callable[[], tuple[list[tuple[bytes, bytes]], str | None]]


def logged_in() -> tuple[list, str | None]:
    user = new_user()
    return [session_header(session_cookie_for(user))], user.username


def no_cookie_header() -> tuple[list, str | None]:
    return [], None


def no_session_cookie() -> tuple[list, str | None]:
    return [cookie_header("csrftoken=abc")], None


def unknown_session_key() -> tuple[list, str | None]:
    return [session_header("x" * 32)], None


def user_deleted() -> tuple[list, str | None]:
    user = new_user()
    headers = [session_header(session_cookie_for(user))]
    user.delete()
    return headers, None


def password_changed() -> tuple[list, str | None]:
    user = new_user()
    headers = [session_header(session_cookie_for(user))]
    user.set_password("another-passphrase-77")
    user.save()
    return headers, None


def user_inactive() -> tuple[list, str | None]:
    user = new_user()
    headers = [session_header(session_cookie_for(user))]
    user.is_active = False
    user.save()
    return headers, None


def backend_not_configured() -> tuple[list, str | None]:
    user = new_user()
    backend = "django.contrib.auth.backends.AllowAllUsersModelBackend"
    return [session_header(stored_session(user, backend=backend))], None


def no_auth_hash() -> tuple[list, str | None]:
    return [session_header(stored_session(new_user(), auth_hash=False))], None


def session_in_a_second_cookie_header() -> tuple[list, str | None]:
    # Channels reads the first `cookie` header only.
    user = new_user()
    return [cookie_header("csrftoken=abc"), session_header(session_cookie_for(user))], None


CASES: list[Case] = [
    logged_in,
    no_cookie_header,
    no_session_cookie,
    unknown_session_key,
    user_deleted,
    password_changed,
    user_inactive,
    backend_not_configured,
    no_auth_hash,
    session_in_a_second_cookie_header,
]


async def through(app_factory: Callable[[Any], Any], headers: list, send: Any = None) -> dict:
    """What the application inside `app_factory(inner)` sees: scope, receive and send."""
    seen: dict[str, Any] = {}

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        seen.update(scope=scope, receive=receive, send=send)

    scope = {"type": "websocket", "path": "/ws/chat/", "headers": headers}
    await app_factory(inner)(scope, None, send)
    seen["outer"] = scope
    return seen


def who(scope: dict) -> str | None:
    user = scope["user"]
    return user.get_username() if user.is_authenticated else None


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.__name__)
async def test_the_user_is_whom_channels_finds(case: Case):
    headers, expected = await sync_to_async(case)()
    ours = await through(SessionAuthMiddleware, headers)
    headers_again, expected_again = await sync_to_async(case)()
    channels = await through(AuthMiddlewareStack, headers_again)

    assert who(ours["scope"]) == expected
    assert who(channels["scope"]) == expected_again
    assert (expected is None) == (expected_again is None)
    assert (ours["scope"]["session_key"] is None) == (
        channels["scope"]["session"].session_key is None
    )


@pytest.mark.parametrize("path", ["/ws/chat/", "/socket"])
@pytest.mark.parametrize("case", CASES, ids=lambda case: case.__name__)
async def test_only_a_session_channels_accepts_opens_a_socket(memory_layer, case: Case, path):
    from chatsite.asgi import application

    headers, expected = await sync_to_async(case)()
    communicator = WebsocketCommunicator(application, path, headers=[*headers, HOST, ORIGIN])
    connected, _ = await communicator.connect(timeout=TIMEOUT)
    try:
        assert connected is (expected is not None)
        if connected and path == "/ws/chat/":
            hello = await communicator.receive_json_from(timeout=TIMEOUT)
            assert hello["type"] == "hello"
    finally:
        await communicator.disconnect()


async def test_a_session_whose_hash_fails_is_flushed_as_channels_does():
    user = await sync_to_async(new_user)()
    session_key = await sync_to_async(session_cookie_for)(user)
    user.set_password("another-passphrase-77")
    await sync_to_async(user.save)()

    seen = await through(SessionAuthMiddleware, [session_header(session_key)])

    assert who(seen["scope"]) is None
    assert seen["scope"]["session_key"] is None
    assert not await sync_to_async(session_exists)(session_key)


async def test_the_consumer_gets_one_copy_of_the_scope_with_the_session_key(alice):
    session_key = await sync_to_async(session_cookie_for)(alice)

    seen = await through(SessionAuthMiddleware, [session_header(session_key), ORIGIN])

    scope, outer = seen["scope"], seen["outer"]
    assert scope is not outer
    # The key, not the session: its decoded data would stay for the socket's life.
    # (and the handshake's token for the stall rule of chat.database).
    assert set(scope) == set(outer) | {"session_key", "user", "database_handshake"}
    assert scope["user"] == alice
    assert scope["session_key"] == session_key


async def test_daphnes_send_reaches_the_consumer_untouched(alice):
    session_key = await sync_to_async(session_cookie_for)(alice)
    protocol = SimpleNamespace(sendCloseFrame=lambda **kwargs: None)
    send = functools.partial(lambda protocol, message: None, protocol)

    seen = await through(SessionAuthMiddleware, [session_header(session_key)], send=send)

    assert seen["send"] is send
    assert daphne_protocol(seen["send"]) is protocol


async def test_session_and_user_load_in_one_database_trip(alice, monkeypatch):
    """One trip to a socket-read thread (chat.database), not Channels' database thread."""
    session_key = await sync_to_async(session_cookie_for)(alice)
    queries: list[list[str]] = []

    def refusing_handler(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the handshake waited on Channels' database thread")

    loader = auth.sessions_and_users

    def counting_loader(keys: list[str | None]) -> Any:
        with CaptureQueriesContext(connection) as captured:
            result = loader(keys)
        queries.append([q["sql"] for q in captured.captured_queries])
        return result

    monkeypatch.setattr(DatabaseSyncToAsync, "thread_handler", refusing_handler)
    monkeypatch.setattr(auth, "sessions_and_users", counting_loader)

    seen = await through(SessionAuthMiddleware, [session_header(session_key)])

    assert who(seen["scope"]) == "alice"
    assert len(queries) == 1 and len(queries[0]) == 2, queries  # the session, the user


@pytest.mark.django_db(transaction=True)
def test_sessions_of_many_keys_are_read_in_one_query_and_each_as_channels_would():
    """Every case at once, with the database engine, against the same cases one by one."""
    built = [case() for case in CASES]
    keys = [auth.session_key_of(headers) for headers, _ in built]
    with CaptureQueriesContext(connection) as captured:
        together = auth.sessions_and_users(keys)
    one_by_one = [
        auth.session_and_user(auth.session_key_of(headers)) for headers, _ in rebuilt(CASES)
    ]

    for (_, expected), outcome, alone in zip(built, together, one_by_one, strict=True):
        assert not isinstance(outcome, Exception), outcome
        session_key, user = outcome
        assert (user.get_username() if user.is_authenticated else None) == expected
        assert (session_key is None) == (alone[0] is None)
    sql = [q["sql"] for q in captured.captured_queries if "django_session" in q["sql"]]
    reads = [q for q in sql if q.startswith("SELECT")]
    # One read for every key; the only others are flush's, before its DELETE.
    assert len([q for q in reads if " IN (" in q]) == 1, sql
    assert len(reads) - 1 == len([q for q in sql if q.startswith("DELETE")]), sql
    user_reads = [
        q["sql"]
        for q in captured.captured_queries
        if q["sql"].startswith("SELECT") and 'FROM "auth_user"' in q["sql"]
    ]
    assert len(user_reads) == 1, user_reads  # every session's user, in one query


def rebuilt(cases: list[Case]) -> list[tuple[list, str | None]]:
    return [case() for case in cases]


@pytest.mark.django_db(transaction=True)
def test_two_sessions_of_one_user_get_a_user_object_each(alice):
    keys = [session_cookie_for(alice), session_cookie_for(alice)]

    (first_key, first), (second_key, second) = auth.sessions_and_users(keys)

    assert (first_key, second_key) == tuple(keys)
    assert first == second == alice
    assert first is not second  # as Channels' get_user, one per socket


class OwnLookupBackend(ModelBackend):
    """A backend with a `get_user` of its own, which must be asked."""

    asked: list[Any] = []

    def get_user(self, user_id: Any) -> Any:
        OwnLookupBackend.asked.append(user_id)
        return super().get_user(user_id)


@pytest.mark.django_db(transaction=True)
def test_a_backend_with_its_own_get_user_is_asked(settings, alice, bob):
    own = f"{__name__}.OwnLookupBackend"
    settings.AUTHENTICATION_BACKENDS = [*settings.AUTHENTICATION_BACKENDS, own]
    OwnLookupBackend.asked = []
    keys = [stored_session(alice, backend=own), session_cookie_for(bob)]

    users = [user for _, user in auth.sessions_and_users(keys)]

    assert users == [alice, bob]
    assert OwnLookupBackend.asked == [alice.pk]


@pytest.mark.django_db(transaction=True)
def test_an_expired_session_is_no_session(alice):
    session = import_module(settings.SESSION_ENGINE).SessionStore(session_cookie_for(alice))
    session.set_expiry(-1)
    session.save()

    ((session_key, user),) = auth.sessions_and_users([session.session_key])

    assert session_key is None and not user.is_authenticated


async def test_the_configured_session_cookie_name_is_read(settings, alice):
    settings.SESSION_COOKIE_NAME = "chat_session"
    session_key = await sync_to_async(stored_session)(alice)

    named = await through(SessionAuthMiddleware, [cookie_header(f"chat_session={session_key}")])
    default = await through(SessionAuthMiddleware, [cookie_header(f"sessionid={session_key}")])

    assert who(named["scope"]) == "alice"
    assert who(default["scope"]) is None


@pytest.mark.parametrize(
    "engine",
    [
        "django.contrib.sessions.backends.signed_cookies",
        "django.contrib.sessions.backends.cache",
        "django.contrib.sessions.backends.cached_db",
    ],
)
async def test_any_session_engine_is_used(settings, alice, engine):
    settings.SESSION_ENGINE = engine
    session_key = await sync_to_async(session_cookie_for)(alice)

    seen = await through(SessionAuthMiddleware, [session_header(session_key)])

    # Another engine could not have read this key: its session says alice.
    assert who(seen["scope"]) == "alice"
    assert seen["scope"]["session_key"] == session_key


# A quoted cookie value's `\000` is a NUL once unquoted, as any HTTP client can send it.
POISONED_COOKIE = cookie_header(f'{settings.SESSION_COOKIE_NAME}="abcd\\000efghij"')


@pytest.mark.parametrize(
    "key", ["abcd\x00efghij", "short", "a" * 31 + " ", "é" * 32, "x" * 5000, "k" * 31 + "\n"]
)
async def test_a_malformed_session_key_is_no_session_and_is_never_looked_up(key, monkeypatch):
    looked_up: list[list[str | None]] = []
    loader = auth.sessions_and_users

    def recording_loader(keys: list[str | None]) -> Any:
        looked_up.append(keys)
        with CaptureQueriesContext(connection) as captured:
            result = loader(keys)
        assert not captured.captured_queries
        return result

    monkeypatch.setattr(auth, "sessions_and_users", recording_loader)
    quoted = key.replace("\\", "\\\\").replace('"', '\\"')
    headers = [cookie_header(f'{settings.SESSION_COOKIE_NAME}="{quoted}"')]

    seen = await through(SessionAuthMiddleware, headers)

    assert who(seen["scope"]) is None
    assert seen["scope"]["session_key"] is None
    assert looked_up == [[None]]


async def test_poisoned_cookies_opening_with_real_ones_fail_only_themselves(memory_layer):
    """40 real handshakes interleaved with 40 whose cookie holds a NUL (PostgreSQL refuses it)."""
    from chatsite.asgi import application

    users = [await sync_to_async(new_user)() for _ in range(40)]
    keys = [await sync_to_async(session_cookie_for)(user) for user in users]
    real = [[session_header(key), HOST, ORIGIN] for key in keys]
    poisoned = [[POISONED_COOKIE, HOST, ORIGIN] for _ in keys]
    interleaved = [headers for pair in zip(real, poisoned, strict=True) for headers in pair]
    communicators = [
        WebsocketCommunicator(application, "/ws/chat/", headers=headers) for headers in interleaved
    ]

    async def hello_of(communicator: WebsocketCommunicator) -> str | None:
        connected, _ = await communicator.connect(timeout=TIMEOUT * 4)
        if not connected:
            return None
        hello = await communicator.receive_json_from(timeout=TIMEOUT * 4)
        return hello["user"]

    try:
        outcomes = await asyncio.gather(
            *(hello_of(c) for c in communicators), return_exceptions=True
        )
    finally:
        await asyncio.gather(*(c.disconnect() for c in communicators), return_exceptions=True)

    assert outcomes[0::2] == [user.username for user in users]
    assert outcomes[1::2] == [None] * 40


async def test_a_handshake_whose_session_read_stalls_is_told_to_try_again_not_logged_out(
    alice, monkeypatch, settings
):
    """Issue 14.6: the session read has the time limit; past it, close 1013 (not 403)."""
    from chat import database
    from chatsite.asgi import application

    settings.CHAT_DATABASE_TIMEOUT = 0.5
    loader = auth.sessions_and_users

    def stalled_loader(keys: list[str | None]) -> Any:
        time.sleep(3)  # a database that does not answer for longer than the limit
        return loader(keys)

    monkeypatch.setattr(auth, "sessions_and_users", stalled_loader)
    cookie = await sync_to_async(session_cookie_for)(alice)
    communicator = WebsocketCommunicator(application, "/ws/chat/", headers=socket_headers(cookie))
    started = time.monotonic()
    try:
        connected, _ = await communicator.connect(timeout=TIMEOUT)
        assert connected  # accepted, so that the close can carry its code
        closed = await communicator.receive_output(timeout=TIMEOUT)
        assert closed == {"type": "websocket.close", "code": 1013}
        assert time.monotonic() - started < 2.5
        assert database.stalled()  # and /healthz says so
    finally:
        await communicator.disconnect()
        database.forget_stalls()
