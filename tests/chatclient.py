"""Protocol clients for tests: one over Channels' WebsocketCommunicator (in
process, through the real ASGI application: origin check, session auth,
routing), one over a real socket to a running server (the `websockets`
library).

Every wait has a timeout; events that arrive while waiting for another one
are kept, in order, for the next `expect`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections import deque
from typing import Any

from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client

TIMEOUT = 5.0
_refs = itertools.count(1)


def session_cookie_for(user) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


def socket_headers(
    cookie: str | None, origin: str | None = "http://localhost", host: str = "localhost"
) -> list:
    headers = [(b"host", host.encode())]
    if cookie is not None:
        headers.append((b"cookie", f"sessionid={cookie}".encode()))
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    return headers


class BaseChatClient:
    """Waiting on events by type and fields, or on replies by `ref`."""

    def __init__(self, username: str) -> None:
        self.username = username
        self.inbox: deque[dict[str, Any]] = deque()
        self.hello: dict[str, Any] = {}
        self.closed = False
        self.close_code: int | None = None
        self.close_reason = ""
        self.frames: list[str] = []

    async def _receive(self, timeout: float) -> str | None:
        """The next text frame, or None once the socket is closed."""
        raise NotImplementedError

    async def send_text(self, text: str) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def send(self, **command: Any) -> None:
        await self.send_text(json.dumps(command))

    async def _read_frame(self, timeout: float) -> None:
        if self.closed:
            raise TimeoutError
        text = await self._receive(timeout)
        if text is None:
            self.closed = True
            self.inbox.append(
                {"type": "__close__", "code": self.close_code, "reason": self.close_reason}
            )
            return
        self.frames.append(text)
        event = json.loads(text)
        if event["type"] == "batch":
            assert event["events"], "a batch frame must not be empty"
            self.inbox.extend(event["events"])
        else:
            self.inbox.append(event)

    async def _wait_for(self, matches, timeout: float, what: str) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for event in list(self.inbox):
                if matches(event):
                    self.inbox.remove(event)
                    return event
            remaining = deadline - loop.time()
            try:
                if remaining <= 0:
                    raise TimeoutError
                await self._read_frame(remaining)
            except TimeoutError:
                raise AssertionError(
                    f"{self.username}: no {what} within {timeout}s; got {list(self.inbox)}"
                ) from None

    async def expect(self, kind: str, timeout: float = TIMEOUT, **fields: Any) -> dict[str, Any]:
        """The first event of `kind` whose fields match; others stay queued."""
        return await self._wait_for(
            lambda e: e["type"] == kind and all(e.get(k) == v for k, v in fields.items()),
            timeout,
            f"{kind} {fields}",
        )

    async def request(self, timeout: float = TIMEOUT, **command: Any) -> dict[str, Any]:
        """Send a command with a fresh ref and return the reply carrying it."""
        ref = f"r{next(_refs)}"
        await self.send(ref=ref, **command)
        return await self._wait_for(lambda e: e.get("ref") == ref, timeout, f"reply to {command}")

    async def answer(self, ref: str, timeout: float = TIMEOUT) -> dict[str, Any]:
        """The reply, ack or error carrying `ref`."""
        return await self._wait_for(lambda e: e.get("ref") == ref, timeout, f"reply {ref!r}")

    async def collect(self, seconds: float) -> list[dict[str, Any]]:
        """Every event that arrives within `seconds` (and any still queued), in order."""
        with contextlib.suppress(AssertionError):
            await self.assert_nothing(timeout=seconds)
        events = list(self.inbox)
        self.inbox.clear()
        return events

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


class ChatTestClient(BaseChatClient):
    """In-process client through Channels' WebsocketCommunicator."""

    def __init__(self, communicator: WebsocketCommunicator, username: str) -> None:
        super().__init__(username)
        self.communicator = communicator

    async def _receive(self, timeout: float) -> str | None:
        # Not communicator.receive_output(): on a timeout it cancels the
        # application, and assert_nothing() times out on purpose.
        app = self.communicator.future
        getting = asyncio.ensure_future(self.communicator.output_queue.get())
        await asyncio.wait({getting, app}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if not getting.done():
            getting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await getting
        if getting.cancelled():
            if not app.done():
                raise TimeoutError
            app.result()  # the application crashed: raise its error here
            self.close_code = None
            return None
        output = getting.result()
        if output["type"] == "websocket.close":
            self.close_code = output.get("code")
            self.close_reason = output.get("reason") or ""
            return None
        return output["text"]

    async def send_text(self, text: str) -> None:
        await self.communicator.send_to(text_data=text)

    async def send_bytes(self, data: bytes) -> None:
        await self.communicator.send_to(bytes_data=data)

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            await self.communicator.disconnect()


class WsClient(BaseChatClient):
    """A real socket to a running server, with the `websockets` library."""

    def __init__(self, websocket: Any, username: str) -> None:
        super().__init__(username)
        self.websocket = websocket

    async def _receive(self, timeout: float) -> str | None:
        import websockets

        try:
            frame = await asyncio.wait_for(self.websocket.recv(), timeout)
        except websockets.ConnectionClosed as closed:
            self.close_code = closed.rcvd.code if closed.rcvd else None
            self.close_reason = closed.rcvd.reason if closed.rcvd else ""
            return None
        return frame if isinstance(frame, str) else frame.decode()

    async def send_text(self, text: str) -> None:
        await self.websocket.send(text)

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            await self.websocket.close()


async def open_socket(
    user, *, origin: str | None = "http://localhost", path: str = "/ws/chat/"
) -> ChatTestClient:
    """A logged-in in-process socket whose `hello` has been received."""
    from chatsite.asgi import application

    cookie = await sync_to_async(session_cookie_for)(user)
    communicator = WebsocketCommunicator(application, path, headers=socket_headers(cookie, origin))
    connected, code = await communicator.connect(timeout=TIMEOUT)
    assert connected, f"handshake refused for {user} ({code})"
    client = ChatTestClient(communicator, user.get_username())
    client.hello = await client.expect("hello")
    return client


async def open_real_socket(
    base_url: str,
    session_cookie: str,
    username: str,
    *,
    path: str = "/ws/chat/",
    headers: dict[str, str] | None = None,
) -> WsClient:
    """A socket to a running server (`base_url` is http://host:port), after `hello`."""
    import websockets

    ws_url = base_url.replace("http://", "ws://", 1) + path
    websocket = await websockets.connect(
        ws_url,
        origin=base_url,
        additional_headers={"Cookie": f"sessionid={session_cookie}", **(headers or {})},
        open_timeout=TIMEOUT,
        max_size=2**22,
    )
    client = WsClient(websocket, username)
    client.hello = await client.expect("hello")
    return client
