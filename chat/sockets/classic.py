"""The `/socket` endpoint: the classic comma-separated protocol of old clients.

A thin translation, not a second chat server (docs/protocol.md, "The
plain-text endpoint"). `TARGET,TEXT` frames become the same `send` and `join`
commands as on `/ws/chat/`, run through the same actions (`chat.actions`); the hub's
JSON events become plain-text frames. Users, groups, storage, presence, limits
and error codes are therefore shared with JSON clients.

What classic clients get:

- a `message` event, the sender's own copy included (it is their only sign
  that the message was stored): `用户(FROM=>TO):TEXT`; a message with files
  (1.2) has their full URLs after its text, one per line;
- `presence`: `用户(NAME)登录了` / `用户(NAME)退出了`;
- an error: `错误(CODE):MESSAGE`.

`ack`, `joined` and `left` have no classic form and are dropped.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from django.conf import settings

from chat import actions, protocol
from chat.accounts import GUEST_PREFIX, account_creation_allowed, guest_create
from chat.actions import membership, sending
from chat.addresses import client_address_of_scope
from chat.profiles import note_nameless
from chat.protocol import Address, ChatError, Join, Send, error_event
from chat.sockets.origins import site_origin
from chat.sockets.wire import Socket

logger = logging.getLogger(__name__)

LOGIN_TARGET = "login"
ALL_TARGET = "all"
GROUP_PREFIX = "group"
# ASCII only: `\d` would also accept other scripts' digits.
_USER_ID_RE = re.compile(r"[0-9]{1,12}")


def classic_command(frame: str, *, max_bytes: int, max_body_chars: int) -> Send | None:
    """The command a `TARGET,TEXT` frame asks for (None for `login`), or `ChatError`."""
    # A str from the socket has at most 4 bytes per character: skip encoding
    # when it is clearly within the limit.
    if len(frame) * 4 > max_bytes and len(frame.encode("utf-8", "surrogatepass")) > max_bytes:
        raise ChatError(protocol.TOO_LARGE, f"frame is larger than {max_bytes} bytes")
    target, comma, text = frame.partition(",")
    if not comma:
        raise ChatError(protocol.BAD_COMMAND, "frames are TARGET,TEXT (no comma found)")
    if not target:
        raise ChatError(
            protocol.BAD_COMMAND,
            "the target before the comma is empty (login, all, groupNAME or a user)",
        )
    if target == LOGIN_TARGET:
        # The socket is online from its handshake; nothing to do.
        return None
    if target == ALL_TARGET:
        to = Address("all")
    elif target.startswith(GROUP_PREFIX):
        to = Address("group", protocol.clean_group_name(target[len(GROUP_PREFIX) :]))
    else:
        to = Address("user", protocol.clean_username(target))
    body = protocol.clean_body(text, max_chars=max_body_chars)
    return Send(to=to, body=body)


def _classic_frame(event: dict[str, Any], origin: str = "") -> str | None:
    """`origin`: the site as the handshake named it, which makes files' URLs full."""
    kind = event.get("type")
    if kind == "message":
        to = event["to"]
        audience = to.get("user") or to.get("group") or ALL_TARGET
        urls = [origin + f["url"] for f in event.get("files", ())]
        text = "\n".join([event["body"], *urls] if event["body"] else urls)
        return f"用户({event['from']}=>{audience}):{text}"
    if kind == "presence":
        return f"用户({event['user']}){'登录了' if event['online'] else '退出了'}"
    if kind == "error":
        return f"错误({event['code']}):{event['message']}"
    return None


def guest_suffix(query_string: bytes) -> str | None:
    """The digits of a valid `?userId=DIGITS`, or None."""
    values = parse_qs(query_string.decode("latin-1")).get("userId", [])
    if len(values) == 1 and _USER_ID_RE.fullmatch(values[0]):
        return values[0]
    return None


def _classic_guest(suffix: str, address: str) -> Any:
    """The new guest `guest-<suffix>`; None if taken or `address` made too many accounts."""
    if not account_creation_allowed(address):
        logger.info("refused a classic guest: %s created too many accounts", address)
        return None
    guest = guest_create(suffix=suffix)
    if guest is not None:
        # Its name (the username) goes in its presence notice without a read.
        note_nameless(guest)
    return guest


class ClassicFormat:
    """The plain-text protocol of docs/protocol.md, for old clients."""

    __slots__ = ("_groups", "_origin")
    endpoint = "classic"
    shares_frames = False

    def __init__(self) -> None:
        # Groups this user is known to be in, so that a group send joins only when needed.
        self._groups: set[str] = set()
        # `scheme://host` the client connected to: files' URLs are given in full.
        self._origin = ""

    async def login(self, socket: Socket) -> Any | None:
        self._origin = site_origin(socket.scope) or ""
        user = socket.scope.get("user")
        if user is not None and user.is_authenticated:
            # The session decides who this is; a userId in the URL is ignored.
            return user
        suffix = guest_suffix(socket.scope.get("query_string", b""))
        if not settings.CHAT_GUEST_LOGIN or suffix is None:
            return None
        guest = await database_sync_to_async(_classic_guest)(
            suffix, client_address_of_scope(socket.scope)
        )
        if guest is None:
            # Someone has that name already (a URL must not take it over),
            # or this address made too many accounts.
            logger.info("refused a classic socket for %s%s", GUEST_PREFIX, suffix)
        return guest

    async def greet(self, socket: Socket, groups: list[tuple[int, str]]) -> None:
        # Classic clients get no greeting; remember the groups to skip joins.
        self._groups = {name for _, name in groups}

    def translate(self, events: Sequence[dict[str, Any]]) -> list[str]:
        """The hub's events as classic frames, translated from the events themselves."""
        frames = []
        for event in events:
            try:
                frame = _classic_frame(event, self._origin)
            except Exception:
                logger.exception("could not translate an event for a classic socket")
                continue
            if frame is not None:
                frames.append(frame)
        return frames

    def frame(self, event: dict[str, Any]) -> str | None:
        return _classic_frame(event, self._origin)

    def closed(self) -> None:
        pass

    async def receive(self, socket: Socket, text: str | None, data: bytes | None) -> None:
        try:
            if text is None:
                raise ChatError(protocol.BINARY_NOT_SUPPORTED, "send TARGET,TEXT in text frames")
            command = classic_command(
                text,
                max_bytes=settings.CHAT_MAX_FRAME_BYTES,
                max_body_chars=settings.CHAT_MAX_BODY_CHARS,
            )
            if command is not None:
                await self._send(socket, command)
        except ChatError as error:
            await socket.answer_error(error, None)
        except Exception:
            logger.exception("classic command failed for %s", socket.username)
            await socket.write_event(
                error_event(protocol.UNAVAILABLE, "the server failed; try again")
            )

    async def _send(self, socket: Socket, command: Send) -> None:
        """Send a message, joining its group first if needed (as classic servers did)."""
        services, actor = socket.services, socket.actor
        await actions.spend(services, actor, "send")
        if command.to.kind != "group":
            await sending.send(services, actor, command)
            return
        name = command.to.name
        if name not in self._groups:
            await self._join(socket, name)
        try:
            await sending.send(services, actor, command)
        except ChatError as error:
            # Left on another connection since: join again, once.
            if error.code != protocol.NOT_MEMBER:
                raise
            await self._join(socket, name)
            await sending.send(services, actor, command)

    async def _join(self, socket: Socket, name: str) -> None:
        joined = await membership.join(socket.services, socket.actor, Join(group=name))
        self._groups.add(joined["group"])
