"""The wire format of docs/protocol.md: commands in, events out, error codes.

Every frame from the network passes through `parse_command`, which either
returns a typed command or raises `ChatError` with the protocol's code. Nothing
past this module sees untrusted JSON.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Literal

import orjson

# Error codes, exactly as the protocol names them.
BAD_JSON = "bad_json"
BAD_COMMAND = "bad_command"
BINARY_NOT_SUPPORTED = "binary_not_supported"
TOO_LARGE = "too_large"
EMPTY_BODY = "empty_body"
BAD_GROUP = "bad_group"
NO_SUCH_USER = "no_such_user"
NOT_MEMBER = "not_member"
RATE_LIMITED = "rate_limited"
UNAVAILABLE = "unavailable"
# Protocol 1.2: changing messages.
NO_SUCH_MESSAGE = "no_such_message"
NOT_YOURS = "not_yours"
TOO_LATE = "too_late"
BAD_EMOJI = "bad_emoji"
TOO_MANY_REACTIONS = "too_many_reactions"
ERROR_CODES = frozenset(
    {
        BAD_JSON,
        BAD_COMMAND,
        BINARY_NOT_SUPPORTED,
        TOO_LARGE,
        EMPTY_BODY,
        BAD_GROUP,
        NO_SUCH_USER,
        NOT_MEMBER,
        RATE_LIMITED,
        UNAVAILABLE,
        NO_SUCH_MESSAGE,
        NOT_YOURS,
        TOO_LATE,
        BAD_EMOJI,
        TOO_MANY_REACTIONS,
    }
)

MAX_REF_CHARS = 64
MAX_CID_CHARS = 64
MAX_GROUP_CHARS = 64
HISTORY_DEFAULT_LIMIT = 50
HISTORY_MAX_LIMIT = 100
SYNC_MAX_MESSAGES = 500
CHANGES_MAX_LIMIT = 500
CONVERSATIONS_DEFAULT_LIMIT = 50
CONVERSATIONS_MAX_LIMIT = 100
SEARCH_DEFAULT_LIMIT = 20
SEARCH_MAX_LIMIT = 50
MAX_QUERY_CHARS = 150
# `who` and `members` without `limit` list this many: everyone on all but very
# large servers, so a version 1 client that never pages still gets them all.
NAMES_DEFAULT_LIMIT = 10_000
NAMES_MAX_LIMIT = 10_000
MAX_CURSOR_CHARS = 64
# Ids are 64-bit signed integers in every supported database.
MAX_ID = 2**63 - 1

# Close codes.
CLOSE_POLICY_VIOLATION = 1008
CLOSE_SERVICE_RESTART = 1012

# Group names: letters and digits of any script with their combining marks,
# and these (no space at either end).
_GROUP_PUNCTUATION = frozenset(" _-.")
# Django's own username rule (UnicodeUsernameValidator), so a lookup with any
# other string is answered without touching the database.
USERNAME_RE = re.compile(r"^[\w.@+-]{1,150}\Z")


class ChatError(Exception):
    """A request the server refuses, with the protocol's error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Address:
    """One audience: a user (direct), a group, or everyone."""

    kind: Literal["user", "group", "all"]
    name: str = ""

    def as_json(self) -> dict[str, Any]:
        if self.kind == "all":
            return {"all": True}
        return {self.kind: self.name}


@dataclass(frozen=True, slots=True)
class Command:
    """A validated client command. Fields not used by a type keep their defaults."""

    type: str
    ref: str | None = None
    to: Address | None = None
    body: str = ""
    group: str = ""
    before: int | None = None
    limit: int = HISTORY_DEFAULT_LIMIT
    since: int = 0
    # Protocol 1.1: `read`'s id, `users`/`groups`' prefix, `conversations`' cursor.
    id: int = 0
    q: str = ""
    cursor: str | None = None
    # `who` and `members`: the page after this name (the `next` of a previous reply).
    after: str | None = None
    # `send` (1.1): the client's own id for the message, which makes a repeat harmless.
    cid: str | None = None


def is_valid_group_name(name: str) -> bool:
    return (
        0 < len(name) <= MAX_GROUP_CHARS
        and not name.startswith(" ")
        and not name.endswith(" ")
        and not _is_mark(name[0])
        and all(char.isalnum() or char in _GROUP_PUNCTUATION or _is_mark(char) for char in name)
    )


