"""The websocket endpoints and their wire formats, routed without Channels' URLRouter.

URLRouter keeps, for each socket's whole life, its own copy of the scope (with
`path_remaining` and `url_route`) and a suspended coroutine frame, and
`as_asgi()` adds another frame: memory per idle socket (measured in
bench/RESULTS.md). Two fixed paths need none of it: `websocket_router`
looks the path up and returns its socket's coroutine for the layer above
to await, so the socket gets that layer's scope as it is.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from chat.sockets.classic import ClassicFormat
from chat.sockets.json import JsonFormat
from chat.sockets.socket import ChatSocket
from chat.sockets.wire import WireFormat

# Paths as URLRouter matches them: after `root_path`, without leading slashes;
# each with the wire format its sockets speak.
ENDPOINTS: dict[str, Callable[[], WireFormat]] = {
    "ws/chat/": JsonFormat,
    # The plain-text protocol of old clients (docs/protocol.md).
    "socket": ClassicFormat,
}


def websocket_router(scope: Any, receive: Any, send: Any) -> Awaitable[None]:
    """The consumer of the scope's path, run; ValueError for any other path.

    The error is URLRouter's, raised as it raises it, so that an unknown path
    is refused as before: daphne logs it and answers the handshake 500.
    """
    path = scope["path"]
    root_path = scope.get("root_path", "")
    if root_path:
        if not path.startswith(root_path):
            raise ValueError(f"No route found for path {path!r}.")
        path = path[len(root_path) :]
    path = path.lstrip("/")
    wire = ENDPOINTS.get(path)
    if wire is None:
        raise ValueError(f"No route found for path {path!r}.")
    return ChatSocket(wire())(scope, receive, send)
