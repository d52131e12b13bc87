"""autobahn: daphne's websocket protocol, written to beneath its `sendMessage`."""

from __future__ import annotations

import inspect
import logging
import pprint
import re
from typing import Any

from autobahn.websocket import protocol as websocket_protocol

from chat.upstream import twisted
from chat.upstream.reaches import missing_assignments, missing_attributes

logger = logging.getLogger(__name__)

_Protocol = websocket_protocol.WebSocketProtocol


def frame_problem() -> str | None:
    """`FrameWriter` writes only while autobahn has nothing of its own under way."""
    return missing_attributes(
        _Protocol, "STATE_OPEN", "SEND_STATE_GROUND", "sendMessage"
    ) or missing_assignments(
        _Protocol._connectionMade, "state", "send_state", "send_queue", "_perMessageCompress"
    )


def close_problem() -> str | None:
    """`close_frame` sends the close frame that `sendClose` refuses for 1008, 1011 and 1012."""
    return missing_attributes(_Protocol, "STATE_OPEN", "sendCloseFrame") or missing_assignments(
        _Protocol._connectionMade, "state"
    )


def bad_frame_problem() -> str | None:
    """`close_on_bad_frames` turns off `failByDrop`, an option autobahn copies to each protocol."""
    options = getattr(_Protocol, "CONFIG_ATTRS_COMMON", ())
    if "failByDrop" not in options:
        return f"{_Protocol.__module__}.{_Protocol.__qualname__} has no failByDrop option"
    return None


def close_on_bad_frames(protocol: Any) -> None:
    """Answer a frame over the size cap with 1009 and invalid UTF-8 with 1007.

    With `failByDrop` on (autobahn's default) both drop the TCP connection,
    and the client sees only 1006. Off, autobahn sends the close frame the
    RFC names and drops the connection only if the client does not answer it
    within its close handshake timeout.
    """
    protocol.failByDrop = False


def formatting_problem() -> str | None:
    """`defer_debug_formatting` swaps `pformat`, `hltype` and `hlval` in the modules that
    build debug arguments with them, and `Timings.__str__`."""
    pformat = getattr(websocket_protocol, "pformat", None)
    if pformat is not pprint.pformat and not getattr(pformat, "deferred", False):
        return f"{websocket_protocol.__name__} no longer formats with pprint.pformat"
    for module in _highlighting_modules():
        for name in _HIGHLIGHTERS:
            if not callable(getattr(module, name, None)):
                return f"{module.__name__} no longer highlights with autobahn.util.{name}"
        try:
            source = inspect.getsource(module)
        except (OSError, TypeError):
            return f"the source of {module.__name__} cannot be read"
        # Only as a keyword argument (`func=hltype(...)`, a log call's): a
        # deferred value anywhere else (`"x" + hlval(...)`) would not be a str.
        for call in _HIGHLIGHTER_CALL.finditer(source):
            if call.group(1) != "=":
                return f"{module.__name__} uses {call.group(2)} outside a log call's arguments"
    return missing_assignments(websocket_protocol.Timings.__init__, "_timings")


# Highlighters of autobahn.util that autobahn calls for debug log arguments
# only, and the modules that call them on every handshake and frame.
_HIGHLIGHTERS = ("hltype", "hlval")
_HIGHLIGHTER_CALL = re.compile(r"(\S)\s*\b(hltype|hlval)\(")


def _highlighting_modules() -> tuple[Any, ...]:
    from autobahn.twisted import websocket as twisted_websocket

    return (websocket_protocol, twisted_websocket)


def options_problem() -> str | None:
    """`share_options` puts the factory's options on a protocol class: autobahn copies
    each option onto a new connection only if its class does not already have it."""
    found = missing_attributes(_Protocol, "CONFIG_ATTRS_COMMON", "CONFIG_ATTRS_SERVER")
    if found is not None:
        return found
    try:
        source = inspect.getsource(_Protocol._connectionMade)
    except (OSError, TypeError):
        return f"the source of {_Protocol.__qualname__}._connectionMade cannot be read"
    if "if not hasattr(self, configAttr)" not in source:
        return f"{_Protocol.__qualname__}._connectionMade copies its options onto every connection"
    return None


