"""Log lines: one line per event, as text or JSON (CHAT_LOG_FORMAT).

A traceback stays on its event's line (newlines escaped in text, a JSON
string in JSON), so a log shipper never splits one event into several. Lines
carry ids and codes, never a message's body.
"""

from __future__ import annotations

import json
import logging
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


def close_reason(code: int | None, reason: str = "") -> str:
    """The reason given with a close, or what its code means."""
    return reason or CLOSE_REASONS.get(code or 0, "unknown")


class OneLineFormatter(logging.Formatter):
    """Django's usual text line, with any traceback kept on the same line."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).replace("\n", "\\n")


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
