"""chat.upstream against the installed daphne, Twisted, autobahn, channels_redis,
Channels and Django: every reach is still there, and when one is gone the fast
path that needs it turns off, the system check says why, and the plain way is used."""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import types
from collections.abc import Iterator
from typing import Any

import pytest
from autobahn.websocket.protocol import WebSocketProtocol
from channels import auth as channels_auth
from channels_redis.core import RedisChannelLayer
from django.contrib.sessions.backends.db import SessionStore as DatabaseSessionStore
from twisted.internet import abstract
from twisted.web import http

from chat import upstream
from chat.checks import check_fast_paths, report_fast_paths
from chat.delivery.channel import WorkerChannel
from chat.delivery.sockets import written_now
from chat.sockets.json import JsonFormat
from chat.sockets.socket import ChatSocket
from chat.sockets.transport import (
    close_frame,
    close_on_bad_frames,
    daphne_protocol,
    frame_writer,
    guard_inbox,
    share_protocol_options,
    watch_send_buffer,
)
from chat.sockets.writer import Writer
from tests.conftest import REDIS_URL
from tests.servers import running_workers, worker_env

WAIT = 5.0


@pytest.fixture(autouse=True)
def _checked_afresh() -> Iterator[None]:
    """Each test sees the libraries as it left them, and the next as they really are."""
    upstream.check_again()
    yield
    upstream.check_again()


@pytest.mark.parametrize("fast_path", list(upstream.FAST_PATHS))
def test_every_fast_path_is_on_with_the_installed_libraries(fast_path: str) -> None:
    assert upstream.problem(fast_path) is None


def test_the_system_check_says_nothing_when_every_fast_path_is_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert check_fast_paths() == []
    with caplog.at_level(logging.INFO, logger="chat.checks"):
        report_fast_paths()
    [line] = [r.getMessage() for r in caplog.records]
    assert line.startswith("chat.I001: fast paths on:")
    assert all(name in line for name in upstream.FAST_PATHS)


# (the library's object, the attribute a reach needs, the fast path it belongs to)
REACHES = [
    (abstract.FileDescriptor, "dataBuffer", upstream.FRAMES),
    (WebSocketProtocol, "SEND_STATE_GROUND", upstream.FRAMES),
    (WebSocketProtocol, "sendCloseFrame", upstream.CLOSE_CODES),
    (http.HTTPChannel, "_requestProducer", upstream.SEND_BUFFER),
    (RedisChannelLayer, "_group_key", upstream.PIPELINED_JOINS),
    (DatabaseSessionStore, "_get_session_from_db", upstream.SESSIONS_IN_ONE_QUERY),
    (channels_auth, "_get_user_session_key", upstream.USER_IN_ONE_TRIP),
    (asyncio.Queue, "_put", upstream.INBOX_BOUND),
]


