"""Actions: what each client command does, for whom, and who is told.

A socket parses a frame into a command (`chat.protocol`), then calls its
action with the worker's `Services` and the acting user (`Actor`). The action
checks the rules, changes the store, names the audience of every event it
causes through the `Outbox` (the hub carries them), and returns the reply.
Families: `sending`, `changing` (edit, delete, react), `membership`,
`group_admin` (create, invite, remove, role), `reading` (read positions,
receipts, typing), `naming` (display names) and `queries` (the read-only
commands).

`COMMANDS` is the one table from a command `type` to its parser and action.
Adding a command: its dataclass with `type` and `parse` in `chat.protocol`
(and in its `Command` union), its action in the family's module here, and
its row below; the socket needs no change.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from chat.actions import (
    changing,
    group_admin,
    membership,
    naming,
    queries,
    reading,
    sending,
)
from chat.actions.budget import spend
from chat.actions.services import Actor, Outbox, Reply, Roster, Services
from chat.protocol import (
    Changes,
    Command,
    Conversations,
    Create,
    Delete,
    Edit,
    Groups,
    History,
    Invite,
    Join,
    Leave,
    Members,
    Ping,
    Profile,
    React,
    Read,
    Remove,
    Search,
    Send,
    SetRole,
    Sync,
    Typing,
    Unreact,
    Users,
    Who,
    command_type,
    read_ref,
    unknown_type,
)

__all__ = [
    "COMMANDS",
    "Actor",
    "Entry",
    "Outbox",
    "Reply",
    "Roster",
    "Services",
    "parse",
    "spend",
]

Action = Callable[[Services, Actor, Any], Awaitable[Reply | None]]


@dataclass(frozen=True, slots=True)
class Entry:
    """A command type's parser and action."""

    parse: Callable[..., Command]
    act: Action
    # Read-only: one with a `ref` may run alongside the socket's later commands.
    reads: bool = False


COMMANDS: dict[str, Entry] = {
    Send.type: Entry(Send.parse, sending.send),
    Join.type: Entry(Join.parse, membership.join),
    Leave.type: Entry(Leave.parse, membership.leave),
    Read.type: Entry(Read.parse, reading.read),
    Typing.type: Entry(Typing.parse, reading.typing),
    History.type: Entry(History.parse, queries.history, reads=True),
    Sync.type: Entry(Sync.parse, queries.sync, reads=True),
    Members.type: Entry(Members.parse, queries.members, reads=True),
    Conversations.type: Entry(Conversations.parse, queries.conversations, reads=True),
    Users.type: Entry(Users.parse, queries.users, reads=True),
    Groups.type: Entry(Groups.parse, queries.groups, reads=True),
    Who.type: Entry(Who.parse, queries.who),
    Ping.type: Entry(Ping.parse, queries.ping),
    # Protocol 1.2: changing messages.
    Edit.type: Entry(Edit.parse, changing.edit),
    Delete.type: Entry(Delete.parse, changing.delete),
    React.type: Entry(React.parse, changing.react),
    Unreact.type: Entry(Unreact.parse, changing.unreact),
    Changes.type: Entry(Changes.parse, queries.changes, reads=True),
    # Protocol 1.2: display names.
    Profile.type: Entry(Profile.parse, naming.profile),
    # Protocol 1.2: search.
    Search.type: Entry(Search.parse, queries.search, reads=True),
    # Protocol 1.2: private groups and roles.
    Create.type: Entry(Create.parse, group_admin.create),
    Invite.type: Entry(Invite.parse, group_admin.invite),
    Remove.type: Entry(Remove.parse, group_admin.remove),
    SetRole.type: Entry(SetRole.parse, group_admin.role),
}


def parse(data: dict[str, Any], *, max_body_chars: int) -> tuple[Entry, Command]:
    """A decoded frame's table entry and command, or `ChatError` (`bad_command`, ...)."""
    kind = command_type(data)
    entry = COMMANDS.get(kind)
    if entry is None:
        raise unknown_type(kind)
    return entry, entry.parse(data, read_ref(data), max_body_chars=max_body_chars)
