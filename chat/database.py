"""Time limits on the server's database calls, and whether the database is stalled.

A database that stops answering (a lock held by a migration or a stuck
transaction, a full disk) must not stall every socket with it. Three things
bound what it costs:

- Every statement of the server process has a time limit,
  `CHAT_DATABASE_TIMEOUT`: PostgreSQL cancels it (`lock_timeout`,
  `statement_timeout`), SQLite stops waiting for its write lock (`timeout`).
  The command then gets `unavailable`; a send that timed out was rolled back,
  so nothing acknowledged is lost. Only the server is limited (`asgi.py`
  applies it): `manage.py` commands such as `migrate` keep no limit.
- Socket reads (`history`, `sync`, `members`) and a handshake's reads (its
  session and user, groups and `last_id`: `bounded`) run on a few threads
  of their own (`read_for_socket`), not on Channels' single database
  thread, where they would queue behind a stalled write and hold up every
  other socket's reads and sends.
- `stalled()` is true while a socket's database call has recently run out of
  time: `/healthz` then answers 503, and new sockets are closed at once with
  1013 instead of queueing behind the stall. The handshake that notices a
  stall first (its own read ran out of time) is closed with 1013 too.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from django.conf import settings
from django.db import DatabaseError, close_old_connections

from chat.protocol import UNAVAILABLE, ChatError

logger = logging.getLogger(__name__)

A = TypeVar("A")
R = TypeVar("R")

# Threads for socket reads: enough that one stalled read leaves others
# running, few enough to stay well inside DATABASE_POOL_SIZE.
READ_THREADS = 4

_reads: ThreadPoolExecutor | None = None
# When a socket's database call last ran out of time (monotonic), or None.
_last_stall: float | None = None


def limit_statements(databases: Any, seconds: float) -> None:
    """Give every connection of `databases` made from now on a `seconds` time limit."""
    if not seconds:
        return
    for database in databases.values():
        options = database.setdefault("OPTIONS", {})
        if database["ENGINE"] == "django.db.backends.postgresql":
            ms = max(1, int(seconds * 1000))
            limits = f"-c lock_timeout={ms} -c statement_timeout={ms}"
            options["options"] = f"{options.get('options', '')} {limits}".strip()
        elif database["ENGINE"] == "django.db.backends.sqlite3":
            options["timeout"] = seconds


def note_stall() -> None:
    """Record that a socket's database call ran out of time just now."""
    global _last_stall
    _last_stall = time.monotonic()


def stalled() -> bool:
    """Whether a socket's database call ran out of time within the last two limits."""
    limit = settings.CHAT_DATABASE_TIMEOUT
    last = _last_stall
    return bool(limit) and last is not None and time.monotonic() - last < 2 * limit


def forget_stalls() -> None:
    global _last_stall
    _last_stall = None


async def read_for_socket(read: Callable[..., R], /, **kwargs: Any) -> R:
    """`read(**kwargs)` on a socket-read thread, within `CHAT_DATABASE_TIMEOUT`.

    Past the limit, or on a database error, `ChatError(unavailable)`; a
    `ChatError` of `read` itself (`not_member`, say) passes through.
    """
    try:
        return await _within_limit(functools.partial(read, **kwargs))
    except DatabaseError as error:
        logger.warning("a socket's database read failed: %s", error)
        raise ChatError(UNAVAILABLE, "the database did not answer in time; try again") from None


def bounded(read: Callable[[A], R]) -> Callable[[A], Awaitable[R]]:
    """`read` as a coroutine function on the socket-read threads, within the time limit.

    Past the limit, `ChatError(unavailable)`; any other error of `read`
    passes through as it is (a trip shared by many callers tries each alone
    then, so that one bad argument fails only its own caller).
    """

    async def run(arg: A) -> R:
        return await _within_limit(functools.partial(read, arg))

    return run


async def _within_limit(call: Callable[[], R]) -> R:
    global _reads
    if _reads is None:
        _reads = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="chat-socket-read")
    limit = settings.CHAT_DATABASE_TIMEOUT
    future = asyncio.get_running_loop().run_in_executor(
        _reads, functools.partial(_run_closing_connections, call)
    )
    try:
        # The statement limit ends the query; this bounds the wait if it does not.
        return await asyncio.wait_for(future, 2 * limit if limit else None)
    except TimeoutError:
        note_stall()
    except DatabaseError as error:
        if not _is_timeout(error):
            raise
        note_stall()
    logger.warning("a socket's database read ran out of time")
    raise ChatError(UNAVAILABLE, "the database did not answer in time; try again")


def _run_closing_connections(call: Callable[[], R]) -> R:
    # As Channels' database_sync_to_async: drop broken or expired connections
    # before and after, so a pooled one goes back to the pool.
    close_old_connections()
    try:
        return call()
    finally:
        close_old_connections()


def _is_timeout(error: BaseException) -> bool:
    """Whether a database error is a time limit (or lock wait) running out."""
    text = str(error).lower()
    return any(
        sign in text
        for sign in ("statement timeout", "lock timeout", "database is locked", "canceling")
    )


def note_if_timeout(error: BaseException) -> None:
    """`note_stall` if `error` is a database time limit running out."""
    if isinstance(error, TimeoutError) or (isinstance(error, DatabaseError) and _is_timeout(error)):
        note_stall()
