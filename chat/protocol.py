"""The wire format of docs/protocol.md: commands in, events out, error codes.

Every frame from the network passes through `parse_command`, which either
returns a typed command or raises `ChatError` with the protocol's code. Nothing
past this module sees untrusted JSON.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, get_args

import orjson

from chat.search_query import QueryError, SearchQuery, parse_query

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
TOO_MANY_GROUPS = "too_many_groups"
# Protocol 1.2: private groups and roles.
GROUP_EXISTS = "group_exists"
INVITE_ONLY = "invite_only"
FORBIDDEN = "forbidden"
LAST_OWNER = "last_owner"
# Protocol 1.2: files (issue 28).
NO_SUCH_UPLOAD = "no_such_upload"
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
        TOO_MANY_GROUPS,
        GROUP_EXISTS,
        INVITE_ONLY,
        FORBIDDEN,
        LAST_OWNER,
        NO_SUCH_UPLOAD,
    }
)

MAX_REF_CHARS = 64
MAX_CID_CHARS = 64
# Files one message may carry (1.2), and the longest upload id accepted.
MAX_FILES = 10
MAX_UPLOAD_ID_CHARS = 32
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

# Close codes, all of them (docs/protocol.md, "Closing").
# Logged out, access revoked, or too many errors.
CLOSE_POLICY_VIOLATION = 1008
# The server failed to open the socket.
CLOSE_INTERNAL_ERROR = 1011
# The worker is restarting or lost its channel layer: reconnect, then sync.
CLOSE_SERVICE_RESTART = 1012
# RFC 6455 "Try Again Later": the server shed this connection (a client not
# reading, a stalled database); reconnect.
CLOSE_TRY_AGAIN_LATER = 1013
# More sockets open than the caps allow (`chat.sockets.socket_caps`), or
# opened faster than the user's command budget allows: an application code,
# so that a client can tell it from a refused session. The close's reason
# says which, since a budget refills within seconds and a cap does not.
CLOSE_TOO_MANY_SOCKETS = 4429
TOO_MANY_SOCKETS = "too_many_sockets"

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


def clean_body(value: Any, *, max_chars: int, may_be_empty: bool = False) -> str:
    """A valid body; `may_be_empty` for a message that carries files (1.2)."""
    if not isinstance(value, str):
        raise ChatError(BAD_COMMAND, "body must be a string")
    if len(value) > max_chars:
        raise ChatError(TOO_LARGE, f"body is longer than {max_chars} characters")
    if "\x00" in value:
        raise ChatError(BAD_COMMAND, "body may not contain NUL characters")
    if not value.strip() and not may_be_empty:
        raise ChatError(EMPTY_BODY, "body is empty")
    return value


def clean_files(value: Any) -> tuple[str, ...]:
    """`send.files` (1.2): 1 to MAX_FILES distinct upload ids; whose they are is checked later."""
    if (
        not isinstance(value, list)
        or not 0 < len(value) <= MAX_FILES
        or not all(isinstance(v, str) and 0 < len(v) <= MAX_UPLOAD_ID_CHARS for v in value)
    ):
        raise ChatError(
            BAD_COMMAND, f"files must be a list of 1 to {MAX_FILES} upload ids (strings)"
        )
    if len(set(value)) != len(value):
        raise ChatError(BAD_COMMAND, "files lists an upload more than once")
    return tuple(value)


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


# -- client commands: one class each, with only its fields ---------------------
#
# A command class names its `type` and parses itself from a decoded frame
# (`parse`, which raises `ChatError`); `Command` is their union. The table
# that maps a type to its action is `chat.actions.COMMANDS`.


@dataclass(frozen=True, slots=True, kw_only=True)
class Send:
    type: ClassVar[str] = "send"
    to: Address
    body: str
    # Protocol 1.1: the client's own id for the message, which makes a repeat harmless.
    cid: str | None = None
    ref: str | None = None

    # Protocol 1.2: the id of the message of the same conversation it answers.
    reply_to: int | None = None
    # Protocol 1.2: the uploads the message carries (`POST /uploads/`); with
    # any, the body may be empty.
    files: tuple[str, ...] = ()

    @classmethod
    def parse(cls, data: dict[str, Any], ref: str | None, *, max_body_chars: int) -> Send:
        _require(data, "send", "to", "body")
        to = clean_address(data["to"], "to")
        files = () if data.get("files") is None else clean_files(data["files"])
        body = clean_body(data["body"], max_chars=max_body_chars, may_be_empty=bool(files))
        reply_to = data.get("reply_to")
        if reply_to is not None:
            reply_to = _clean_int(reply_to, "reply_to", minimum=1)
        return cls(
            to=to, body=body, cid=_optional_cid(data), ref=ref, reply_to=reply_to, files=files
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Join:
    type: ClassVar[str] = "join"
    group: str
    ref: str | None = None

    @classmethod
    def parse(cls, data: dict[str, Any], ref: str | None, *, max_body_chars: int) -> Join:
        return cls(group=_group_of(data, cls.type), ref=ref)


@dataclass(frozen=True, slots=True, kw_only=True)
class Leave:
    type: ClassVar[str] = "leave"
    group: str
    ref: str | None = None

    @classmethod
    def parse(cls, data: dict[str, Any], ref: str | None, *, max_body_chars: int) -> Leave:
        return cls(group=_group_of(data, cls.type), ref=ref)


@dataclass(frozen=True, slots=True, kw_only=True)
class Members:
    type: ClassVar[str] = "members"
    group: str
    # 1.1: the page after this name (the `next` of a previous reply).
    after: str | None = None
    limit: int = NAMES_DEFAULT_LIMIT
    ref: str | None = None

    @classmethod
    def parse(cls, data: dict[str, Any], ref: str | None, *, max_body_chars: int) -> Members:
        group = _group_of(data, cls.type)
        after, limit = _names_page(data)
        return cls(group=group, after=after, limit=limit, ref=ref)


@dataclass(frozen=True, slots=True, kw_only=True)
class History:
    type: ClassVar[str] = "history"
    of: Address
    before: int | None = None
    limit: int = HISTORY_DEFAULT_LIMIT
    ref: str | None = None
    # Protocol 1.2: the messages around this id instead (a search result, a reply's original).
    around: int | None = None

    @classmethod
    def parse(cls, data: dict[str, Any], ref: str | None, *, max_body_chars: int) -> History:
        _require(data, cls.type, "of")
        of = clean_address(data["of"], "of")
        # Optional fields: null is the same as leaving the field out.
        before = data.get("before")
        if before is not None:
            before = _clean_int(before, "before", minimum=1)
        around = data.get("around")
        if around is not None:
            around = _clean_int(around, "around", minimum=1)
            if before is not None:
                raise ChatError(BAD_COMMAND, "history takes before or around, not both")
        limit = _optional_limit(data, HISTORY_DEFAULT_LIMIT, HISTORY_MAX_LIMIT)
        return cls(of=of, before=before, limit=limit, ref=ref, around=around)


@dataclass(frozen=True, slots=True, kw_only=True)
class Sync:
    type: ClassVar[str] = "sync"
    since: int
    ref: str | None = None

    @classmethod
    def parse(cls, data: dict[str, Any], ref: str | None, *, max_body_chars: int) -> Sync:
        _require(data, cls.type, "since")
        return cls(since=_clean_int(data["since"], "since", minimum=0), ref=ref)


@dataclass(frozen=True, slots=True, kw_only=True)
class Who:
    type: ClassVar[str] = "who"
    after: str | None = None
    limit: int = NAMES_DEFAULT_LIMIT
    ref: str | None = None

    @classmethod
    def parse(cls, data: dict[str, Any], ref: str | None, *, max_body_chars: int) -> Who:
        after, limit = _names_page(data)
        return cls(after=after, limit=limit, ref=ref)


@dataclass(frozen=True, slots=True, kw_only=True)
class Ping:
    type: ClassVar[str] = "ping"
    ref: str | None = None

    @classmethod
    def parse(cls, data: dict[str, Any], ref: str | None, *, max_body_chars: int) -> Ping:
        return cls(ref=ref)


@dataclass(frozen=True, slots=True, kw_only=True)
class Conversations:
    type: ClassVar[str] = "conversations"
    # The `next` cursor of a previous reply (the wire calls it `before`).
    before: str | None = None
    limit: int = CONVERSATIONS_DEFAULT_LIMIT
    ref: str | None = None

    @classmethod
    def parse(cls, data: dict[str, Any], ref: str | None, *, max_body_chars: int) -> Conversations:
        before = data.get("before")
        if before is not None and (not isinstance(before, str) or len(before) > MAX_CURSOR_CHARS):
            raise ChatError(BAD_COMMAND, "before must be the next cursor of a previous reply")
        limit = _optional_limit(data, CONVERSATIONS_DEFAULT_LIMIT, CONVERSATIONS_MAX_LIMIT)
        return cls(before=before, limit=limit, ref=ref)


@dataclass(frozen=True, slots=True, kw_only=True)
class Read:
    type: ClassVar[str] = "read"
    of: Address
    id: int
    ref: str | None = None

    @classmethod
    def parse(cls, data: dict[str, Any], ref: str | None, *, max_body_chars: int) -> Read:
        _require(data, cls.type, "of", "id")
        of = clean_address(data["of"], "of")
        return cls(of=of, id=_clean_int(data["id"], "id", minimum=0), ref=ref)


@dataclass(frozen=True, slots=True, kw_only=True)
class Typing:
    type: ClassVar[str] = "typing"
    to: Address
    ref: str | None = None

    @classmethod
    def parse(cls, data: dict[str, Any], ref: str | None, *, max_body_chars: int) -> Typing:
        _require(data, cls.type, "to")
        to = clean_address(data["to"], "to")
        if to.kind == "all":
            raise ChatError(BAD_COMMAND, "typing goes to a user or a group, not to everyone")
        return cls(to=to, ref=ref)


@dataclass(frozen=True, slots=True, kw_only=True)
class Users:
    type: ClassVar[str] = "users"
    q: str = ""
    limit: int = SEARCH_DEFAULT_LIMIT
    ref: str | None = None

    @classmethod
    def parse(cls, data: dict[str, Any], ref: str | None, *, max_body_chars: int) -> Users:
        q, limit = _search(data)
        return cls(q=q, limit=limit, ref=ref)


@dataclass(frozen=True, slots=True, kw_only=True)
class Groups:
    type: ClassVar[str] = "groups"
    q: str = ""
    limit: int = SEARCH_DEFAULT_LIMIT
    ref: str | None = None

    @classmethod
    def parse(cls, data: dict[str, Any], ref: str | None, *, max_body_chars: int) -> Groups:
        q, limit = _search(data)
        return cls(q=q, limit=limit, ref=ref)


# -- protocol 1.2: display names -----------------------------------------------

MAX_NAME_CHARS = 64
# Control (Cc), format (Cf: bidi overrides, zero-width), surrogate, private-use
# and unassigned characters: they would hide or reorder what others read.
_REFUSED_NAME_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn"})


def display_name_refusal(name: object) -> str | None:
    """Why `name` cannot be a display name, or None if it can (once trimmed).

    Names need not be unique and the look-alike rule does not apply: the
    username stays the identity, the name is only what people read.
    """
    if not isinstance(name, str):
        return "name must be a string"
    name = name.strip()
    if not name:
        return "name must not be empty"
    if len(name) > MAX_NAME_CHARS:
        return f"name must be at most {MAX_NAME_CHARS} characters"
    for char in name:
        if unicodedata.category(char) in _REFUSED_NAME_CATEGORIES:
            return f"name must not contain the control or format character U+{ord(char):04X}"
        if char.isspace() and char != " ":
            return f"name must not contain the line or space character U+{ord(char):04X}"
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class Profile:
    type: ClassVar[str] = "profile"
    name: str
    ref: str | None = None

    @classmethod
    def parse(cls, data: dict[str, Any], ref: str | None, *, max_body_chars: int) -> Profile:
        _require(data, cls.type, "name")
        refused = display_name_refusal(data["name"])
        if refused is not None:
            raise ChatError(BAD_COMMAND, refused)
        return cls(name=data["name"].strip(), ref=ref)


# -- protocol 1.2: changing messages ------------------------------------------

# Longer than any emoji sequence: longer strings are `bad_emoji` unread.
MAX_EMOJI_CHARS = 32


def _message_id(data: dict[str, Any], kind: str) -> int:
    _require(data, kind, "id")
    return _clean_int(data["id"], "id", minimum=1)


@dataclass(frozen=True, slots=True, kw_only=True)
class Edit:
    type: ClassVar[str] = "edit"
    id: int
    body: str
    ref: str | None = None

    @classmethod
    def parse(cls, data: dict[str, Any], ref: str | None, *, max_body_chars: int) -> Edit:
        _require(data, cls.type, "id", "body")
        message_id = _message_id(data, cls.type)
        return cls(id=message_id, body=clean_body(data["body"], max_chars=max_body_chars), ref=ref)


@dataclass(frozen=True, slots=True, kw_only=True)
class Delete:
    type: ClassVar[str] = "delete"
    id: int
    ref: str | None = None

    @classmethod
    def parse(cls, data: dict[str, Any], ref: str | None, *, max_body_chars: int) -> Delete:
        return cls(id=_message_id(data, cls.type), ref=ref)


def _emoji_of(data: dict[str, Any], kind: str) -> str:
    """A string to check against the emoji list (chat.message_changes): `bad_emoji` if not one."""
    _require(data, kind, "id", "emoji")
    emoji = data["emoji"]
    if not isinstance(emoji, str):
        raise ChatError(BAD_COMMAND, "emoji must be a string")
    if not 0 < len(emoji) <= MAX_EMOJI_CHARS:
        raise ChatError(BAD_EMOJI, "emoji must be one fully-qualified Unicode emoji")
    return emoji


@dataclass(frozen=True, slots=True, kw_only=True)
class React:
    type: ClassVar[str] = "react"
    id: int
    emoji: str
    ref: str | None = None

    @classmethod
    def parse(cls, data: dict[str, Any], ref: str | None, *, max_body_chars: int) -> React:
        emoji = _emoji_of(data, cls.type)
        return cls(id=_message_id(data, cls.type), emoji=emoji, ref=ref)


@dataclass(frozen=True, slots=True, kw_only=True)
class Unreact:
    type: ClassVar[str] = "unreact"
    id: int
    emoji: str
    ref: str | None = None

    @classmethod
    def parse(cls, data: dict[str, Any], ref: str | None, *, max_body_chars: int) -> Unreact:
        emoji = _emoji_of(data, cls.type)
        return cls(id=_message_id(data, cls.type), emoji=emoji, ref=ref)


@dataclass(frozen=True, slots=True, kw_only=True)
class Changes:
    type: ClassVar[str] = "changes"
    since: int
    limit: int = CHANGES_MAX_LIMIT
    ref: str | None = None

    @classmethod
    def parse(cls, data: dict[str, Any], ref: str | None, *, max_body_chars: int) -> Changes:
        _require(data, cls.type, "since")
        since = _clean_int(data["since"], "since", minimum=0)
        limit = _optional_limit(data, CHANGES_MAX_LIMIT, CHANGES_MAX_LIMIT)
        return cls(since=since, limit=limit, ref=ref)


# -- protocol 1.2: search -------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Search:
    type: ClassVar[str] = "search"
    query: SearchQuery
    q: str
    # Only this conversation (the `in:` operator's address, as a field).
    of: Address | None = None
    # The `next` of a previous reply: results with lower ids.
    before: int | None = None
    limit: int = SEARCH_DEFAULT_LIMIT
    ref: str | None = None

    @classmethod
    def parse(cls, data: dict[str, Any], ref: str | None, *, max_body_chars: int) -> Search:
        _require(data, cls.type, "q")
        q = data["q"]
        if not isinstance(q, str) or "\x00" in q:
            raise ChatError(BAD_COMMAND, "q must be a string without NUL")
        try:
            query = parse_query(q)
        except QueryError as error:
            raise ChatError(BAD_COMMAND, f"q: {error}") from None
        of = data.get("of")
        if of is not None:
            of = clean_address(of, "of")
        before = data.get("before")
        if before is not None:
            before = _clean_int(before, "before", minimum=1)
        limit = _optional_limit(data, SEARCH_DEFAULT_LIMIT, SEARCH_MAX_LIMIT)
        return cls(query=query, q=q, of=of, before=before, limit=limit, ref=ref)


# -- protocol 1.2: private groups and roles -------------------------------------

# A member's role in a group, most powerful first.
ROLES = ("owner", "admin", "member")


def _member_of(data: dict[str, Any], kind: str) -> tuple[str, str]:
    """`group` and `user` of a command about one member of a group."""
    _require(data, kind, "group", "user")
    return clean_group_name(data["group"]), clean_username(data["user"])


@dataclass(frozen=True, slots=True, kw_only=True)
class Create:
    type: ClassVar[str] = "create"
    group: str
    private: bool = False
    ref: str | None = None

    @classmethod
    def parse(cls, data: dict[str, Any], ref: str | None, *, max_body_chars: int) -> Create:
        private = data.get("private")
        if private is None:
            private = False
        if not isinstance(private, bool):
            raise ChatError(BAD_COMMAND, "private must be true or false")
        return cls(group=_group_of(data, cls.type), private=private, ref=ref)


@dataclass(frozen=True, slots=True, kw_only=True)
class Invite:
    type: ClassVar[str] = "invite"
    group: str
    user: str
    ref: str | None = None

    @classmethod
    def parse(cls, data: dict[str, Any], ref: str | None, *, max_body_chars: int) -> Invite:
        group, user = _member_of(data, cls.type)
        return cls(group=group, user=user, ref=ref)


@dataclass(frozen=True, slots=True, kw_only=True)
class Remove:
    type: ClassVar[str] = "remove"
    group: str
    user: str
    ref: str | None = None

    @classmethod
    def parse(cls, data: dict[str, Any], ref: str | None, *, max_body_chars: int) -> Remove:
        group, user = _member_of(data, cls.type)
        return cls(group=group, user=user, ref=ref)


@dataclass(frozen=True, slots=True, kw_only=True)
class SetRole:
    """The `role` command: an owner sets another member's role."""

    type: ClassVar[str] = "role"
    group: str
    user: str
    role: str
    ref: str | None = None

    @classmethod
    def parse(cls, data: dict[str, Any], ref: str | None, *, max_body_chars: int) -> SetRole:
        group, user = _member_of(data, cls.type)
        _require(data, cls.type, "role")
        role = data["role"]
        if not isinstance(role, str) or role not in ROLES:
            raise ChatError(BAD_COMMAND, "role must be one of owner, admin, member")
        return cls(group=group, user=user, role=role, ref=ref)


