"""The websocket Origin rule: Django's CSRF rule, scheme, host and port.

Handshakes go through the real ASGI application with a logged-in user's
cookie, so only the Origin decides.
"""

from __future__ import annotations

import asyncio
import socket

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator

from tests.chatclient import TIMEOUT, session_cookie_for, socket_headers


async def handshake(user, *, origin: str | None, host: str = "localhost", scheme="ws"):
    from chatsite.asgi import application

    cookie = await sync_to_async(session_cookie_for)(user)
    communicator = WebsocketCommunicator(
        application, "/ws/chat/", headers=socket_headers(cookie, origin, host)
    )
    communicator.scope["scheme"] = scheme
    connected, _ = await communicator.connect(timeout=TIMEOUT)
    if connected:
        await communicator.disconnect()
    return connected


@pytest.mark.parametrize(
    "origin",
    [
        # Same host name, another service on it: each was accepted before.
        "http://localhost:9999",
        "ws://localhost",
        "https://localhost",
        "file://localhost",
        "null",
        "http://evil.example",
        "http://localhost.evil.example",
        # Malformed: a port that is no number, a broken IPv6 literal.
        "http://localhost:99999999999999999999",
        "http://localhost:abc",
        "http://[::1",
        None,
    ],
)
async def test_an_origin_other_than_the_sites_own_is_refused(layer, alice, origin):
    assert await handshake(alice, origin=origin) is False


async def test_the_sites_own_origin_is_accepted(layer, alice):
    assert await handshake(alice, origin="http://localhost") is True
    assert await handshake(alice, origin="http://localhost:8000", host="localhost:8000") is True


async def test_over_tls_the_site_is_https_and_plain_http_is_refused(layer, alice):
    assert await handshake(alice, origin="https://localhost", scheme="wss") is True
    assert await handshake(alice, origin="http://localhost", scheme="wss") is False


async def test_behind_a_tls_proxy_the_forwarded_scheme_counts(layer, alice, settings):
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    from chatsite.asgi import application

    cookie = await sync_to_async(session_cookie_for)(alice)
    headers = [*socket_headers(cookie, "https://localhost"), (b"x-forwarded-proto", b"https")]
    communicator = WebsocketCommunicator(application, "/ws/chat/", headers=headers)
    connected, _ = await communicator.connect(timeout=TIMEOUT)
    assert connected is True
    await communicator.disconnect()


async def test_a_host_outside_allowed_hosts_is_refused(layer, alice):
    assert await handshake(alice, origin="http://evil.example", host="evil.example") is False


async def test_an_origin_in_csrf_trusted_origins_is_accepted(layer, alice, settings):
    settings.CSRF_TRUSTED_ORIGINS = ["https://chat.example.com", "https://*.example.org"]
    assert await handshake(alice, origin="https://chat.example.com") is True
    assert await handshake(alice, origin="https://a.example.org") is True
    assert await handshake(alice, origin="http://a.example.org") is False


def raw_handshake_status(port: int, origin: str, cookie: str) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(
            (
                "GET /ws/chat/ HTTP/1.1\r\n"
                f"Host: 127.0.0.1:{port}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                f"Origin: {origin}\r\nCookie: sessionid={cookie}\r\n\r\n"
            ).encode()
        )
        return sock.recv(200).decode("latin-1").split("\r\n", 1)[0]


@pytest.mark.processes
async def test_every_refusal_is_http_403_from_daphne(transactional_db, alice):
    from tests.servers import Worker, worker_env

    cookie = await sync_to_async(session_cookie_for)(alice)
    worker = Worker(worker_env(), name="origin").start()
    try:
        port = worker.port
        for origin in ("http://127.0.0.1:9999", "https://127.0.0.1", "http://127.0.0.1:abc"):
            status = await asyncio.to_thread(raw_handshake_status, port, origin, cookie)
            assert status.split(" ")[1] == "403", (origin, status)
        own = await asyncio.to_thread(
            raw_handshake_status, port, f"http://127.0.0.1:{port}", cookie
        )
        assert own.split(" ")[1] == "101", own
    finally:
        worker.stop()
