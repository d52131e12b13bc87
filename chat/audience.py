"""Who an address names for a user, and the two refusals: `no_such_user`, `not_member`.

One rule for every command: a user address names an existing user (any
user, the sender included); a group address names a group the user is a
member of, matched ignoring case; `all` is everyone. History, read positions,
typing, sends, leaves and member lists all resolve their address here, or,
where a batch resolves many in one query (the send queue's), refuse with
`refusal`, so the codes and messages are the same wherever they are decided.
"""

from __future__ import annotations

from collections.abc import Container, Mapping
from dataclasses import dataclass
from typing import Any

from django.contrib.auth import get_user_model

from chat.models import ChatGroup, Message, group_key
from chat.protocol import NO_SUCH_USER, NOT_MEMBER, Address, ChatError


def no_such_user(name: str) -> ChatError:
    return ChatError(NO_SUCH_USER, f"there is no user {name!r}")


def not_member(name: str) -> ChatError:
    return ChatError(NOT_MEMBER, f"you are not a member of group {name!r}")


def refusal(address: Address) -> ChatError:
    """The refusal for an address that named nobody: a user or a group (never `all`)."""
    if address.kind == "user":
        return no_such_user(address.name)
    return not_member(address.name)


@dataclass(frozen=True, slots=True)
class Conversation:
    """An address resolved for one user: its key, its own spelling, who else is in it."""

    key: str
    address: Address
    # The other party of a direct conversation, or the group, by id.
    peer_id: int | None = None
    group_id: int | None = None

    def messages(self, user_id: int) -> Any:
        """The conversation's messages as `user_id` sees them (a queryset)."""
        if self.peer_id is not None:
            return Message.objects.between(user_id, self.peer_id)
        if self.group_id is not None:
            return Message.objects.in_group(self.group_id)
        return Message.objects.broadcasts()


def resolve(user_id: int, of: Address) -> Conversation:
    """The conversation `of` names for the user: `no_such_user` or `not_member` if none."""
    if of.kind == "user":
        user_model = get_user_model()
        peer = (
            user_model._default_manager.filter(**{user_model.USERNAME_FIELD: of.name})
            .values_list("pk", user_model.USERNAME_FIELD)
            .first()
        )
        if peer is None:
            raise no_such_user(of.name)
        return Conversation(f"user:{peer[0]}", Address("user", peer[1]), peer_id=peer[0])
    if of.kind == "group":
        group = (
            ChatGroup.objects.filter(key=group_key(of.name), memberships__user_id=user_id)
            .values_list("pk", "name")
            .first()
        )
        if group is None:
            raise not_member(of.name)
        return Conversation(f"group:{group[0]}", Address("group", group[1]), group_id=group[0])
    return Conversation("all", Address("all"))


def member_group_here(
    name: str, *, known: Mapping[str, tuple[int, str]], member_of: Container[int]
) -> tuple[int, str]:
    """(id, spelling) of a group the user is in, from a worker's memory; `not_member` if not.

    For typing, which must not touch the database: `known` is the groups this
    worker has seen by `group_key`, `member_of` the user's groups in the hub's
    index. A group the worker has not seen has no member on it.
    """
    group = known.get(group_key(name))
    if group is None or group[0] not in member_of:
        raise not_member(name)
    return group
