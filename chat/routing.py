"""The websocket endpoints, routed without Channels' URLRouter.

URLRouter keeps, for each socket's whole life, its own copy of the scope (with
`path_remaining` and `url_route`) and a suspended coroutine frame, and
`as_asgi()` adds another frame: memory per idle socket (measured in
bench/RESULTS.md). Two fixed paths need none of it: `websocket_router`
looks the path up and returns the consumer's coroutine for the layer above
to await, so the consumer gets that layer's scope as it is.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from chat.classic import ClassicConsumer
from chat.consumers import ChatConsumer, ChatSocket

# Paths as URLRouter matches them: after `root_path`, without leading slashes.
ENDPOINTS: dict[str, type[ChatSocket]] = {
    "ws/chat/": ChatConsumer,
    # The plain-text protocol of old clients (docs/protocol.md).
    "socket": ClassicConsumer,
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
    consumer = ENDPOINTS.get(path)
    if consumer is None:
        raise ValueError(f"No route found for path {path!r}.")
    return consumer()(scope, receive, send)
