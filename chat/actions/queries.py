"""The read-only commands: history, sync, who, members, conversations, users, groups, ping;
and (1.2) changes and search.

Each reads through `chat.database.read_for_socket` (its own threads, within
`CHAT_DATABASE_TIMEOUT`) and keeps its reply within the byte limits.
"""

from __future__ import annotations

import logging

from django.conf import settings

from chat.actions.services import Actor, Event, Reply, Services, reply
from chat.conversations import (
    conversation_list,
    decode_cursor,
    encode_cursor,
    groups_matching,
    users_matching,
)
from chat.database import read_for_socket
from chat.groups import group_members_read
from chat.message_changes import message_changes
from chat.messaging import message_history_around, message_history_page, message_sync
from chat.paging import fit_page, names_page
from chat.profiles import name_of, names_of
from chat.protocol import (
    BAD_COMMAND,
    UNAVAILABLE,
    Changes,
    ChatError,
    Conversations,
    Groups,
    History,
    Members,
    Ping,
    Search,
    Sync,
    Users,
    Who,
)
from chat.search import message_search

logger = logging.getLogger(__name__)

# Bytes of a history or sync reply that are not its messages: the type, `of`
# (an address), `ref` (64 characters, 6 bytes each when escaped), `more`.
_REPLY_ENVELOPE_BYTES = 1024


def reply_room() -> int:
    """Bytes the messages of one reply may take.

    Within `CHAT_MAX_REPLY_BYTES` and `CHAT_MAX_BUFFERED_BYTES`; at least one
    message always goes (`fit_in_bytes`), so a client paging never gets stuck.
    """
    bound = min(settings.CHAT_MAX_REPLY_BYTES, settings.CHAT_MAX_BUFFERED_BYTES)
    return max(1, int(bound) - _REPLY_ENVELOPE_BYTES)


async def hello(services: Services, actor: Actor, groups: list[tuple[int, str]]) -> Event:
    """The greeting of a new JSON socket: who is online, the user's groups, the newest id."""
    try:
        online = await online_now(services)
    except ChatError:
        online = ()
    last_id, last_rev = await services.last_marks_of(actor.user_id)
    return {
        "type": "hello",
        "user": actor.username,
        "name": await own_name(actor),
        "online": online,
        "groups": [name for _, name in groups],
        "last_id": last_id,
        "last_rev": last_rev,
        # A client offers Edit only while the server would take it.
        "edit_window": settings.CHAT_EDIT_WINDOW,
    }


async def own_name(actor: Actor) -> str:
    """The user's name, from the profile read with the user at the handshake when it was.

    The socket names its user to the hub with it too (presence notices carry it).
    """
    profile = getattr(type(actor.user), "chat_profile", None)
    if profile is not None and profile.is_cached(actor.user):
        return name_of(actor.user)
    try:
        names = await read_for_socket(names_of, usernames=[actor.username])
    except ChatError:
        names = {}
    return names.get(actor.username, actor.username)


async def history(services: Services, actor: Actor, command: History) -> Reply:
    if command.around is not None:
        messages, more, newer = await read_for_socket(
            message_history_around,
            user=actor.user,
            of=command.of,
            around=command.around,
            limit=command.limit,
            max_bytes=reply_room(),
        )
        return reply(
            "history",
            command.ref,
            of=command.of.as_json(),
            messages=messages,
            more=more,
            newer=newer,
        )
    messages, more = await read_for_socket(
        message_history_page,
        user=actor.user,
        of=command.of,
        before=command.before,
        limit=command.limit,
        max_bytes=reply_room(),
    )
    return reply("history", command.ref, of=command.of.as_json(), messages=messages, more=more)


async def sync(services: Services, actor: Actor, command: Sync) -> Reply:
    messages, more = await read_for_socket(
        message_sync, user=actor.user, since=command.since, max_bytes=reply_room()
    )
    return reply("sync", command.ref, messages=messages, more=more)


async def who(services: Services, actor: Actor, command: Who) -> Reply:
    names, more = names_page(await online_now(services), after=command.after, limit=command.limit)
    names, paging = fit_page(names, more, max_bytes=reply_room(), name=str)
    return reply("who", command.ref, online=names, **paging)


