"""Group membership: join, leave, list. Names are validated in `chat.protocol`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from django.contrib.auth.models import User
from django.db import IntegrityError, transaction

from chat.models import ChatGroup, Membership
from chat.protocol import NOT_MEMBER, ChatError


@dataclass(frozen=True, slots=True)
class MembershipChange:
    group_id: int
    group: str
    user_id: int
    username: str
    # False when the user was already a member (join) - nobody else is told.
    changed: bool


def group_join(*, user: User, name: str) -> MembershipChange:
    """Make the user a member, creating the group on first join."""
    group, _ = ChatGroup.objects.get_or_create(name=name)
    try:
        with transaction.atomic():
            _, created = Membership.objects.get_or_create(group=group, user_id=user.pk)
    except IntegrityError:
        # Two sockets of the same user joined at the same moment.
        created = False
    return MembershipChange(group.pk, group.name, user.pk, user.get_username(), created)


def group_leave(*, user: User, name: str) -> MembershipChange:
    """End a membership; `not_member` if there was none."""
    deleted, _ = Membership.objects.filter(group__name=name, user_id=user.pk).delete()
    if not deleted:
        raise ChatError(NOT_MEMBER, f"you are not a member of group {name!r}")
    group = ChatGroup.objects.get(name=name)
    return MembershipChange(group.pk, group.name, user.pk, user.get_username(), True)


def group_member_names(*, user: User, name: str) -> list[str]:
    """Usernames of a group's members; only members may ask."""
    members = list(
        Membership.objects.filter(group__name=name)
        .order_by("user__username")
        .values_list("user_id", "user__username")
    )
    if not any(user_id == user.pk for user_id, _ in members):
        raise ChatError(NOT_MEMBER, f"you are not a member of group {name!r}")
    return [username for _, username in members]


def user_groups(*, user: User) -> list[tuple[int, str]]:
    """(id, name) of every group the user belongs to, by name."""
    return groups_of_users([user.pk])[user.pk]


def groups_of_users(user_ids: Sequence[int]) -> dict[int, list[tuple[int, str]]]:
    """`user_groups` of many users in one query (sockets opening together)."""
    answer: dict[int, list[tuple[int, str]]] = {user_id: [] for user_id in user_ids}
    rows = (
        Membership.objects.filter(user_id__in=set(user_ids))
        .order_by("group__name")
        .values_list("user_id", "group_id", "group__name")
    )
    for user_id, group_id, name in rows:
        answer[user_id].append((group_id, name))
    return answer
