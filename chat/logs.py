"""Log lines: one line per event, as text or JSON (CHAT_LOG_FORMAT).

A traceback stays on its event's line (newlines escaped in text, a JSON
string in JSON), so a log shipper never splits one event into several. Lines
carry ids and codes, never a message's body. Every line logged while a
socket's consumer runs carries that socket's connection id (`connection`),
and Django's, daphne's and Twisted's lines go through the same formatter
(chatsite/settings.py, `LOGGING`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import weakref
from datetime import UTC, datetime
from typing import Any

# What a close code means, for the line that logs it (RFC 6455 and docs/protocol.md).
CLOSE_REASONS = {
    1000: "normal closure",
    1001: "going away",
    1005: "no status",
    1006: "dropped without a close frame",
    1007: "invalid frame data",
    1008: "policy violation",
    1009: "message too big",
    1011: "server error",
    1012: "service restart",
    1013: "try again later",
    4429: "too many sockets",
}

# Attributes every LogRecord has; anything else was passed with `extra=`.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


# The connection id of the socket each consumer's task serves.
_SERVING: weakref.WeakKeyDictionary[asyncio.Task[Any], str] = weakref.WeakKeyDictionary()


def serving_connection(connection_id: str) -> None:
    """Tag the lines the running task logs from now on with `connection_id`.

    Keyed by task rather than held in a contextvar: tasks copy their
    creator's context, so the hub's and the coalescers' tasks, started by
    whichever socket came first, would carry that socket's id for good.
    """
    task = asyncio.current_task()
    if task is not None:
        _SERVING[task] = connection_id


def _serving() -> str | None:
    try:
        task = asyncio.current_task()
    except RuntimeError:  # a thread without an event loop (the database's)
        return None
    return _SERVING.get(task) if task is not None else None


class ConnectionFilter(logging.Filter):
    """Adds `connection` to a line logged by a socket's consumer that did not pass one."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "connection", None) is None:
            connection = _serving()
            if connection is not None:
                record.connection = connection
        return True


def close_reason(code: int | None, reason: str = "") -> str:
    """The reason given with a close, or what its code means."""
    return reason or CLOSE_REASONS.get(code or 0, "unknown")


class OneLineFormatter(logging.Formatter):
    """Django's usual text line, with any traceback kept on the same line."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        connection = getattr(record, "connection", None)
        if connection and connection not in line:
            line += f" [connection {connection}]"
        return line.replace("\n", "\\n")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, extras, traceback."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def every_line_through_logging() -> None:
    """With CHAT_LOG_FORMAT=json nothing but JSON lines may reach stdout or stderr:
    daphne's access log goes through logging too (warnings do from the settings on)."""
    from chat import upstream
    from chat.upstream import daphne

    if upstream.is_on(upstream.ACCESS_LOG):
        daphne.log_access_to(logging.getLogger("daphne.access"))
