"""A minimal, fast RFC 6455 client on asyncio protocols (no per-frame coroutines).

The load generator simulates thousands of sockets in one process and must cost
far less CPU than the server it measures, so frames are parsed in
`data_received` straight from the transport's buffer and handed to a plain
callback. Only what a chat client needs: text frames, ping/pong, close,
continuation frames; server frames are unmasked, client frames are masked.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import struct
import time
from collections.abc import Callable
from typing import Any

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10


class HandshakeError(Exception):
    def __init__(self, status: int, head: str) -> None:
        super().__init__(f"handshake refused: HTTP {status}")
        self.status = status
        self.head = head


def _mask(payload: bytes, key: bytes) -> bytes:
    n = len(payload)
    if n == 0:
        return payload
    repeated = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(repeated, "little")).to_bytes(
        n, "little"
    )


def encode_frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame."""
    key = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    return head + key + _mask(payload, key)


class WSClient(asyncio.Protocol):
    """One socket. `on_text(client, payload_bytes, now_ns)` is called per text message."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        path: str,
        origin: str,
        cookie: str | None,
        on_text: Callable[[WSClient, bytes, int], None],
        data: dict | None = None,
    ) -> None:
        self.host, self.port, self.path = host, port, path
        self.origin, self.cookie = origin, cookie
        self.on_text = on_text
        self.transport: asyncio.Transport | None = None
        self.key = base64.b64encode(os.urandom(16)).decode()
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self.close_code: int | None = None
        self._handshaken = False
        self._buf = bytearray()
        self._fragments: list[bytes] = []
        self.frames_in = 0
        self.bytes_in = 0
        # Free slots for the load generator.
        self.index = 0
        self.user = ""
        self.data: dict = data if data is not None else {}

    # -- asyncio.Protocol --------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        lines = [
            f"GET {self.path} HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {self.key}",
            "Sec-WebSocket-Version: 13",
            f"Origin: {self.origin}",
        ]
        if self.cookie:
            lines.append(f"Cookie: {self.cookie}")
        transport.write(("\r\n".join(lines) + "\r\n\r\n").encode())

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        self.bytes_in += len(data)
        if not self._handshaken:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).decode("latin-1")
            del buf[: end + 4]
            status_line = head.split("\r\n", 1)[0]
            parts = status_line.split(" ")
            status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
            expected = base64.b64encode(hashlib.sha1(self.key.encode() + _GUID).digest()).decode()
            if status != 101 or expected not in head:
                if not self.opened.done():
                    self.opened.set_exception(HandshakeError(status, head))
                assert self.transport is not None
                self.transport.close()
                return
            self._handshaken = True
            if not self.opened.done():
                self.opened.set_result(None)
        now = time.perf_counter_ns()
        pos = 0
        size = len(buf)
        while size - pos >= 2:
            b0 = buf[pos]
            length = buf[pos + 1] & 0x7F
            start = pos + 2
            if length == 126:
                if size - pos < 4:
                    break
                length = (buf[pos + 2] << 8) | buf[pos + 3]
                start = pos + 4
            elif length == 127:
                if size - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                start = pos + 10
            end = start + length
            if end > size:
                break
            payload = bytes(buf[start:end])
            pos = end
            opcode = b0 & 0x0F
            fin = b0 & 0x80
            if opcode in (OP_TEXT, OP_BINARY):
                if fin:
                    self.frames_in += 1
                    self.on_text(self, payload, now)
                else:
                    self._fragments = [payload]
            elif opcode == OP_CONT:
                self._fragments.append(payload)
                if fin:
                    whole = b"".join(self._fragments)
                    self._fragments = []
                    self.frames_in += 1
                    self.on_text(self, whole, now)
            elif opcode == OP_PING:
                self._write(encode_frame(OP_PONG, payload))
            elif opcode == OP_CLOSE:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                self.close_code = code
                self._write(encode_frame(OP_CLOSE, payload[:2]))
                assert self.transport is not None
                self.transport.close()
                break
        if pos:
            del buf[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc or ConnectionError("closed during handshake"))
        if not self.closed.done():
            self.closed.set_result(self.close_code if self.close_code is not None else 1006)

    # -- sending -----------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def send_text(self, text: bytes | str) -> None:
        if isinstance(text, str):
            text = text.encode()
        self._write(encode_frame(OP_TEXT, text))

    @property
    def is_open(self) -> bool:
        return self._handshaken and not self.closed.done()

    async def close(self, code: int = 1000, wait_s: float = 2.0) -> None:
        if self.transport is None or self.closed.done():
            return
        self._write(encode_frame(OP_CLOSE, code.to_bytes(2, "big")))
        try:
            await asyncio.wait_for(asyncio.shield(self.closed), wait_s)
        except TimeoutError:
            self.transport.abort()


class SocketIOClient(WSClient):
    """A socket.io client (Engine.IO 4, Socket.IO 5) over the same RFC 6455 client.

    Only what the socket.io peer needs: the Engine.IO open packet is answered
    with a Socket.IO connect (`40`), pings (`2`) with pongs (`3`), and every
    frame of our protocol travels as the one argument of the event "m"
    (`42["m",{...}]`): `on_text` gets the inner JSON, a slice of the payload,
    so parsing costs what it costs for the other servers.
    """

    PATH = "/socket.io/?EIO=4&transport=websocket"
    _EVENT = b'42["m",'

    def __init__(self, **kwargs: Any) -> None:
        self._on_frame = kwargs["on_text"]
        kwargs["on_text"] = self._on_engine_packet
        super().__init__(**kwargs)

    def _on_engine_packet(self, client: WSClient, payload: bytes, now: int) -> None:
        if payload.startswith(self._EVENT):
            self._on_frame(client, payload[len(self._EVENT) : -1], now)
        elif payload == b"2":
            super().send_text(b"3")
        elif payload.startswith(b"0{"):
            super().send_text(b"40")
        elif payload.startswith((b"44", b"41", b"1")) and self.transport is not None:
            # Connect refused, namespace closed or Engine.IO close: as a close.
            self.transport.close()

    def send_text(self, text: bytes | str) -> None:
        if isinstance(text, str):
            text = text.encode()
        super().send_text(self._EVENT + text + b"]")


async def connect(
    host: str,
    port: int,
    path: str,
    *,
    origin: str,
    cookie: str | None,
    on_text: Callable[[WSClient, bytes, int], None],
    data: dict | None = None,
    wait_s: float = 30.0,
    factory: type[WSClient] = WSClient,
) -> WSClient:
    loop = asyncio.get_running_loop()
    _, client = await asyncio.wait_for(
        loop.create_connection(
            lambda: factory(
                host=host,
                port=port,
                path=path,
                origin=origin,
                cookie=cookie,
                on_text=on_text,
                data=data,
            ),
            host,
            port,
        ),
        wait_s,
    )
    try:
        await asyncio.wait_for(asyncio.shield(client.opened), wait_s)
    except BaseException:
        if client.transport is not None:
            client.transport.abort()
        raise
    return client