async def members(services: Services, actor: Actor, command: Members) -> Reply:
    group, everyone, reads = await read_for_socket(
        group_members_read, user=actor.user, name=command.group
    )
    names, more = names_page(everyone, after=command.after, limit=command.limit)
    online = set(await online_now(services))
    seen = await last_seen_of(services, [name for name in names if name not in online])
    chosen = await read_for_socket(names_of, usernames=names)
    found = [
        {
            "user": name,
            "name": chosen.get(name, name),
            "online": name in online,
            "last_seen": seen.get(name),
            "read_id": reads[name].read_id,
            "role": reads[name].role,
        }
        for name in names
    ]
    found, paging = fit_page(
        found, more, max_bytes=reply_room(), name=lambda member: str(member["user"])
    )
    return reply("members", command.ref, group=group, members=found, **paging)


async def conversations(services: Services, actor: Actor, command: Conversations) -> Reply:
    before = None
    if command.before is not None:
        before = decode_cursor(command.before)
        if before is None:
            raise ChatError(BAD_COMMAND, "before must be the next cursor of a previous reply")
    items, cursor = await read_for_socket(
        conversation_list, user=actor.user, before=before, limit=command.limit
    )
    if cursor is None:
        return reply("conversations", command.ref, items=items, more=False)
    return reply("conversations", command.ref, items=items, more=True, next=encode_cursor(cursor))


async def users(services: Services, actor: Actor, command: Users) -> Reply:
    online = await services.roster.online()
    found = await read_for_socket(
        users_matching, prefix=command.q, limit=command.limit, online=online
    )
    seen = await last_seen_of(services, [name for name, _, is_online in found if not is_online])
    listed = [
        {
            "user": name,
            "name": chosen,
            "online": is_online,
            "last_seen": None if is_online else seen.get(name),
        }
        for name, chosen, is_online in found
    ]
    return reply("users", command.ref, users=listed)


async def groups(services: Services, actor: Actor, command: Groups) -> Reply:
    online = await services.roster.online()
    found = await read_for_socket(
        groups_matching, user=actor.user, prefix=command.q, limit=command.limit, online=online
    )
    listed = [
        {
            "group": g.name,
            "members": g.members,
            "online": g.online,
            "member": g.member,
            "private": g.private,
        }
        for g in found
    ]
    return reply("groups", command.ref, groups=listed)


async def changes(services: Services, actor: Actor, command: Changes) -> Reply:
    """Messages changed or stored since a `rev` (1.2), as they are now, in `rev` order."""
    messages, more = await read_for_socket(
        message_changes,
        user=actor.user,
        since=command.since,
        limit=command.limit,
        max_bytes=reply_room(),
    )
    if more and messages:
        last = messages[-1]["rev"]
        return reply("changes", command.ref, messages=messages, more=True, next=last)
    return reply("changes", command.ref, messages=messages, more=False)


async def search(services: Services, actor: Actor, command: Search) -> Reply:
    """Messages the user may see now that match `q` (1.2), newest first, with their spans."""
    results, more = await read_for_socket(
        message_search,
        user=actor.user,
        query=command.query,
        of=command.of,
        before=command.before,
        limit=command.limit,
        max_bytes=reply_room(),
    )
    if more and results:
        last = results[-1]["message"]["id"]
        return reply("search", command.ref, results=results, more=True, next=last)
    return reply("search", command.ref, results=results, more=False)


async def ping(services: Services, actor: Actor, command: Ping) -> Reply:
    return reply("pong", command.ref)


async def online_now(services: Services) -> tuple[str, ...]:
    """Online usernames, or `unavailable` while the presence store is down."""
    try:
        return await services.roster.online_names()
    except Exception:
        logger.warning("presence store unavailable", exc_info=True)
        raise ChatError(UNAVAILABLE, "presence is unavailable; try again") from None


async def last_seen_of(services: Services, names: list[str]) -> dict[str, str]:
    """When each of these offline users was last online, for those recorded."""
    try:
        return await services.presence.last_seen(names)
    except Exception:
        logger.warning("presence store unavailable", exc_info=True)
        return {}
