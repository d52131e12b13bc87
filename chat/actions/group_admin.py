"""Private groups and roles (1.2): `create`, `invite`, `remove`, `role`, and who is told.

The rules are `chat.group_roles`'. The events travel the way `join` and
`leave` do (`Outbox.membership_changed`: every worker updates its index of
who is in the group, the member's sockets and the group's online members are
told), with `by`, the member who made the change.
"""

from __future__ import annotations

from channels.db import database_sync_to_async

from chat.actions.budget import spend_membership_change
from chat.actions.services import Actor, Reply, Services, reply
from chat.group_roles import (
    group_create,
    group_invite,
    group_remove,
    group_set_role,
    role_event,
)
from chat.models import group_key
from chat.protocol import Create, Invite, Remove, SetRole


async def create(services: Services, actor: Actor, command: Create) -> Reply:
    """Create a group, public or private, with the user as its owner (`group_exists` if taken)."""
    await spend_membership_change(services, actor, "create")
    change = await database_sync_to_async(group_create)(
        user=actor.user, name=command.group, private=command.private
    )
    services.group_named[group_key(change.group)] = (change.group_id, change.group)
    event = {"type": "joined", "group": change.group, "user": actor.username}
    await services.outbox.membership_changed(
        {**event, "private": change.private},
        user_id=actor.user_id,
        group_id=change.group_id,
        joined=True,
        exclude_connection=actor.connection_id,
        announce=True,
    )
    return reply("joined", command.ref, **event, created=True, private=change.private)


async def invite(services: Services, actor: Actor, command: Invite) -> Reply:
    """Add a user to a group at once; they and the group's online members get `joined`."""
    await spend_membership_change(services, actor, "invite")
    change = await database_sync_to_async(group_invite)(
        actor=actor.user, name=command.group, username=command.user
    )
    services.group_named[group_key(change.group)] = (change.group_id, change.group)
    event = {
        "type": "joined",
        "group": change.group,
        "user": change.username,
        "by": actor.username,
        "private": change.private,
    }
    await services.outbox.membership_changed(
        event,
        user_id=change.user_id,
        group_id=change.group_id,
        joined=True,
        exclude_connection=None,
        announce=change.changed,
        by_connection=actor.connection_id,
    )
    return reply("joined", command.ref, **_fields(event))


async def remove(services: Services, actor: Actor, command: Remove) -> Reply:
    """Remove a member; from now on nothing of the group reaches their sockets, on any worker."""
    await spend_membership_change(services, actor, "remove")
    change = await database_sync_to_async(group_remove)(
        actor=actor.user, name=command.group, username=command.user
    )
    event = {"type": "left", "group": change.group, "user": change.username, "by": actor.username}
    await services.outbox.membership_changed(
        event,
        user_id=change.user_id,
        group_id=change.group_id,
        joined=False,
        exclude_connection=None,
        announce=True,
        by_connection=actor.connection_id,
    )
    return reply("left", command.ref, **_fields(event))


async def role(services: Services, actor: Actor, command: SetRole) -> Reply:
    """Set a member's role (owners only); every online member gets `role`."""
    change = await database_sync_to_async(group_set_role)(
        actor=actor.user, name=command.group, username=command.user, role=command.role
    )
    event = role_event(
        group=change.group, user=change.username, role=change.role, by=actor.username
    )
    if change.changed:
        await services.outbox.to_group(
            change.group_id, event, exclude_connection=actor.connection_id
        )
    return reply("role", command.ref, **_fields(event))


def _fields(event: dict[str, object]) -> dict[str, object]:
    """An event's fields but its type, for the reply that repeats it."""
    return {key: value for key, value in event.items() if key != "type"}
