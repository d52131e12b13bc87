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
- `stalled()` is true from a socket's database call running out of time
  until the first call started after it succeeds (or two limits pass):
  `/healthz` then answers 503. Reads that succeed end a stall of reads only
  (on SQLite they succeed while a writer holds the lock); a write that
  succeeds ends any. While reads are stalled, one new socket at a time
  tries its reads (`handshake_admitted`): if they succeed the stall is over
  and it opens, and so do the next ones at once; the others, meanwhile, are
  closed at once with 1013 instead of queueing behind the stall, as is the
  one whose reads run out of time. A stall of writes alone holds back no
  handshake, which only reads.
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
# When a socket's database read, and write, last ran out of time (monotonic);
# absent once a call started after it succeeded.
_stalls: dict[str, float] = {}
# The handshake trying its reads while stalled (`handshake_admitted`), and since when.
_probe: tuple[object, float] | None = None


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


def note_stall(kind: str = "read") -> None:
    """Record that a socket's database call (a "read" or a "write") ran out of time just now."""
    _stalls[kind] = time.monotonic()


def note_answered(started: float, kind: str = "read") -> None:
    """A database call started at `started` (monotonic) succeeded: the stall it outlived is over.

    A read ends a stall of reads; a write ends any. A call started before the
    stall was noted proves nothing about it.
    """
    for stalled_kind in ("read", "write") if kind == "write" else (kind,):
        noted = _stalls.get(stalled_kind)
        if noted is not None and started >= noted:
            _stalls.pop(stalled_kind, None)


def stalled(kinds: tuple[str, ...] = ("read", "write")) -> bool:
    """Whether a database call of `kinds` ran out of time and none has succeeded since."""
    limit = settings.CHAT_DATABASE_TIMEOUT
    now = time.monotonic()
    noted = [_stalls.get(kind) for kind in kinds]
    return bool(limit) and any(t is not None and now - t < 2 * limit for t in noted)


def handshake_admitted(handshake: object) -> bool:
    """Whether a new socket may read the database now; one at a time while stalled.

    While stalled (or while another handshake tries), the first handshake to
    come is let through to try its reads, and the others are refused: if its
    reads succeed, the stall ends there and the next sockets are let in at
    once, without a wait of two limits. It must call `handshake_done`.
    """
    global _probe
    now = time.monotonic()
    if _probe is not None and now - _probe[1] < 2 * settings.CHAT_DATABASE_TIMEOUT:
        return _probe[0] is handshake
    # A handshake only reads: a stall of writes alone does not hold it back.
    if not stalled(("read",)):
        _probe = None
        return True
    _probe = (handshake, now)
    logger.info("the database is stalled: one new socket tries it")
    return True


def handshake_done(handshake: object, *, started: float, ok: bool) -> None:
    """A handshake's reads ended: if they all succeeded, the stall of reads is over."""
    global _probe
    if _probe is not None and _probe[0] is handshake:
        _probe = None
    if ok:
        note_answered(started)


def forget_stalls() -> None:
    global _probe
    _stalls.clear()
    _probe = None


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
    started = time.monotonic()
    future = asyncio.get_running_loop().run_in_executor(
        _reads, functools.partial(_run_closing_connections, call)
    )
    try:
        # The statement limit ends the query; this bounds the wait if it does not.
        result = await asyncio.wait_for(future, 2 * limit if limit else None)
        note_answered(started)
        return result
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


def note_if_timeout(error: BaseException, kind: str = "read") -> None:
    """`note_stall(kind)` if `error` is a database time limit running out."""
    if isinstance(error, TimeoutError) or (isinstance(error, DatabaseError) and _is_timeout(error)):
        note_stall(kind)
