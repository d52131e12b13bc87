"""A protocol client over Channels' WebsocketCommunicator, for consumer tests.

Goes through the real ASGI application: origin check, session auth, routing.
Every wait has a timeout; events that arrive while waiting for another one
are kept, in order, for the next `expect`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections import deque
from typing import Any

from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client

from chatsite.asgi import application

TIMEOUT = 5.0
_refs = itertools.count(1)


def session_cookie_for(user) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


def socket_headers(cookie: str | None, origin: str | None = "http://localhost") -> list:
    headers = []
    if cookie is not None:
        headers.append((b"cookie", f"sessionid={cookie}".encode()))
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    return headers


class ChatTestClient:
    def __init__(self, communicator: WebsocketCommunicator, username: str) -> None:
        self.communicator = communicator
        self.username = username
        self.inbox: deque[dict[str, Any]] = deque()
        self.hello: dict[str, Any] = {}
        self.closed = False
        self.frames: list[str] = []

    async def send_text(self, text: str) -> None:
        await self.communicator.send_to(text_data=text)

    async def send(self, **command: Any) -> None:
        await self.send_text(json.dumps(command))

    async def _read_frame(self, timeout: float) -> None:
        output = await self.communicator.receive_output(timeout)
        if output["type"] == "websocket.close":
            self.closed = True
            self.inbox.append({"type": "__close__", "code": output.get("code")})
            return
        text = output["text"]
        self.frames.append(text)
        event = json.loads(text)
        if event["type"] == "batch":
            assert event["events"], "a batch frame must not be empty"
            self.inbox.extend(event["events"])
        else:
            self.inbox.append(event)

    async def next_event(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        if not self.inbox:
            await self._read_frame(timeout)
        return self.inbox.popleft()

    async def expect(self, kind: str, timeout: float = TIMEOUT, **fields: Any) -> dict[str, Any]:
        """The first event of `kind` whose fields match; others stay queued."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for event in list(self.inbox):
                if event["type"] == kind and all(event.get(k) == v for k, v in fields.items()):
                    self.inbox.remove(event)
                    return event
            remaining = deadline - loop.time()
            try:
                if remaining <= 0:
                    raise TimeoutError
                await self._read_frame(remaining)
            except TimeoutError:
                raise AssertionError(
                    f"{self.username}: no {kind} {fields} within {timeout}s; got {list(self.inbox)}"
                ) from None

    async def request(self, timeout: float = TIMEOUT, **command: Any) -> dict[str, Any]:
        """Send a command with a fresh ref and return the reply carrying it."""
        ref = f"r{next(_refs)}"
        await self.send(ref=ref, **command)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for event in list(self.inbox):
                if event.get("ref") == ref:
                    self.inbox.remove(event)
                    return event
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"{self.username}: no reply to {command} within {timeout}s")
            try:
                await self._read_frame(remaining)
            except TimeoutError:
                raise AssertionError(
                    f"{self.username}: no reply to {command}; got {list(self.inbox)}"
                ) from None

    async def expect_close(self, timeout: float = TIMEOUT) -> int | None:
        event = await self.expect("__close__", timeout)
        return event["code"]

    async def assert_nothing(self, kind: str | None = None, timeout: float = 0.3) -> None:
        """No event (of `kind`, if given) arrives within `timeout`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (remaining := deadline - loop.time()) > 0:
            try:
                await self._read_frame(remaining)
            except TimeoutError:
                break
        unexpected = [e for e in self.inbox if kind is None or e["type"] == kind]
        assert not unexpected, f"{self.username} got unexpected {unexpected}"

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            await self.communicator.disconnect()


async def open_socket(
    user, *, origin: str | None = "http://localhost", path: str = "/ws/chat/"
) -> ChatTestClient:
    cookie = await sync_to_async(session_cookie_for)(user)
    communicator = WebsocketCommunicator(application, path, headers=socket_headers(cookie, origin))
    connected, code = await communicator.connect(timeout=TIMEOUT)
    assert connected, f"handshake refused for {user} ({code})"
    client = ChatTestClient(communicator, user.get_username())
    client.hello = await client.expect("hello")
    return client
