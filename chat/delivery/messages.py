"""Every message that travels between workers on the channel layer, typed.

On the layer a message is a flat dict (what channels_redis serialises), with a
`type` that names its handler the way Channels names a consumer's:
`chat.deliver` is handled by `LayerHandlers.chat_deliver`. In the code it is one
of the frozen dataclasses below; `to_layer` and `from_layer` are the only places that
know the dict's keys, so a worker never reads an optional key by hand.

The dict keeps the keys of earlier versions (new keys are added beside them),
so workers of two versions can share one Redis while a deployment rolls.

To add a message type:

1. Write a frozen, slotted dataclass here with a `type` class variable
   (`"chat.something"`), `layer_fields` (its dict, minus `type`) and
   `from_fields` (the reverse), and decorate it with `@layer_message`.
2. Give `chat.delivery.handlers.LayerHandlers` a method named after the type
   with dots as underscores (`chat_something`) that takes the dataclass.
3. Publish it with `hub.publish(layer_group, message)`; a test in
   tests/test_layer_messages.py checks that it comes back from `from_layer`
   equal.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, TypeVar

import orjson

from chat.protocol import encode

# The layer group every worker with a socket joins: broadcasts and presence.
LAYER_ALL = "chat.all"


def user_layer_group(user_id: int) -> str:
    return f"chat.user.{user_id}"


def group_layer_group(group_id: int) -> str:
    return f"chat.group.{group_id}"


class LayerMessage(Protocol):
    """What every message type below provides."""

    type: ClassVar[str]

    def layer_fields(self) -> dict[str, Any]:
        """Its fields on the layer, `type` aside."""

    @classmethod
    def from_fields(cls, data: Mapping[str, Any]) -> LayerMessage:
        """The message that `layer_fields` gave `data`."""


_M = TypeVar("_M", bound=type[LayerMessage])
_readers: dict[str, Callable[[Mapping[str, Any]], LayerMessage]] = {}


def layer_message(cls: _M) -> _M:
    """Register a message class so that `from_layer` reads its `type`."""
    _readers[cls.type] = cls.from_fields
    return cls


def to_layer(message: LayerMessage) -> dict[str, Any]:
    """The dict that carries `message` on the channel layer."""
    return {"type": message.type, **message.layer_fields()}


def from_layer(data: Mapping[str, Any]) -> LayerMessage:
    """The message a layer dict carries; `UnknownMessage` for a type nobody registered."""
    reader = _readers.get(data.get("type", ""))
    if reader is None:
        raise UnknownMessage(data.get("type"))
    return reader(data)


class UnknownMessage(ValueError):
    """A layer dict of a type this worker does not know (a newer worker's, say)."""


@dataclass(frozen=True, slots=True)
class Audience:
    """Which of a worker's sockets a message is for.

    One of `everyone`, `users` and `group` chooses the sockets; the exclusions
    then leave some out (notices only: a message goes to all it is for).
    """

    everyone: bool = False
    users: tuple[int, ...] = ()
    group: int | None = None
    exclude_user: int | None = None
    exclude_username: str | None = None
    exclude_connection: str | None = None

    @property
    def excludes(self) -> bool:
        return (
            self.exclude_user is not None
            or self.exclude_username is not None
            or self.exclude_connection is not None
        )

    @property
    def shared(self) -> bool:
        """Every socket here, but perhaps its own user's: presence notices are."""
        return self.everyone and self.exclude_user is None and self.exclude_connection is None

    def layer_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        if self.everyone:
            fields["all"] = True
        if self.users:
            fields["users"] = list(self.users)
        if self.group is not None:
            fields["group"] = self.group
        if self.exclude_user is not None:
            fields["exclude_user"] = self.exclude_user
        if self.exclude_username is not None:
            fields["exclude_username"] = self.exclude_username
        if self.exclude_connection is not None:
            fields["exclude_connection"] = self.exclude_connection
        return fields

    @classmethod
    def from_fields(cls, data: Mapping[str, Any]) -> Audience:
        users = data.get("users")
        return cls(
            everyone=bool(data.get("all")),
            users=tuple(users) if users else (),
            group=data.get("group"),
            exclude_user=data.get("exclude_user"),
            exclude_username=data.get("exclude_username"),
            exclude_connection=data.get("exclude_connection"),
        )


def _events_of(data: Mapping[str, Any]) -> tuple[dict[str, Any], ...]:
    """The events of a `Deliver`; parsed from its text only if an older worker sent it."""
    if "events" in data:
        return tuple(data["events"])
    event = orjson.loads(data["text"])
    return tuple(event["events"] if event.get("type") == "batch" else [event])


def events_text(events: Sequence[dict[str, Any]]) -> str:
    """The frame text of events: the event alone, or a `batch` of them, each encoded once."""
    return frame_text([encode(event) for event in events])


def frame_text(encoded: Sequence[str]) -> str:
    """The frame text of events already encoded: the one alone, or a `batch` of them."""
    if len(encoded) == 1:
        return encoded[0]
    return '{"type":"batch","events":[' + ",".join(encoded) + "]}"


@layer_message
@dataclass(frozen=True, slots=True)
class Deliver:
    """Events (stored messages, or a read or receipt) for their audience, in one frame.

    Both travel: the frame's text, encoded once by the publishing worker and
    written as it is to every JSON socket on every worker, and the events
    themselves, which sockets of the classic endpoint are written translated
    (never JSON parsed back).

    `origin` is the channel of the worker that published it: that worker
    wrote it to its own sockets before publishing, and drops the copy.
    """

    type: ClassVar[str] = "chat.deliver"
    text: str
    events: tuple[dict[str, Any], ...]
    audience: Audience
    origin: str = ""
    # For the metrics: how many messages the text carries, and when (Unix
    # time) they were committed. Optional, so older workers' copies still read.
    count: int = 1
    stored_at: float = 0.0

    @classmethod
    def of(cls, events: Sequence[dict[str, Any]], audience: Audience, **fields: Any) -> Deliver:
        """`events` for `audience`, encoded once here."""
        return cls(events_text(events), tuple(events), audience, **fields)

    def layer_fields(self) -> dict[str, Any]:
        fields = {"text": self.text, "events": self.events, **self.audience.layer_fields()}
        if self.origin:
            fields["origin"] = self.origin
        if self.count != 1:
            fields["count"] = self.count
        if self.stored_at:
            fields["stored_at"] = self.stored_at
        return fields

    @classmethod
    def from_fields(cls, data: Mapping[str, Any]) -> Deliver:
        return cls(
            data["text"],
            _events_of(data),
            Audience.from_fields(data),
            origin=data.get("origin", ""),
            count=data.get("count", 1),
            stored_at=data.get("stored_at", 0.0),
        )


@dataclass(frozen=True, slots=True)
class MemberChange:
    """A user joined or left a group: workers with that user's sockets update their index."""

    user_id: int
    group_id: int
    joined: bool


@layer_message
@dataclass(frozen=True, slots=True)
class Notice:
    """An event about people (presence, joined, left), held and batched before it is sent.

    `presence` names the user of a presence notice, so that a user's flaps
    within one batch cancel out.
    """

    type: ClassVar[str] = "chat.notice"
    event: dict[str, Any]
    audience: Audience
    presence: str | None = None
    member_change: MemberChange | None = None

    def layer_fields(self) -> dict[str, Any]:
        fields = {"event": self.event, **self.audience.layer_fields()}
        if self.presence is not None:
            fields["presence"] = self.presence
        change = self.member_change
        if change is not None:
            fields["member_change"] = {
                "user_id": change.user_id,
                "group_id": change.group_id,
                "joined": change.joined,
            }
        return fields

    @classmethod
    def from_fields(cls, data: Mapping[str, Any]) -> Notice:
        change = data.get("member_change")
        return cls(
            event=data["event"],
            audience=Audience.from_fields(data),
            presence=data.get("presence"),
            member_change=None
            if change is None
            else MemberChange(
                user_id=change["user_id"], group_id=change["group_id"], joined=change["joined"]
            ),
        )


def presence_notice(
    username: str, *, online: bool, name: str | None = None, last_seen: str | None = None
) -> Notice:
    """Tell every socket but the user's own that the user came online or went offline.

    It carries the user's display `name` (protocol 1.2; the username when
    none is given), and an offline notice `last_seen` (protocol 1.1).
    """
    event: dict[str, Any] = {
        "type": "presence",
        "user": username,
        "online": online,
        "name": username if name is None else name,
    }
    if not online and last_seen is not None:
        event["last_seen"] = last_seen
    return Notice(
        event=event,
        audience=Audience(everyone=True, exclude_username=username),
        presence=username,
    )


@layer_message
@dataclass(frozen=True, slots=True)
class Notices:
    """Notices of sockets opening or closing together, in order: one layer message for all."""

    type: ClassVar[str] = "chat.notices"
    notices: tuple[Notice, ...]

    def layer_fields(self) -> dict[str, Any]:
        return {"notices": [to_layer(notice) for notice in self.notices]}

    @classmethod
    def from_fields(cls, data: Mapping[str, Any]) -> Notices:
        return cls(notices=tuple(Notice.from_fields(notice) for notice in data["notices"]))


@layer_message
@dataclass(frozen=True, slots=True)
class Renamed:
    """A user chose a new display name: the workers with their sockets note it.

    Sent to the user's layer group, beside the `profile` event to everyone,
    so that the presence notice of the user's last socket here carries the
    name without reading it. A worker of the previous version logs it as
    unknown and goes on.
    """

    type: ClassVar[str] = "chat.renamed"
    username: str
    name: str

    def layer_fields(self) -> dict[str, Any]:
        return {"username": self.username, "name": self.name}

    @classmethod
    def from_fields(cls, data: Mapping[str, Any]) -> Renamed:
        return cls(username=data["username"], name=data["name"])


@layer_message
@dataclass(frozen=True, slots=True)
class SessionEnd:
    """A session logged out: its sockets close with 1008 on every worker.

    `session` is the session key's digest (`session_digest`), never the key.
    """

    type: ClassVar[str] = "chat.session_end"
    user_id: int
    session: str

    def layer_fields(self) -> dict[str, Any]:
        return {"user_id": self.user_id, "session": self.session}

    @classmethod
    def from_fields(cls, data: Mapping[str, Any]) -> SessionEnd:
        return cls(user_id=data["user_id"], session=data["session"])


@layer_message
@dataclass(frozen=True, slots=True)
class AccessEnd:
    """A user's access was revoked: every socket of theirs closes with 1008 on every worker.

    Sent when the user is deactivated or deleted, changes password, or is
    logged out everywhere (chat.revocation).
    """

    type: ClassVar[str] = "chat.access_end"
    user_id: int

    def layer_fields(self) -> dict[str, Any]:
        return {"user_id": self.user_id}

    @classmethod
    def from_fields(cls, data: Mapping[str, Any]) -> AccessEnd:
        return cls(user_id=data["user_id"])


@layer_message
@dataclass(frozen=True, slots=True)
class Typing:
    """A `typing` event for the sockets of one user, named: sent to every worker.

    The typist's worker knows the recipient's name, not their id, and typing
    never asks the database.
    """

    type: ClassVar[str] = "chat.typing"
    event: dict[str, Any]
    username: str

    @property
    def text(self) -> str:
        return encode(self.event)

    def layer_fields(self) -> dict[str, Any]:
        # `text` for workers of the previous version, during a rolling restart.
        return {"event": self.event, "text": self.text, "username": self.username}

    @classmethod
    def from_fields(cls, data: Mapping[str, Any]) -> Typing:
        event = data["event"] if "event" in data else orjson.loads(data["text"])
        return cls(event=event, username=data["username"])
