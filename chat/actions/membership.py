"""Joining and leaving groups; the group's online members and the user's other sockets are told."""

from __future__ import annotations

from channels.db import database_sync_to_async

from chat.actions.budget import spend_membership_change
from chat.actions.services import Actor, Reply, Services, reply
from chat.group_roles import role_event
from chat.groups import group_leave
from chat.joining import JoinRequest
from chat.models import group_key
from chat.protocol import Join, Leave


async def join(services: Services, actor: Actor, command: Join) -> Reply:
    """Join (creating a public group, owned by the user, on first join); others hear
    of it only if it changed anything. A private group: `invite_only` to non-members."""
    await spend_membership_change(services, actor, "join")
    # Committed before the reply, with the joins that arrived meanwhile (chat.joining).
    change = await services.join_group(JoinRequest(actor.user, command.group))
    services.group_named[group_key(change.group)] = (change.group_id, change.group)
    await services.outbox.membership_changed(
        {
            "type": "joined",
            "group": change.group,
            "user": actor.username,
            "private": change.private,
        },
        user_id=actor.user_id,
        group_id=change.group_id,
        joined=True,
        exclude_connection=actor.connection_id,
        announce=change.changed,
    )
    created = {"created": True} if change.created else {}
    return reply(
        "joined",
        command.ref,
        group=change.group,
        user=actor.username,
        **created,
        private=change.private,
    )


async def leave(services: Services, actor: Actor, command: Leave) -> Reply:
    """Leave a group (`not_member` if not in it; its last owner while others remain:
    `last_owner`, or ownership passes on, `chat.groups.group_leave`)."""
    await spend_membership_change(services, actor, "leave")
    change = await database_sync_to_async(group_leave)(user=actor.user, name=command.group)
    await services.outbox.membership_changed(
        {"type": "left", "group": change.group, "user": actor.username},
        user_id=actor.user_id,
        group_id=change.group_id,
        joined=False,
        exclude_connection=actor.connection_id,
        announce=True,
    )
    if change.new_owner is not None:
        # Every member hears of the group's new owner as of any role change.
        await services.outbox.to_group(
            change.group_id,
            role_event(group=change.group, user=change.new_owner, role="owner", by=actor.username),
        )
    return reply("left", command.ref, group=change.group, user=actor.username)
