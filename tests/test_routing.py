"""chat.sockets.routing: each path reaches the consumer Channels' URLRouter would pick.

Every path is routed by ours and by a URLRouter built from the same routes;
an unknown path fails the same way through the real application, and under
a real daphne its handshake is still answered 500.
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import os
from collections.abc import Callable
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.urls import path as url_path

from chat.sockets.classic import ClassicFormat
from chat.sockets.json import JsonFormat
from chat.sockets.routing import ENDPOINTS, websocket_router
from chat.sockets.socket import ChatSocket
from chat.sockets.wire import WireFormat
from tests.chatclient import TIMEOUT, session_cookie_for, socket_headers
from tests.conftest import REDIS_URL
from tests.servers import HttpSession, running_workers, worker_env

PATHS = [
    "/ws/chat/",
    "/socket",
    "ws/chat/",
    "//ws/chat/",
    "/ws/chat",
    "/ws/chat//",
    "/ws/chat/x",
    "/ws/chat/socket",
    "/socket/",
    "/Socket",
    "/socket\n",
    "/",
    "",
    "/chat/socket",
    "/chat/ws/chat/",
]


def urlrouter_pick(scope: dict[str, Any]) -> str:
    """The wire format URLRouter picks from ENDPOINTS' routes, or its error."""
    picked: list[str] = []

    def app(consumer: Callable[[], WireFormat]) -> Any:
        async def run(scope: Any, receive: Any, send: Any) -> None:
            picked.append(consumer.__name__)

        return run

    router = URLRouter([url_path(route, app(consumer)) for route, consumer in ENDPOINTS.items()])
    try:
        asyncio.run(router(scope, None, None))
    except ValueError as error:
        return str(error)
    return picked[0]


def our_pick(scope: dict[str, Any]) -> str:
    """The wire format of the socket `websocket_router` starts, or its error (nothing is run)."""
    try:
        coroutine = websocket_router(scope, None, None)
    except ValueError as error:
        return str(error)
    try:
        socket = coroutine.cr_frame.f_locals["self"]
        assert type(socket) is ChatSocket
        return type(socket.wire).__name__
    finally:
        coroutine.close()


@pytest.mark.parametrize("root_path", ["", "/chat"])
@pytest.mark.parametrize("path", PATHS)
def test_each_path_reaches_what_urlrouter_would_pick(path: str, root_path: str) -> None:
    scope = {"type": "websocket", "path": path, "root_path": root_path, "headers": []}

    assert our_pick(dict(scope)) == urlrouter_pick(dict(scope))


def test_the_endpoints_are_the_two_wire_formats() -> None:
    scope = {"type": "websocket", "path": "/ws/chat/", "headers": []}

    assert our_pick(scope) == JsonFormat.__name__
    assert our_pick(dict(scope, path="/socket")) == ClassicFormat.__name__


def test_the_consumer_runs_with_the_callers_scope_and_no_frame_in_between() -> None:
    scope = {"type": "websocket", "path": "/ws/chat/", "headers": []}

    coroutine = websocket_router(scope, "receive", "send")
    try:
        # What the middleware awaits is the consumer's own loop: no router
        # frame and no scope copy stay alive with the socket.
        assert not inspect.iscoroutinefunction(websocket_router)
        assert coroutine.cr_code is ChatSocket.__call__.__code__
        assert coroutine.cr_frame.f_locals["scope"] is scope
    finally:
        coroutine.close()


@pytest.mark.django_db(transaction=True)
async def test_an_unknown_path_fails_the_application_as_urlrouter_did(memory_layer, alice):
    from chatsite.asgi import application

    cookie = await sync_to_async(session_cookie_for)(alice)
    communicator = WebsocketCommunicator(application, "/ws/nope/", headers=socket_headers(cookie))

    with pytest.raises(ValueError, match=r"^No route found for path 'ws/nope/'\.$"):
        await communicator.connect(timeout=TIMEOUT)


async def handshake_status(port: int, path: str, cookie: str) -> bytes:
    """The status line a raw websocket handshake for `path` gets."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Origin: http://127.0.0.1:{port}\r\nCookie: sessionid={cookie}\r\n\r\n"
        ).encode()
    )
    try:
        return await asyncio.wait_for(reader.readline(), TIMEOUT)
    finally:
        writer.transport.abort()


@pytest.mark.processes
@pytest.mark.django_db(transaction=True)
async def test_daphne_answers_an_unknown_path_500_and_a_known_one_101(redis_prefix):
    env = worker_env(redis_url=REDIS_URL, redis_prefix=redis_prefix)
    with running_workers(1, env) as [worker]:
        cookie = await asyncio.to_thread(HttpSession(worker.base_url).signup, "alice")

        assert (await handshake_status(worker.port, "/ws/nope/", cookie)).startswith(
            b"HTTP/1.1 500"
        )
        assert (await handshake_status(worker.port, "/ws/chat/", cookie)).startswith(
            b"HTTP/1.1 101"
        )
        assert "No route found for path 'ws/nope/'" in worker.log()
