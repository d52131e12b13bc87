"""Display names (protocol 1.2): `profile` sets the user's name.

Everyone online can see everyone (the Everyone conversation, the people
picker), so a changed name reaches every socket: the user's other sockets
too, the one that changed it by its reply.
"""

from __future__ import annotations

from channels.db import database_sync_to_async

from chat.actions.services import Actor, Reply, Services, reply
from chat.profiles import set_name
from chat.protocol import Profile


async def profile(services: Services, actor: Actor, command: Profile) -> Reply:
    name = await database_sync_to_async(set_name)(actor.user, command.name)
    event = {"type": "profile", "user": actor.username, "name": name}
    await services.outbox.renamed(
        event,
        user_id=actor.user_id,
        username=actor.username,
        name=name,
        exclude_connection=actor.connection_id,
    )
    return reply("profile", command.ref, user=actor.username, name=name)
