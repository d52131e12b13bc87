"""What a wire format and the socket it is composed into give each other."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from chat.actions import Actor, Services
from chat.protocol import ChatError


class Socket(Protocol):
    """What a wire format uses of its socket (`chat.sockets.socket.ChatSocket`)."""

    scope: Any
    services: Services
    actor: Actor
    username: str

    async def send(self, text_data: str | None = None) -> None:
        """Write a frame at once, ahead of anything waiting (the greeting)."""

    async def write_event(self, event: dict[str, Any]) -> None:
        """Write one of the socket's own events (a reply, an error) in its wire format."""

    async def answer_error(self, error: ChatError, ref: str | None) -> None:
        """Answer a refused command, counting it against the socket's error budget."""


class WireFormat(Protocol):
    """One endpoint's frames: who may log in, the greeting, frames in, events out."""

    # The endpoint's name in metrics and the admin's list of sockets.
    endpoint: str
    # True when the hub's JSON text of events is this format's frame as it is.
    shares_frames: bool

    async def login(self, socket: Socket) -> Any | None:
        """The user to open the socket for, or None to refuse the handshake (403)."""

    async def greet(self, socket: Socket, groups: list[tuple[int, str]]) -> None:
        """Send the first frame (events for the socket wait until it is out)."""

    async def receive(self, socket: Socket, text: str | None, data: bytes | None) -> None:
        """Carry out one frame from the client; errors are answered, never raised."""

    def translate(self, events: Sequence[dict[str, Any]]) -> list[str]:
        """The hub's events as this format's frames (when it does not share them)."""

    def frame(self, event: dict[str, Any]) -> str | None:
        """One of the socket's own events (a reply, an error) as a frame; None: no such frame."""

    def closed(self) -> None:
        """The socket closed: stop what is still running for it."""