def _is_mark(char: str) -> bool:
    # Many scripts cannot write their letters without combining marks
    # (Devanagari vowel signs, Thai tone marks) that NFC leaves uncomposed.
    return unicodedata.category(char).startswith("M")


def clean_group_name(value: Any) -> str:
    """A group name from the network, NFC-normalised, or `ChatError`."""
    if not isinstance(value, str):
        raise ChatError(BAD_COMMAND, "group must be a string")
    name = unicodedata.normalize("NFC", value)
    if not is_valid_group_name(name):
        raise ChatError(
            BAD_GROUP,
            "group names are 1 to 64 letters, digits, spaces, '_', '-' or '.', "
            "with no space at either end",
        )
    return name


def clean_body(value: Any, *, max_chars: int) -> str:
    if not isinstance(value, str):
        raise ChatError(BAD_COMMAND, "body must be a string")
    if len(value) > max_chars:
        raise ChatError(TOO_LARGE, f"body is longer than {max_chars} characters")
    if "\x00" in value:
        raise ChatError(BAD_COMMAND, "body may not contain NUL characters")
    if not value.strip():
        raise ChatError(EMPTY_BODY, "body is empty")
    return value


def clean_username(value: Any) -> str:
    if not isinstance(value, str):
        raise ChatError(BAD_COMMAND, "user must be a string")
    if USERNAME_RE.match(value) is None:
        raise ChatError(NO_SUCH_USER, f"there is no user {value[:150]!r}")
    return value


def clean_address(value: Any, field: str) -> Address:
    if not isinstance(value, dict) or len(value) != 1:
        raise ChatError(
            BAD_COMMAND,
            f'{field} must be one of {{"user": name}}, {{"group": name}}, {{"all": true}}',
        )
    ((key, inner),) = value.items()
    if key == "user":
        return Address("user", clean_username(inner))
    if key == "group":
        return Address("group", clean_group_name(inner))
    if key == "all" and inner is True:
        return Address("all")
    raise ChatError(
        BAD_COMMAND, f'{field} must be one of {{"user": name}}, {{"group": name}}, {{"all": true}}'
    )


def _clean_int(value: Any, field: str, *, minimum: int, maximum: int = MAX_ID) -> int:
    # bool is a subclass of int in Python; true is not a number on the wire.
    if not isinstance(value, int) or isinstance(value, bool):
        raise ChatError(BAD_COMMAND, f"{field} must be an integer")
    if not minimum <= value <= maximum:
        raise ChatError(BAD_COMMAND, f"{field} must be between {minimum} and {maximum}")
    return value


