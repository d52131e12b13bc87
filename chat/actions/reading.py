"""Read positions, read receipts and typing: events that are never stored as messages."""

from __future__ import annotations

from chat.actions.services import Actor, Event, Reply, Services, reply
from chat.audience import member_group_here
from chat.conversations import ReadRequest
from chat.protocol import Read, Typing


async def read(services: Services, actor: Actor, command: Read) -> Reply:
    """Move the user's read position; when it moves, their other sockets and the
    conversation's other party (a direct peer, or the group, throttled) are told."""
    moved = await services.move_read_position(ReadRequest(actor.user, command.of, command.id))
    conversation = moved.conversation
    event = {"type": "read", "of": conversation.address.as_json(), "id": moved.id}
    if moved.advanced:
        outbox = services.outbox
        await outbox.to_user(actor.user_id, event, exclude_connection=actor.connection_id)
        receipt = {"type": "receipt", "user": actor.username, "id": moved.id}
        if conversation.peer_id is not None and conversation.peer_id != actor.user_id:
            receipt = {"type": "receipt", "of": {"user": actor.username}, **receipt}
            await outbox.to_user(conversation.peer_id, receipt)
        elif conversation.group_id is not None:
            receipt = {"type": "receipt", "of": conversation.address.as_json(), **receipt}
            await outbox.group_receipt(
                reader_id=actor.user_id, group_id=conversation.group_id, event=receipt
            )
    return reply("read", command.ref, of=event["of"], id=moved.id)


async def typing(services: Services, actor: Actor, command: Typing) -> None:
    """Tell a user or a group's online members that the user is typing; no reply.

    Checked against this worker's memory only: typing is too frequent for a
    database read, and a group the worker has not seen has no member here.
    """
    to = command.to
    event: Event = {"type": "typing", "user": actor.username}
    if to.kind == "user":
        if to.name != actor.username:
            event["to"] = {"user": actor.username}
            await services.outbox.to_username(to.name, event)
        return
    group_id, name = member_group_here(
        to.name, known=services.group_named, member_of=services.roster.groups_here(actor.user_id)
    )
    event["to"] = {"group": name}
    await services.outbox.to_group(group_id, event, exclude_user=actor.user_id)
