"""Frames written under daphne's ASGI layer: valid RFC 6455, and in order.

End to end (a real daphne writing these frames to real clients) is covered by
test_workers.py and the page tests; here the frame bytes and the cases where
the writer must hand a frame back to autobahn.
"""

from __future__ import annotations

import inspect
import pprint
import socket
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any
from unittest import mock

import pytest
from twisted.internet import tcp
from twisted.logger import formatEvent
from twisted.web import http
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from chat.sockets.transport import (
    FrameWriter,
    SendBuffer,
    close_on_bad_frames,
    defer_autobahn_debug_formatting,
    text_frame,
)
from chat.upstream.daphne import InboxGuard


def parse(data: bytes) -> tuple[Frame, bytes]:
    """One frame as a client parses it, and the bytes left after it."""
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    parser = Frame.parse(reader.read_exact, mask=False)
    try:
        next(parser)
    except StopIteration as done:
        return done.value, reader.buffer
    raise AssertionError("the frame is incomplete")


@pytest.mark.parametrize(
    "text",
    ["", "x" * 125, "x" * 126, "é" * 63, "y" * 65535, "z" * 65536, "€" * 30_000, '{"a":1}'],
    ids=["empty", "125", "126", "126-bytes", "65535", "65536", "multibyte", "json"],
)
def test_text_frame_is_one_unmasked_final_text_frame(text: str) -> None:
    frame, rest = parse(text_frame(text))
    assert frame.opcode is Opcode.TEXT
    assert frame.fin
    assert frame.data.decode("utf-8") == text
    assert rest == b""


def test_text_frame_is_reused_only_for_the_same_text() -> None:
    first = "hello " + str(1)
    same_value = "hello " + str(1)
    other = "hello " + str(2)
    assert text_frame(first) is text_frame(first)
    assert parse(text_frame(same_value))[0].data == b"hello 1"
    assert parse(text_frame(other))[0].data == b"hello 2"
    assert parse(text_frame(first))[0].data == b"hello 1"


class FakeAutobahn:
    """The parts of autobahn's WebSocketProtocol that `FrameWriter` reads."""

    STATE_OPEN = 3
    STATE_CLOSING = 4
    SEND_STATE_GROUND = 0

    def __init__(self) -> None:
        self.state = self.STATE_OPEN
        self.send_state = self.SEND_STATE_GROUND
        self.send_queue: list[Any] = []
        self._perMessageCompress: Any = None
        self.written: list[bytes] = []
        self.sent_by_autobahn: list[bytes] = []
        self.transport = SimpleNamespace(write=self.written.append)

    def sendMessage(self, payload: bytes, isBinary: bool = False) -> None:
        assert not isBinary
        self.sent_by_autobahn.append(payload)


def test_frame_writer_writes_the_frame_to_the_transport() -> None:
    wire = FakeAutobahn()
    FrameWriter(wire).write(text_frame("hi"))
    assert [parse(data)[0].data for data in wire.written] == [b"hi"]


@pytest.mark.parametrize(
    "busy",
    [
        lambda wire: wire.send_queue.append((b"ping", True)),
        lambda wire: setattr(wire, "send_state", 2),
        lambda wire: setattr(wire, "_perMessageCompress", object()),
    ],
    ids=["autobahn-queued-bytes", "mid-message", "compressing"],
)
def test_frame_writer_lets_autobahn_frame_when_it_is_busy(busy: Any) -> None:
    wire = FakeAutobahn()
    busy(wire)
    text = "€" * 100  # a 16-bit length header
    FrameWriter(wire).write(text_frame(text))
    assert wire.written == []
    assert wire.sent_by_autobahn == [text.encode("utf-8")]


def test_frame_writer_drops_frames_once_the_socket_is_closing() -> None:
    wire = FakeAutobahn()
    wire.state = wire.STATE_CLOSING
    FrameWriter(wire).write(text_frame("late"))
    assert wire.written == [] and wire.sent_by_autobahn == []


