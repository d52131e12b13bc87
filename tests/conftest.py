"""Shared fixtures: people (alice, bob, carol), channel layers, socket clients.

Consumer tests run once on the in-memory layer and once on a real Redis
(`layer` fixture). Redis is never skipped: if it does not answer, the test
fails and says how to start one.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any
from unittest import mock

import pytest
import redis
from asgiref.sync import sync_to_async
from channels.layers import channel_layers
from django.conf import LazySettings, settings
from django.db import OperationalError, connection, connections
from django.db.backends.utils import CursorWrapper

from chat import database
from chat.cancellation import cancel_and_wait
from chat.models import Message
from chat.worker import forget_workers

# Browser fixtures (Chromium + a daphne server): see tests/browser.py.
from tests.browser import (  # noqa: F401
    browser,
    chat_server,
    chat_server_env,
    chat_user,
    csp_violations_fail_the_test,
)
from tests.chatclient import ChatTestClient, open_socket
from tests.users import _make_user

REDIS_URL = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"

# Pages rendered in this process name static files as the apps have them:
# the hashed names need `collectstatic`, which tests/test_static.py runs for
# the server it starts with DEBUG off.
settings.STORAGES = {
    **settings.STORAGES,
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
settings.SERVESTATIC_USE_FINDERS = True


def require_redis() -> redis.Redis:
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(
            f"These tests need Redis at REDIS_URL={REDIS_URL} and it does not answer ({exc}). "
            "Start one with `redis-server --daemonize yes --save ''` "
            "(Debian: `apt-get install redis-server`), or point REDIS_URL at one.",
            pytrace=False,
        )
    return client


def _reset_process_state() -> None:
    channel_layers.backends.clear()
    forget_workers()
    database.forget_stalls()


@pytest.fixture(autouse=True)
def _fresh_account_counts() -> None:
    """Every test's accounts come from 127.0.0.1: each test starts with none counted."""
    from chat import accounts

    accounts._memory_counts = accounts._WindowCounts()


@pytest.fixture(autouse=True)
def _async_tests_end_their_tasks(request: pytest.FixtureRequest) -> None:
    """`_tasks_end_with_the_test` for async tests (sync ones may run a loop of their own)."""
    if inspect.iscoroutinefunction(getattr(request.node, "function", None)):
        request.getfixturevalue("_tasks_end_with_the_test")


@pytest.fixture
async def _tasks_end_with_the_test() -> AsyncIterator[None]:
    """End what a test left running (the hub's loops, say) before its loop closes.

    asyncio closes a loop by cancelling each task once and waiting for all of
    them, and a cancellation can be lost under channels_redis's receive (see
    `chat.cancellation.cancel_and_wait`): the test then hung at teardown until
    pytest-timeout, about one run in ten of some Redis tests.
    """
    yield
    leftover = asyncio.all_tasks() - {asyncio.current_task()}
    assert await cancel_and_wait(leftover), f"tasks would not end: {leftover}"
    # The test's `sync_to_async` calls ran on asgiref's database thread and
    # left its connection open: a pooled one stays checked out, and at the end
    # of the session PostgreSQL then refuses to drop the test database.
    await sync_to_async(connections.close_all)()


def use_memory_layer(settings: LazySettings) -> None:
    settings.REDIS_URL = ""
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    _reset_process_state()


def use_redis_layer(settings: LazySettings, prefix: str) -> None:
    settings.REDIS_URL = REDIS_URL
    settings.REDIS_PREFIX = prefix
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                # As in settings: a socket timeout above channels_redis's 5 s
                # blocking pop, so an idle receive is not taken for an outage.
                "hosts": [
                    {"address": REDIS_URL, "socket_timeout": 15, "socket_connect_timeout": 5}
                ],
                "prefix": f"{prefix}:layer:",
                "group_expiry": 60,
                "channel_capacity": {"chatworker.*": 100_000},
            },
        }
    }
    _reset_process_state()


def flush_prefix(client: redis.Redis, prefix: str) -> None:
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        client.delete(*keys)


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A key prefix of this test's own in the shared Redis, deleted afterwards."""
    client = require_redis()
    prefix = f"chat-test-{uuid.uuid4().hex[:12]}"
    yield prefix
    flush_prefix(client, prefix)


@pytest.fixture(params=["memory", "redis"])
def layer(request: pytest.FixtureRequest, settings: LazySettings) -> Iterator[str]:
    """Runs the test on the in-memory layer and on a real Redis."""
    settings.CHAT_NOTICE_DELAY = 0.02
    if request.param == "memory":
        use_memory_layer(settings)
        yield "memory"
    else:
        prefix = request.getfixturevalue("redis_prefix")
        use_redis_layer(settings, prefix)
        yield "redis"
    _reset_process_state()


@pytest.fixture
def memory_layer(settings: LazySettings) -> Iterator[None]:
    settings.CHAT_NOTICE_DELAY = 0.02
    use_memory_layer(settings)
    yield
    _reset_process_state()


@pytest.fixture
def alice(transactional_db):
    return _make_user("alice")


@pytest.fixture
def bob(transactional_db):
    return _make_user("bob")


@pytest.fixture
def carol(transactional_db):
    return _make_user("carol")


@pytest.fixture
async def connect(transactional_db) -> AsyncIterator:
    """`await connect(user)` opens a logged-in socket; all are closed at the end."""
    opened: list[ChatTestClient] = []

    async def _connect(user, **kwargs) -> ChatTestClient:
        client = await open_socket(user, **kwargs)
        opened.append(client)
        return client

    yield _connect
    for client in opened:
        await client.close()


make_user = sync_to_async(_make_user)


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix) -> None:
    """Tests open and close connections per call.

    A kept connection (DATABASE_CONN_MAX_AGE) would stay open in Channels'
    database thread after the last test, and PostgreSQL refuses to drop a
    test database that a session still uses.
    """
    from django.conf import settings

    for database_settings in settings.DATABASES.values():
        database_settings["CONN_MAX_AGE"] = 0


@contextlib.contextmanager
def refusing_message_inserts(refuse: Callable[[Any], bool] = lambda params: True) -> Iterator[None]:
    """The database refuses inserts into the message table (a full disk, say).

    `refuse(params)` picks which; on every thread, whichever way the insert is
    written (the ORM's, or PostgreSQL's one statement).
    """
    execute = CursorWrapper.execute
    insert = f"INSERT INTO {connection.ops.quote_name(Message._meta.db_table)}"

    def refusing(cursor: CursorWrapper, sql: str, params: Any = None) -> Any:
        if insert in sql and refuse(params):
            raise OperationalError("disk full")
        return execute(cursor, sql, params)

    with mock.patch.object(CursorWrapper, "execute", refusing):
        yield
