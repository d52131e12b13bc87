"""Sending a message: the send queue stores it and hands it to the hub for its audience."""

from __future__ import annotations

from chat.actions.services import Actor, Reply, Services, reply
from chat.protocol import Send


async def send(services: Services, actor: Actor, command: Send) -> Reply:
    """Store a message and return its ack (`no_such_user`, `not_member` if no audience).

    The audience is the message's address, resolved where it is stored
    (`chat.audience`); live delivery follows the commit, in id order.
    """
    stored = await services.send_queue.submit(
        actor.user, command.to, command.body, command.cid, command.reply_to, command.files
    )
    cid = {} if command.cid is None else {"cid": command.cid}
    return reply("ack", command.ref, id=stored.id, ts=stored.ts, **cid)
