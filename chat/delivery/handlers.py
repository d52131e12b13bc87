"""What a worker does with each layer message: handled by the method its `type` names.

This is the receiving half of delivery, as Channels does it for consumers
(`chat.deliver` is handled by `chat_deliver`). The layer's receive loop calls
`dispatch`, and so does the hub for a message it could not publish during a
layer outage (its own sockets still get it). Everything here works on this
worker's memory only: the socket index, its layer subscriptions and the
notice batcher.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from chat.delivery.messages import (
    AccessEnd,
    Deliver,
    LayerMessage,
    MemberChange,
    Notice,
    Notices,
    Renamed,
    SessionEnd,
    Typing,
    group_layer_group,
)
from chat.delivery.notices import NoticeBatcher
from chat.delivery.sockets import SocketIndex, write_to_all
from chat.delivery.subscriptions import LayerSubscriptions
from chat.metrics import TALLY
from chat.protocol import CLOSE_POLICY_VIOLATION


class LayerHandlers:
    """The handlers of every layer message type, over this worker's sockets."""

    def __init__(
        self,
        sockets: SocketIndex,
        *,
        subscriptions: LayerSubscriptions,
        notices: NoticeBatcher,
    ) -> None:
        self.sockets = sockets
        self.subscriptions = subscriptions
        self.notices = notices
        # Told each group a socket here joins by a notice, with its name (`typing` needs it).
        self.name_group: Callable[[int, str], None] | None = None

    async def dispatch(self, message: LayerMessage) -> None:
        """Hand `message` to the method its type names."""
        await getattr(self, message.type.replace(".", "_"))(message)

    async def apply(self, change: MemberChange) -> None:
        """A membership change into the socket index and the layer groups it needs."""
        if not self.sockets.apply(change):
            return
        if change.joined:
            await self.subscriptions.subscribe([group_layer_group(change.group_id)])
        else:
            await self.subscriptions.unsubscribe([group_layer_group(change.group_id)])

    async def chat_deliver(self, message: Deliver) -> None:
        targets = self.sockets.targets(message.audience)
        await write_to_all(targets, message.text, message.events)
        # Counted once per layer message, not per frame (chat.metrics).
        tally = TALLY
        tally.frames_delivered += len(targets)
        tally.messages_delivered += len(targets) * message.count
        if message.stored_at and targets:
            tally.observe_latency(time.time() - message.stored_at)

    async def chat_notice(self, notice: Notice) -> None:
        change = notice.member_change
        if change is not None:
            await self.apply(change)
            name = notice.event.get("group")
            if change.joined and self.name_group is not None and isinstance(name, str):
                self.name_group(change.group_id, name)
        self.notices.add(notice)

    async def chat_notices(self, message: Notices) -> None:
        for notice in message.notices:
            await self.chat_notice(notice)

    async def chat_typing(self, message: Typing) -> None:
        user_id = self.sockets.user_named.get(message.username)
        if user_id is not None:
            await write_to_all(self.sockets.sockets_of(user_id), message.text, (message.event,))

    async def chat_renamed(self, message: Renamed) -> None:
        self.sockets.rename(message.username, message.name)

    async def chat_session_end(self, message: SessionEnd) -> None:
        for conn in self.sockets.sockets_of(message.user_id):
            if conn.session_digest == message.session:
                await conn.close_with(CLOSE_POLICY_VIOLATION)

    async def chat_access_end(self, message: AccessEnd) -> None:
        for conn in self.sockets.sockets_of(message.user_id):
            await conn.close_with(CLOSE_POLICY_VIOLATION)
