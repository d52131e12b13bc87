"""Changing messages (protocol 1.2): edit, delete, react, unreact.

Each is checked and stored by `chat.message_changes`; when it changed
anything, the message's audience is told (all but the connection that made
the change, which gets the reply instead).
"""

from __future__ import annotations

from channels.db import database_sync_to_async

from chat.actions.services import Actor, Reply, Services
from chat.message_changes import (
    Change,
    change_event,
    message_delete,
    message_edit,
    message_react,
)
from chat.protocol import Delete, Edit, React, Unreact


async def edit(services: Services, actor: Actor, command: Edit) -> Reply:
    change = await database_sync_to_async(message_edit)(
        user=actor.user, message_id=command.id, body=command.body
    )
    return await _changed(services, actor, change, command.ref)


async def delete(services: Services, actor: Actor, command: Delete) -> Reply:
    change = await database_sync_to_async(message_delete)(user=actor.user, message_id=command.id)
    return await _changed(services, actor, change, command.ref)


async def react(services: Services, actor: Actor, command: React) -> Reply:
    change = await database_sync_to_async(message_react)(
        user=actor.user, message_id=command.id, emoji=command.emoji, on=True
    )
    return await _changed(services, actor, change, command.ref)


async def unreact(services: Services, actor: Actor, command: Unreact) -> Reply:
    change = await database_sync_to_async(message_react)(
        user=actor.user, message_id=command.id, emoji=command.emoji, on=False
    )
    return await _changed(services, actor, change, command.ref)


async def _changed(services: Services, actor: Actor, change: Change, ref: str | None) -> Reply:
    """Tell the message's audience (but this connection, which gets the reply), if it changed."""
    if change.changed:
        await services.outbox.to_message_audience(
            change, change_event(change), exclude_connection=actor.connection_id
        )
    return change_event(change, ref)