@pytest.mark.parametrize(
    ("owner", "name", "fast_path"), REACHES, ids=[name for _, name, _ in REACHES]
)
def test_a_renamed_attribute_turns_its_fast_path_off_and_the_check_says_why(
    owner: Any, name: str, fast_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(owner, name)

    assert name in (upstream.problem(fast_path) or "")
    warnings = [m for m in check_fast_paths() if m.id == "chat.W001"]
    assert [fast_path in m.msg and name in m.msg for m in warnings] == [True]
    assert upstream.FALLBACKS[fast_path] in (warnings[0].hint or "")


def test_the_start_up_report_logs_a_fast_path_that_fell_back_as_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delattr(abstract.FileDescriptor, "dataBuffer")

    with caplog.at_level(logging.INFO, logger="chat.checks"):
        report_fast_paths()

    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "chat.W001" in warning.getMessage() and "dataBuffer" in warning.getMessage()
    assert any(r.levelno == logging.INFO and "chat.I001" in r.getMessage() for r in caplog.records)


class Wire:
    """Stands for daphne's protocol: only whether the fallbacks touch it matters here."""

    transport = object()
    state = WebSocketProtocol.STATE_OPEN
    STATE_OPEN = WebSocketProtocol.STATE_OPEN


def test_with_a_reach_gone_a_socket_gets_the_plain_asgi_behaviour(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delattr(abstract.FileDescriptor, "dataBuffer")
    monkeypatch.delattr(WebSocketProtocol, "sendCloseFrame")
    monkeypatch.delattr(http.HTTPChannel, "_requestProducer")

    assert frame_writer(Wire()) is None
    assert close_frame(Wire(), 1008) is False  # the consumer closes through ASGI
    assert watch_send_buffer(Wire(), 1024) is None


def test_without_autobahns_failbydrop_option_bad_frames_drop_and_the_check_says_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    options = [o for o in WebSocketProtocol.CONFIG_ATTRS_COMMON if o != "failByDrop"]
    monkeypatch.setattr(WebSocketProtocol, "CONFIG_ATTRS_COMMON", options)
    protocol = types.SimpleNamespace(failByDrop=True)

    assert "failByDrop" in (upstream.problem(upstream.BAD_FRAME_CLOSES) or "")
    assert close_on_bad_frames(protocol) is False
    assert protocol.failByDrop is True
    [warning] = [m for m in check_fast_paths() if m.id == "chat.W001"]
    assert upstream.FALLBACKS[upstream.BAD_FRAME_CLOSES] in (warning.hint or "")


def test_sockets_after_the_first_read_autobahns_options_from_their_class() -> None:
    """Idle-socket memory: autobahn copies its 29 options onto each connection unless
    the protocol class holds them; the factory's values are what every one reads."""
    from autobahn.twisted.websocket import WebSocketServerFactory
    from daphne.ws_protocol import WebSocketFactory

    factory = WebSocketFactory(object, server="Daphne")
    factory.setProtocolOptions(autoPingInterval=17, openHandshakeTimeout=9, failByDrop=True)
    first = factory.buildProtocol(None)
    first.client_addr, first.path = None, b"/ws/chat/"  # daphne's repr, in autobahn's debug line
    WebSocketProtocol._connectionMade(first)  # where autobahn copies the options
    assert "autoPingInterval" in vars(first)  # autobahn's own way: a copy on the connection

    assert share_protocol_options(first) is True
    second = factory.buildProtocol(None)
    second.client_addr, second.path = None, b"/ws/chat/"
    WebSocketProtocol._connectionMade(second)

    options = [*WebSocketProtocol.CONFIG_ATTRS_COMMON, *WebSocketProtocol.CONFIG_ATTRS_SERVER]
    assert not set(options) & set(vars(second))
    assert (second.autoPingInterval, second.openHandshakeTimeout) == (17, 9)
    for name in options:
        assert getattr(second, name) == getattr(factory, name), name
    assert isinstance(second, type(first)) and isinstance(factory, WebSocketServerFactory)
    close_on_bad_frames(second)  # a per-socket option still applies to that socket alone
    assert second.failByDrop is False and factory.buildProtocol(None).failByDrop is True


def test_if_autobahn_copies_its_options_anyway_the_check_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def copies_always(self: Any) -> None:
        for name in self.CONFIG_ATTRS:
            setattr(self, name, getattr(self.factory, name))

    monkeypatch.setattr(WebSocketProtocol, "_connectionMade", copies_always)

    assert "copies its options" in (upstream.problem(upstream.SHARED_OPTIONS) or "")
    assert share_protocol_options(types.SimpleNamespace()) is False


def test_with_the_inbox_reach_gone_a_socket_is_not_guarded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A daphne whose queue no longer goes through `_put` keeps its queue untouched."""
    queue: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    protocol = types.SimpleNamespace(
        application_queue=queue, transport=types.SimpleNamespace(pauseProducing=lambda: None)
    )
    assert guard_inbox(protocol, 1024) is not None

    monkeypatch.setitem(
        upstream.FAST_PATHS, upstream.INBOX_BOUND, (lambda: "Queue.put_nowait changed",)
    )
    upstream.check_again()
    fresh: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    protocol.application_queue = fresh
    assert guard_inbox(protocol, 1024) is None
    assert fresh._put.__self__ is fresh  # type: ignore[attr-defined]


async def test_with_pipelined_joins_off_layer_groups_are_joined_one_by_one(
    monkeypatch: pytest.MonkeyPatch, redis_prefix: str
) -> None:
    # channels_redis uses `_group_key` itself, so here the check is told it is gone.
    monkeypatch.setitem(
        upstream.FAST_PATHS, upstream.PIPELINED_JOINS, (lambda: "_group_key is gone",)
    )
    layer = RedisChannelLayer(hosts=[REDIS_URL], prefix=f"{redis_prefix}:layer")
    added: list[str] = []
    group_add = layer.group_add

    async def counted_group_add(group: str, channel: str) -> None:
        added.append(group)
        await group_add(group, channel)

    monkeypatch.setattr(layer, "group_add", counted_group_add)
    channel = WorkerChannel(layer)
    await channel.open()
    try:
        await channel.join(["chat.group.1", "chat.group.2"])
        await layer.group_send("chat.group.2", {"type": "chat.marker"})

        message = await asyncio.wait_for(layer.receive(channel.name), WAIT)
        assert message["type"] == "chat.marker"
        assert added == ["chat.group.1", "chat.group.2"]
    finally:
        await layer.flush()


# -- a fast-path write that fails -------------------------------------------------


class BrokenFrameWriter:
    """A `FrameWriter` after an upgrade renamed what it reads."""

    def write(self, frame: bytes) -> None:
        raise AttributeError("'WebSocketServerProtocol' object has no attribute 'send_queue'")


def socket_with_broken_frames(sent: list[dict[str, Any]]) -> ChatSocket:
    consumer = ChatSocket(JsonFormat())

    async def base_send(message: dict[str, Any]) -> None:
        sent.append(message)

    consumer.base_send = base_send
    consumer.username = "alice"
    consumer.connection_id = "alice-1"
    consumer.out = Writer(consumer, None)
    consumer.out.pending = None
    consumer.out._frames = BrokenFrameWriter()  # type: ignore[assignment]
    return consumer


async def test_a_failing_fast_path_write_goes_through_asgi_send_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sent: list[dict[str, Any]] = []
    consumer = socket_with_broken_frames(sent)

    with caplog.at_level(logging.WARNING, logger="chat.sockets.writer"):
        assert written_now(consumer, "first") is False  # not reported as written
        await consumer.write("first")
        await consumer.write("second")

    assert sent == [
        {"type": "websocket.send", "text": "first"},
        {"type": "websocket.send", "text": "second"},
    ]
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "through ASGI" in warning.getMessage()


class RaisingSocket:
    connection_id = "x"

    def write_now(self, text: str) -> bool:
        raise RuntimeError("broken")


def test_a_write_now_that_raises_is_never_taken_as_written(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="chat.delivery.sockets"):
        assert written_now(RaisingSocket(), "text") is False  # type: ignore[arg-type]
    assert any(r.levelno == logging.WARNING for r in caplog.records)


@pytest.mark.processes
@pytest.mark.django_db(transaction=True)
def test_a_daphne_worker_reports_its_fast_paths_when_it_starts(redis_prefix: str) -> None:
    """Daphne runs no system checks: the ASGI module runs this one and logs it."""
    env = worker_env(redis_url=REDIS_URL, redis_prefix=redis_prefix)
    with running_workers(1, env) as [worker]:
        log = worker.log()

    assert "chat.I001: fast paths on:" in log
    assert all(name in log for name in upstream.FAST_PATHS)
    assert "chat.W001" not in log


def test_a_handshake_does_not_read_daphnes_source_again(monkeypatch) -> None:
    """The check on daphne's `send` runs once per process, not once per socket."""
    reads = 0
    real_getsource = inspect.getsource

    def counting_getsource(obj: object) -> str:
        nonlocal reads
        reads += 1
        return real_getsource(obj)

    monkeypatch.setattr(inspect, "getsource", counting_getsource)
    protocol = types.SimpleNamespace(sendCloseFrame=lambda **kwargs: None)
    send = functools.partial(lambda protocol, message: None, protocol)

    assert [daphne_protocol(send) for _ in range(3)] == [protocol] * 3
    assert reads == 1


def test_lazy_debug_lines_are_off_where_autobahn_highlights_outside_a_log_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A deferred `hlval` is not a str: used in a concatenation it would raise."""
    from autobahn.twisted import websocket as twisted_websocket

    from chat.upstream import autobahn

    assert autobahn.formatting_problem() is None
    real = inspect.getsource

    def source(obj: Any) -> str:
        text = real(obj)
        if obj is twisted_websocket:
            text += '\nreason = "closed: " + hlval(code)\n'
        return text

    monkeypatch.setattr(inspect, "getsource", source)
    problem = autobahn.formatting_problem()
    assert problem == f"{twisted_websocket.__name__} uses hlval outside a log call's arguments"