Command = (
    Send
    | Join
    | Leave
    | Members
    | History
    | Sync
    | Who
    | Ping
    | Conversations
    | Read
    | Typing
    | Users
    | Groups
    | Edit
    | Delete
    | React
    | Unreact
    | Changes
    | Profile
    | Search
    | Create
    | Invite
    | Remove
    | SetRole
)
# Each command class by its `type`, for `parse_command`.
COMMAND_CLASSES: dict[str, type[Command]] = {cls.type: cls for cls in get_args(Command)}


def command_type(data: dict[str, Any]) -> str:
    """The frame's `type`, after checking its `ref`; `ChatError` if either is unusable."""
    if "ref" in data and read_ref(data) is None:
        raise ChatError(BAD_COMMAND, f"ref must be a string of at most {MAX_REF_CHARS} characters")
    kind = data.get("type")
    if not isinstance(kind, str):
        raise ChatError(BAD_COMMAND, "type must be a string")
    return kind


def unknown_type(kind: str) -> ChatError:
    return ChatError(BAD_COMMAND, f"unknown command type {kind[:40]!r}")


def parse_command(data: dict[str, Any], *, max_body_chars: int) -> Command:
    """Validate a decoded frame into its command; unknown fields are ignored."""
    kind = command_type(data)
    command = COMMAND_CLASSES.get(kind)
    if command is None:
        raise unknown_type(kind)
    return command.parse(data, read_ref(data), max_body_chars=max_body_chars)


def _require(data: dict[str, Any], kind: str, *fields: str) -> None:
    for field in fields:
        if field not in data:
            raise ChatError(BAD_COMMAND, f"{kind} needs {field}")


def _group_of(data: dict[str, Any], kind: str) -> str:
    _require(data, kind, "group")
    return clean_group_name(data["group"])


def _search(data: dict[str, Any]) -> tuple[str, int]:
    """`q` and `limit` of `users` and `groups` (1.1): both optional."""
    q = data.get("q")
    if q is None:
        q = ""
    if not isinstance(q, str) or len(q) > MAX_QUERY_CHARS or "\x00" in q:
        raise ChatError(BAD_COMMAND, f"q must be a string of at most {MAX_QUERY_CHARS} characters")
    return unicodedata.normalize("NFC", q), _optional_limit(
        data, SEARCH_DEFAULT_LIMIT, SEARCH_MAX_LIMIT
    )


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
