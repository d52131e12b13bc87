"""The tutorial's room consumer, with the load generator's subset of our protocol."""

from __future__ import annotations

import itertools
import json
import os
import uuid
from datetime import UTC, datetime
from typing import Any

from channels.generic.websocket import AsyncWebsocketConsumer

ROOM = "room_bench"
_ids = itertools.count(1)
_worker = os.getpid() % 1000


class RoomConsumer(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        self.user = f"peer-{uuid.uuid4().hex[:8]}"
        self.room_group_name = ROOM
        await self.channel_layer.group_add(self.room_group_name, self.channel_name)
        await self.accept()
        await self.send(
            text_data=json.dumps(
                {"type": "hello", "user": self.user, "online": [], "groups": [], "last_id": 0}
            )
        )

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard(self.room_group_name, self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        data = json.loads(text_data or "{}")
        kind = data.get("type")
        ref = data.get("ref")
        if kind == "send":
            message_id = next(_ids) * 1000 + _worker
            ts = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
            await self.send(
                text_data=json.dumps({"type": "ack", "ref": ref, "id": message_id, "ts": ts})
            )
            await self.channel_layer.group_send(
                self.room_group_name,
                {
                    "type": "chat.message",
                    "id": message_id,
                    "from": self.user,
                    "to": data.get("to"),
                    "body": data.get("body"),
                    "ts": ts,
                },
            )
        elif kind == "join":
            reply: dict[str, Any] = {
                "type": "joined",
                "group": data.get("group"),
                "user": self.user,
            }
            if ref is not None:
                reply["ref"] = ref
            await self.send(text_data=json.dumps(reply))
        elif kind == "ping":
            await self.send(text_data=json.dumps({"type": "pong", "ref": ref}))

    async def chat_message(self, event: dict[str, Any]) -> None:
        message = {key: value for key, value in event.items() if key != "type"}
        await self.send(text_data=json.dumps({"type": "message", **message}))