def decode_frame(text: str, *, max_bytes: int) -> dict[str, Any]:
    """The JSON object in a text frame, or `ChatError`."""
    # A str from the socket has at most 4 bytes per character: skip encoding
    # when it is clearly within the limit.
    if len(text) * 4 > max_bytes and len(text.encode("utf-8", "surrogatepass")) > max_bytes:
        raise ChatError(TOO_LARGE, f"frame is larger than {max_bytes} bytes")
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ChatError(BAD_JSON, f"frame is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ChatError(BAD_JSON, "frame must be a JSON object")
    return data


def read_ref(data: dict[str, Any]) -> str | None:
    """The command's `ref`, if it is a usable one (it is echoed even on errors)."""
    ref = data.get("ref")
    if isinstance(ref, str) and len(ref) <= MAX_REF_CHARS:
        return ref
    return None


def parse_command(data: dict[str, Any], *, max_body_chars: int) -> Command:
    """Validate a decoded frame into a `Command`; unknown fields are ignored."""
    if "ref" in data and read_ref(data) is None:
        raise ChatError(BAD_COMMAND, f"ref must be a string of at most {MAX_REF_CHARS} characters")
    ref = read_ref(data)
    kind = data.get("type")
    if not isinstance(kind, str):
        raise ChatError(BAD_COMMAND, "type must be a string")
    if kind == "send":
        for field in ("to", "body"):
            if field not in data:
                raise ChatError(BAD_COMMAND, f"send needs {field}")
        to = clean_address(data["to"], "to")
        body = clean_body(data["body"], max_chars=max_body_chars)
        return Command("send", ref, to=to, body=body, cid=_optional_cid(data))
    if kind in ("join", "leave", "members"):
        if "group" not in data:
            raise ChatError(BAD_COMMAND, f"{kind} needs group")
        group = clean_group_name(data["group"])
        if kind == "members":
            after, count = _names_page(data)
            return Command(kind, ref, group=group, after=after, limit=count)
        return Command(kind, ref, group=group)
    if kind == "history":
        if "of" not in data:
            raise ChatError(BAD_COMMAND, "history needs of")
        of = clean_address(data["of"], "of")
        # Optional fields: null is the same as leaving the field out.
        before = data.get("before")
        if before is not None:
            before = _clean_int(before, "before", minimum=1)
        limit = data.get("limit")
        if limit is None:
            limit = HISTORY_DEFAULT_LIMIT
        limit = _clean_int(limit, "limit", minimum=1, maximum=HISTORY_MAX_LIMIT)
        return Command("history", ref, to=of, before=before, limit=limit)
    if kind == "sync":
        if "since" not in data:
            raise ChatError(BAD_COMMAND, "sync needs since")
        return Command("sync", ref, since=_clean_int(data["since"], "since", minimum=0))
    if kind == "who":
        after, count = _names_page(data)
        return Command(kind, ref, after=after, limit=count)
    if kind == "ping":
        return Command(kind, ref)
    if kind == "conversations":
        cursor = data.get("before")
        if cursor is not None and (not isinstance(cursor, str) or len(cursor) > MAX_CURSOR_CHARS):
            raise ChatError(BAD_COMMAND, "before must be the next cursor of a previous reply")
        limit = _optional_limit(data, CONVERSATIONS_DEFAULT_LIMIT, CONVERSATIONS_MAX_LIMIT)
        return Command(kind, ref, cursor=cursor, limit=limit)
    if kind == "read":
        for field in ("of", "id"):
            if field not in data:
                raise ChatError(BAD_COMMAND, f"read needs {field}")
        of = clean_address(data["of"], "of")
        return Command(kind, ref, to=of, id=_clean_int(data["id"], "id", minimum=0))
    if kind == "typing":
        if "to" not in data:
            raise ChatError(BAD_COMMAND, "typing needs to")
        to = clean_address(data["to"], "to")
        if to.kind == "all":
            raise ChatError(BAD_COMMAND, "typing goes to a user or a group, not to everyone")
        return Command(kind, ref, to=to)
    if kind in ("users", "groups"):
        q = data.get("q")
        if q is None:
            q = ""
        if not isinstance(q, str) or len(q) > MAX_QUERY_CHARS or "\x00" in q:
            raise ChatError(
                BAD_COMMAND, f"q must be a string of at most {MAX_QUERY_CHARS} characters"
            )
        limit = _optional_limit(data, SEARCH_DEFAULT_LIMIT, SEARCH_MAX_LIMIT)
        return Command(kind, ref, q=unicodedata.normalize("NFC", q), limit=limit)
    raise ChatError(BAD_COMMAND, f"unknown command type {kind[:40]!r}")


def _optional_cid(data: dict[str, Any]) -> str | None:
    cid = data.get("cid")
    if cid is None:
        return None
    if not isinstance(cid, str) or not 0 < len(cid) <= MAX_CID_CHARS or "\x00" in cid:
        raise ChatError(BAD_COMMAND, f"cid must be a string of 1 to {MAX_CID_CHARS} characters")
    return cid


def _names_page(data: dict[str, Any]) -> tuple[str | None, int]:
    """`after` and `limit` of `who` and `members` (1.1): both optional."""
    after = data.get("after")
    if after is not None and (not isinstance(after, str) or len(after) > MAX_QUERY_CHARS):
        raise ChatError(BAD_COMMAND, "after must be the next of a previous reply")
    return after, _optional_limit(data, NAMES_DEFAULT_LIMIT, NAMES_MAX_LIMIT)


def _optional_limit(data: dict[str, Any], default: int, maximum: int) -> int:
    limit = data.get("limit")
    if limit is None:
        return default
    return _clean_int(limit, "limit", minimum=1, maximum=maximum)


def encode(event: dict[str, Any]) -> str:
    """One event as the text of a frame."""
    return orjson.dumps(event).decode()


def error_event(code: str, message: str, ref: str | None = None) -> dict[str, Any]:
    event: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if ref is not None:
        event["ref"] = ref
    return event
