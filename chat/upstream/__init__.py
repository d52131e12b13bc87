"""Every reach into another library's private parts, one module per library.

Part of the server's speed comes from using what daphne, Twisted, autobahn,
channels_redis, Channels and Django do not promise to keep. Each such reach
lives in the module named after its library and nowhere else, and each
module says, in a `*_problem()` function, whether the installed version still
has what it reaches for. A fast path that needs a reach which is gone is
turned off and the plain, public way is used instead, so an upgrade makes the
server slower, never wrong.

`FAST_PATHS` names each fast path and the reaches it needs; the system check
in `chat.checks` reports at start-up which are on and which fell back and why.
tests/test_upstream.py runs every check against the installed libraries.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from chat.upstream import autobahn, channels, channels_redis, daphne, django, twisted

# Fast paths, each with the checks of the reaches it needs.
FRAMES = "frames written straight to the socket"
CLOSE_CODES = "close codes 1008, 1011 and 1012"
SEND_BUFFER = "bound on a socket's unread bytes"
LAZY_DEBUG_LINES = "autobahn's debug lines formatted only when written"
PIPELINED_JOINS = "layer groups joined and left in batches (Redis scripts)"
SESSIONS_IN_ONE_QUERY = "sessions of sockets opening together read in one query"
USER_IN_ONE_TRIP = "session and user loaded in one database trip"
STOP_ON_SHUTDOWN = "sockets closed and presence dropped when daphne stops"
HANDSHAKE_STATUS = "handshakes refused with 503 while stopping"
ACCESS_LOG = "daphne's access log through logging (JSON lines)"
BAD_FRAME_CLOSES = "bad frames closed with 1009 and 1007, not dropped"
INBOX_BOUND = "bound on a socket's received, unhandled bytes"
SHARED_OPTIONS = "autobahn's options held once per server, not copied onto every socket"

FAST_PATHS: dict[str, tuple[Callable[[], str | None], ...]] = {
    FRAMES: (daphne.send_problem, autobahn.frame_problem, twisted.transport_problem),
    CLOSE_CODES: (daphne.send_problem, autobahn.close_problem),
    SEND_BUFFER: (daphne.send_problem, twisted.producer_problem),
    LAZY_DEBUG_LINES: (autobahn.formatting_problem,),
    PIPELINED_JOINS: (channels_redis.group_key_problem,),
    SESSIONS_IN_ONE_QUERY: (django.session_store_problem,),
    USER_IN_ONE_TRIP: (channels.get_user_problem,),
    STOP_ON_SHUTDOWN: (twisted.reactor_problem,),
    HANDSHAKE_STATUS: (daphne.send_problem, daphne.reject_problem),
    ACCESS_LOG: (daphne.access_log_problem,),
    BAD_FRAME_CLOSES: (daphne.send_problem, autobahn.bad_frame_problem),
    INBOX_BOUND: (daphne.send_problem, daphne.inbox_problem),
    SHARED_OPTIONS: (daphne.send_problem, autobahn.options_problem),
}

# What is used instead when a fast path is off.
FALLBACKS = {
    FRAMES: "every frame goes through ASGI send",
    CLOSE_CODES: "sockets close through ASGI (autobahn may refuse these codes)",
    SEND_BUFFER: "a socket that does not read is not shed",
    LAZY_DEBUG_LINES: "autobahn formats its debug arguments on every connection and frame",
    PIPELINED_JOINS: "layer groups are joined one group_add at a time",
    SESSIONS_IN_ONE_QUERY: "each session is read on its own",
    USER_IN_ONE_TRIP: "sockets cannot load their user; websockets fail",
    STOP_ON_SHUTDOWN: "sockets are dropped, and reaped after CHAT_PRESENCE_TIMEOUT",
    HANDSHAKE_STATUS: "a stopping worker refuses handshakes with 403; nginx will not retry",
    ACCESS_LOG: "daphne writes its access log as text to stdout (run it with --access-log FILE)",
    BAD_FRAME_CLOSES: "a frame over the cap or not UTF-8 drops the connection (clients see 1006)",
    INBOX_BOUND: "a client sending faster than it is served is read on; its frames queue in memory",
    SHARED_OPTIONS: "every socket holds its own copy of autobahn's 29 options (about 1.7 KB)",
}


@functools.cache
def problem(fast_path: str) -> str | None:
    """Why `fast_path` is off with the installed libraries; None if it is on."""
    for check in FAST_PATHS[fast_path]:
        found = check()
        if found is not None:
            return found
    return None


def is_on(fast_path: str) -> bool:
    return problem(fast_path) is None


def check_again() -> None:
    """Forget the checks' answers (tests change the libraries under them)."""
    problem.cache_clear()
    daphne.send_problem.cache_clear()
    daphne.reject_problem.cache_clear()
    django.preloading.cache_clear()