def share_options(protocol: Any) -> None:
    """Have the connections its factory builds from now on read the factory's options
    from their class instead of holding a copy each.

    Autobahn copies 29 options from the factory onto every connection (about
    1.7 KB of an idle socket's memory) unless the protocol class has them;
    daphne sets them on the factory once, before it listens. The factory
    gets a subclass of its protocol class holding their values.
    """
    factory = protocol.factory
    built = factory.protocol
    if getattr(built, "_chat_options_shared", False):
        return
    names = [*_Protocol.CONFIG_ATTRS_COMMON, *_Protocol.CONFIG_ATTRS_SERVER]
    # A function as a class attribute would bind to the connection (and be
    # called with it as its first argument): staticmethod keeps it as it is.
    options = {
        name: staticmethod(value) if callable(value) else value
        for name in names
        for value in [getattr(factory, name)]
    }
    factory.protocol = type(
        built.__name__,
        (built,),
        {**options, "_chat_options_shared": True, "__module__": built.__module__},
    )


class FrameWriter:
    """Writes frames built by `chat.sockets.transport.text_frame` to one daphne socket.

    Every frame through ASGI goes through the consumer's `send`, daphne's
    reply dispatch and autobahn's `sendMessage`, which builds the frame in
    Python and formats a debug log line for it. A server-to-client frame is
    not masked, so the same bytes are valid on every socket: this writes them
    straight to the transport.
    """

    # One per socket: slots keep idle sockets small.
    __slots__ = ("_handle", "protocol")

    def __init__(self, protocol: Any) -> None:
        self.protocol = protocol
        self._handle = twisted.direct_socket(protocol.transport)

    def write(self, frame: bytes) -> None:
        protocol = self.protocol
        if protocol.state != protocol.STATE_OPEN:
            return  # closing: what autobahn would refuse to send anyway
        if (
            protocol.send_queue
            or protocol.send_state != protocol.SEND_STATE_GROUND
            or protocol._perMessageCompress is not None
        ):
            # Autobahn has bytes of its own queued, is mid-message, or
            # compresses: let it frame this one so nothing is reordered.
            protocol.sendMessage(_payload(frame), isBinary=False)
            return
        twisted.write_frame(protocol.transport, self._handle, frame)


def _payload(frame: bytes) -> bytes:
    size = frame[1] & 0x7F
    return frame[2 + {126: 2, 127: 8}.get(size, 0) :]


def close_frame(protocol: Any, code: int, reason: str = "") -> None:
    """Start the closing handshake with `code`, whatever autobahn's `sendClose` allows."""
    if protocol.state == protocol.STATE_OPEN:
        protocol.sendCloseFrame(code=code, reasonUtf8=reason.encode() or None, isReply=False)


class _Later:
    """`function(value)`, worked out only when a log line is written."""

    __slots__ = ("function", "value")

    def __init__(self, function: Any, value: Any) -> None:
        self.function = function
        self.value = value

    def __str__(self) -> str:
        return str(self.function(self.value))

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)


def _deferred(function: Any) -> Any:
    """`function`, returning a `_Later` when called with the value alone."""

    def later(value: Any, *args: Any, **kwargs: Any) -> Any:
        if args or kwargs:
            return function(value, *args, **kwargs)
        return _Later(function, value)

    later.deferred = True  # type: ignore[attr-defined]
    return later


def _timings_text(timings: Any) -> str:
    return pprint.pformat(timings._timings)


def defer_debug_formatting() -> None:
    """Have autobahn's websocket protocol format its debug arguments lazily.

    Autobahn pretty-prints its 29 copied options for a debug log line on
    every connection, and highlights names and values (`hltype`, `hlval`)
    for a debug line on every handshake and frame it sends or receives,
    whether debug logging is on or not (the arguments are built before the
    log call is reached). It calls its module's `pformat` only to
    build debug log arguments (with `{}` fields, which `__format__` serves)
    and in `Timings.__str__`, which must return a str and gets its own
    function. The log lines read the same when debug logging is on.
    """
    websocket_protocol.Timings.__str__ = _timings_text  # type: ignore[method-assign]
    # `pformat` as the module imported it from pprint; `hltype` and `hlval`
    # colour their text with click when it is installed.
    deferred = [(websocket_protocol, "pformat")]
    deferred += [(module, name) for module in _highlighting_modules() for name in _HIGHLIGHTERS]
    for module, name in deferred:
        function = getattr(module, name)
        if not getattr(function, "deferred", False):
            setattr(module, name, _deferred(function))