class TcpTransport(tcp.Connection):
    """A Twisted TCP transport over a real socket, with `write` recorded, not buffered."""

    def __init__(self, sock: socket.socket) -> None:  # no reactor needed
        self.socket = sock
        self.connected = 1
        self.disconnecting = False
        self._writeDisconnected = False
        self.dataBuffer = b""
        self.offset = 0
        self._tempDataBuffer: list[bytes] = []
        self.buffered: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.buffered.append(data)


@pytest.fixture
def tcp_wire() -> Iterator[tuple[FakeAutobahn, TcpTransport, socket.socket]]:
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    wire = FakeAutobahn()
    transport = TcpTransport(ours)
    wire.transport = transport
    yield wire, transport, peer
    ours.close()
    peer.close()


def received(peer: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        data += peer.recv(size - len(data))
    return data


def test_frame_writer_sends_at_once_when_nothing_is_buffered(tcp_wire) -> None:
    wire, transport, peer = tcp_wire
    frame = text_frame("straight to the socket")
    FrameWriter(wire).write(frame)
    assert transport.buffered == []
    assert received(peer, len(frame)) == frame


def test_frame_writer_queues_behind_what_twisted_has_buffered(tcp_wire) -> None:
    wire, transport, _peer = tcp_wire
    transport._tempDataBuffer.append(b"earlier")
    frame = text_frame("after the earlier bytes")
    FrameWriter(wire).write(frame)
    assert transport.buffered == [frame]


def test_frame_writer_hands_twisted_what_the_kernel_did_not_take(tcp_wire) -> None:
    wire, transport, _peer = tcp_wire
    frame = text_frame("x" * 4_000_000)  # more than a socket buffer holds
    FrameWriter(wire).write(frame)
    [rest] = transport.buffered
    assert 0 < len(rest) < len(frame)
    assert frame.endswith(rest)


def test_frame_writer_turns_nagle_off_on_tcp_sockets() -> None:
    """A frame must not wait for the client's delayed ACK of the one before."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        ours, _ = server.accept()
        with client, ours:
            wire = FakeAutobahn()
            wire.transport = TcpTransport(ours)
            assert not ours.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            FrameWriter(wire)
            assert ours.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


class ProducerSlot:
    """The producer registration of a Twisted transport."""

    def __init__(self, producer: Any) -> None:
        self.producer = producer
        self.streamingProducer = True

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer, self.streamingProducer = producer, streaming

    def unregisterProducer(self) -> None:
        self.producer = None


class Producer:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def pauseProducing(self) -> None:
        self.calls.append("pause")

    def resumeProducing(self) -> None:
        self.calls.append("resume")

    def stopProducing(self) -> None:
        self.calls.append("stop")


def test_send_buffer_passes_calls_on_to_the_producer_it_replaced() -> None:
    previous = Producer()
    transport = ProducerSlot(previous)
    buffer = SendBuffer(transport, limit=10)
    assert transport.producer is buffer
    buffer.pauseProducing()
    assert not buffer.admit(11)
    buffer.resumeProducing()
    buffer.stopProducing()
    assert previous.calls == ["pause", "resume", "stop"]


def test_send_buffer_lets_go_of_an_upgraded_http_channel() -> None:
    """Mid-request with no request producer, its calls change nothing: not kept alive."""
    channel = http.HTTPChannel()
    channel._handlingRequest = True
    transport = ProducerSlot(channel)
    buffer = SendBuffer(transport, limit=10)
    assert transport.producer is buffer
    assert buffer._previous is None
    buffer.pauseProducing()
    buffer.resumeProducing()
    buffer.stopProducing()


# -- autobahn's debug formatting ------------------------------------------------


def test_autobahn_formats_its_debug_arguments_only_when_a_line_is_written() -> None:
    from autobahn.websocket import protocol

    import chatsite.asgi  # noqa: F401  (applies it, as daphne's import of the app does)

    assert defer_autobahn_debug_formatting() is True
    # The spot this is for: the options logged on every new connection.
    assert "attrs=pformat(configAttrLog)" in inspect.getsource(
        protocol.WebSocketProtocol._connectionMade
    )
    options = [("openHandshakeTimeout", 5, "Factory"), ("autoPingInterval", 0, "Factory")]
    with mock.patch.object(pprint, "pformat", wraps=pprint.pformat) as formatted:
        argument = protocol.pformat(options)
        assert formatted.call_count == 0
        assert f"\n{argument}" == "\n" + pprint.pformat(options)
        # As Twisted's logger writes the line when debug logging is on.
        line = formatEvent({"log_format": "\n{attrs}", "attrs": argument})
        assert line == "\n" + pprint.pformat(options)
        assert str(argument) == pprint.pformat(options)
    timings = protocol.Timings()
    timings.track("onOpen")
    assert type(str(timings)) is str
    assert str(timings) == pprint.pformat(timings._timings)


def test_autobahn_highlights_its_debug_arguments_only_when_a_line_is_written() -> None:
    from autobahn import util
    from autobahn.twisted import websocket as twisted_websocket
    from autobahn.websocket import protocol

    import chatsite.asgi  # noqa: F401  (applies it, as daphne's import of the app does)

    assert defer_autobahn_debug_formatting() is True
    # The spots this is for: a debug line per frame received and per write.
    assert "func=hltype(self.dataReceived)" in inspect.getsource(
        twisted_websocket.WebSocketAdapterProtocol.dataReceived
    )
    assert "func=hltype(self.sendData)" in inspect.getsource(protocol.WebSocketProtocol.sendData)
    for module in (protocol, twisted_websocket):
        with (
            mock.patch.object(util, "hl", wraps=util.hl) as highlighted,
            mock.patch.object(util, "_qn", wraps=util._qn) as named,
        ):
            function = module.hltype(protocol.WebSocketProtocol.sendData)
            value = module.hlval(42)
            assert highlighted.call_count == 0 and named.call_count == 0
            # As Twisted's logger writes the line when debug logging is on.
            line = formatEvent(
                {"log_format": "{func} sent {n} bytes", "func": function, "n": value}
            )
            expected = (
                f"{util.hltype(protocol.WebSocketProtocol.sendData)} sent {util.hlval(42)} bytes"
            )
            assert line == expected
            assert highlighted.call_count > 0


class ReadingTransport:
    def __init__(self) -> None:
        self.reading = True
        self.pauses = 0

    def pauseProducing(self) -> None:
        self.reading = False
        self.pauses += 1

    def resumeProducing(self) -> None:
        self.reading = True


async def test_inbox_guard_stops_reading_past_its_limit_and_reads_on_once_drained() -> None:
    import asyncio

    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    transport = ReadingTransport()
    InboxGuard(queue, transport, limit=10_000)
    frame = {"type": "websocket.receive", "text": "x" * 3000}

    for _ in range(3):
        queue.put_nowait(frame)
    assert transport.reading
    queue.put_nowait(frame)  # past 10,000 bytes waiting
    assert not transport.reading

    await queue.get()
    assert not transport.reading  # still above half the limit
    await queue.get()
    await queue.get()
    assert transport.reading
    assert transport.pauses == 1
    assert (await queue.get())["text"] == frame["text"]  # nothing dropped


def test_autobahn_is_told_to_close_with_a_code_instead_of_dropping() -> None:
    protocol = SimpleNamespace(failByDrop=True)

    assert close_on_bad_frames(protocol) is True
    assert protocol.failByDrop is False
    assert close_on_bad_frames(None) is False


def test_send_buffer_counts_the_frame_that_takes_it_over_the_mark() -> None:
    """A reply written under the mark is counted too: it is what may sit unread."""
    buffer = SendBuffer(ProducerSlot(None), limit=100)

    assert buffer.admit(150) is True  # under the mark: written
    buffer.pauseProducing()  # and it took the transport over its mark
    assert buffer.admit(1) is False  # 151 bytes waiting
    buffer.resumeProducing()
    assert buffer.admit(60) is True
    buffer.pauseProducing()  # that frame took the transport over its mark
    assert buffer.admit(30) is True
    assert buffer.admit(20) is False  # 60 + 30 + 20 bytes waiting
    buffer.resumeProducing()
    assert buffer.admit(90) is True
