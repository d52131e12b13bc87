"""Private groups and roles (protocol 1.2): creating, inviting, removing, setting roles.

The rules, apart from the socket and the events (`chat.actions.group_admin`
says who is told):

- `create` makes a group, public or private, with its creator as `owner`;
  a name taken in any case is `group_exists`.
- `invite`: an owner or admin adds a user at once; in a public group any
  member may. The invited user is held to `CHAT_GROUPS_PER_USER`
  (`chat.groups.add_membership`, the one place a membership is added).
- `remove`: an owner or admin removes a member; only an owner removes an
  admin or another owner.
- `role`: an owner sets another member's role; the last owner never gives
  it up (`last_owner`, as for `leave`: `chat.groups.refuse_last_owner`).

A member who is not allowed gets `forbidden`; someone not in the group gets
`not_member`, whether or not it exists or is private, so nothing here tells
a stranger about a private group.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction

from chat.audience import no_such_user, not_member
from chat.groups import (
    MembershipChange,
    add_membership,
    at_group_cap,
    lock_group,
    refuse_last_owner,
    too_many_groups,
)
from chat.lookalikes import new_group_name_refusal
from chat.models import ChatGroup, Membership, group_key
from chat.protocol import (
    BAD_GROUP,
    FORBIDDEN,
    GROUP_EXISTS,
    NOT_MEMBER,
    TOO_MANY_GROUPS,
    ChatError,
)
from chat.revocation import ending_announced_by_caller

OWNER = Membership.Role.OWNER
ADMIN = Membership.Role.ADMIN
MEMBER = Membership.Role.MEMBER


@dataclass(frozen=True, slots=True)
class MemberChange:
    """What `invite`, `remove` or `role` did to one member of a group."""

    group_id: int
    group: str
    private: bool
    user_id: int
    username: str
    # False when nothing changed (already a member, the same role): nobody is told.
    changed: bool
    role: str = MEMBER


def role_event(*, group: str, user: str, role: str, by: str) -> dict[str, object]:
    """The `role` event, told alike by the command, the admin and a leaving last owner."""
    return {"type": "role", "group": group, "user": user, "role": role, "by": by}


def group_exists(name: str) -> ChatError:
    return ChatError(GROUP_EXISTS, f"a group named {name!r} exists already (names ignore case)")


def forbidden(why: str) -> ChatError:
    return ChatError(FORBIDDEN, why)


def group_create(*, user: User, name: str, private: bool) -> MembershipChange:
    """A new group named `name`, the user its owner; `group_exists` if the name is taken."""
    key = group_key(name)
    if ChatGroup.objects.filter(key=key).exists():
        raise group_exists(name)
    if at_group_cap(user.pk):
        raise too_many_groups()
    refused = new_group_name_refusal(name)
    if refused:
        raise ChatError(BAD_GROUP, refused)
    try:
        with transaction.atomic():
            group = ChatGroup.objects.create(name=name, private=private, owners_hand_over=True)
            add_membership(group_id=group.pk, user_id=user.pk, role=OWNER)
    except IntegrityError:
        # Made a moment ago, by this name or by a look-alike.
        if ChatGroup.objects.filter(key=key).exists():
            raise group_exists(name) from None
        raise ChatError(BAD_GROUP, new_group_name_refusal(name) or "try another name") from None
    return MembershipChange(
        group.pk, group.name, user.pk, user.get_username(), True, created=True, private=private
    )


def group_invite(*, actor: User, name: str, username: str) -> MemberChange:
    """Add `username` to the group at once (as a `member`)."""
    mine = _membership_of(actor, name)
    group = mine.group
    if group.private and mine.role == MEMBER:
        raise forbidden(f"only owners and admins invite to the private group {group.name!r}")
    invited = _active_user(username)
    try:
        added = add_membership(group_id=group.pk, user_id=invited.pk)
    except ChatError as refused:
        if refused.code != TOO_MANY_GROUPS:
            raise
        raise ChatError(
            TOO_MANY_GROUPS, f"{invited.get_username()} is in as many groups as one may be"
        ) from None
    except IntegrityError:
        # The group went away meanwhile (its last member left).
        raise not_member(name) from None
    return MemberChange(
        group.pk, group.name, group.private, invited.pk, invited.get_username(), added
    )


def group_remove(*, actor: User, name: str, username: str) -> MemberChange:
    """End `username`'s membership; the caller announces it (`left` with `by`)."""
    with transaction.atomic():
        mine = _membership_of(actor, name, lock=True)
        group = mine.group
        if username == actor.get_username():
            raise forbidden("to leave a group, use leave")
        if mine.role == MEMBER:
            raise forbidden(f"only owners and admins remove members of {group.name!r}")
        theirs = _member_named(group, username)
        if theirs.role != MEMBER and mine.role != OWNER:
            raise forbidden(f"only an owner removes an admin or an owner of {group.name!r}")
        with ending_announced_by_caller():
            Membership.objects.filter(pk=theirs.pk).delete()
    return MemberChange(
        group.pk, group.name, group.private, theirs.user_id, username, True, theirs.role
    )


def group_set_role(*, actor: User, name: str, username: str, role: str) -> MemberChange:
    """Set a member's role; only an owner may, and the last owner keeps theirs."""
    with transaction.atomic():
        mine = _membership_of(actor, name, lock=True)
        group = mine.group
        if mine.role != OWNER:
            raise forbidden(f"only an owner sets roles in {group.name!r}")
        theirs = _member_named(group, username)
        changed = theirs.role != role
        if changed and theirs.role == OWNER:
            refuse_last_owner(group.pk, theirs.user_id, group.name, leaving=False)
        if changed:
            Membership.objects.filter(pk=theirs.pk).update(role=role)
    return MemberChange(
        group.pk, group.name, group.private, theirs.user_id, username, changed, role
    )


def _membership_of(actor: User, name: str, *, lock: bool = False) -> Membership:
    """The actor's membership of the group, with the group; `not_member` if none."""
    if lock:
        group_id = (
            ChatGroup.objects.filter(key=group_key(name)).values_list("pk", flat=True).first()
        )
        if group_id is None:
            raise not_member(name)
        lock_group(group_id)
    mine = (
        Membership.objects.filter(group__key=group_key(name), user_id=actor.pk)
        .select_related("group")
        .first()
    )
    if mine is None:
        raise not_member(name)
    return mine


def _member_named(group: ChatGroup, username: str) -> Membership:
    """A member of `group` by username; `not_member` (naming them) if they are not one."""
    field = get_user_model().USERNAME_FIELD
    theirs = Membership.objects.filter(group=group, **{f"user__{field}": username}).first()
    if theirs is None:
        raise ChatError(NOT_MEMBER, f"{username!r} is not a member of group {group.name!r}")
    return theirs


def _active_user(username: str) -> User:
    users = get_user_model()._default_manager
    found = users.filter(**{get_user_model().USERNAME_FIELD: username}, is_active=True).first()
    if found is None:
        raise no_such_user(username)
    return found
