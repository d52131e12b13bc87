"""Group membership: join, leave, list. Names are validated in `chat.protocol`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.db import IntegrityError, connection, transaction
from django.db.models import CharField, OuterRef, Subquery, Value
from django.db.models.functions import Cast, Coalesce, Concat

from chat.audience import not_member
from chat.lookalikes import new_group_name_refusal
from chat.models import ChatGroup, Membership, Message, ReadPosition, group_key
from chat.protocol import BAD_GROUP, INVITE_ONLY, LAST_OWNER, TOO_MANY_GROUPS, ChatError
from chat.revocation import ending_announced_by_caller


@dataclass(frozen=True, slots=True)
class MembershipChange:
    group_id: int
    group: str
    user_id: int
    username: str
    # False when the user was already a member (join) - nobody else is told.
    changed: bool
    # True when this join brought the group into being.
    created: bool = False
    # Protocol 1.2: the group is private (`chat.group_roles`).
    private: bool = False
    # Protocol 1.2: the member who became owner when its last owner left.
    new_owner: str | None = None


def group_join(*, user: User, name: str) -> MembershipChange:
    """Make the user a member, creating the group on first join.

    Names match ignoring case; a group created here keeps this spelling, is
    public, and has the user as its owner. A private group is joined only by
    its members (a repeat: `changed` False); anyone else gets `invite_only`.
    """
    if (
        at_group_cap(user.pk)
        and not Membership.objects.filter(user_id=user.pk, group__key=group_key(name)).exists()
    ):
        # Refused before a new group is made for it.
        raise too_many_groups()
    while True:
        group, made = _group_named(name)
        if group.private:
            if not Membership.objects.filter(group=group, user_id=user.pk).exists():
                raise invite_only(group.name)
            created = False
            break
        try:
            role = Membership.Role.OWNER if made else Membership.Role.MEMBER
            created = add_membership(group_id=group.pk, user_id=user.pk, role=role)
            break
        except ChatError:
            if made:
                remove_if_empty(group.pk)
            raise
        except IntegrityError:
            if ChatGroup.objects.filter(pk=group.pk).exists():
                # Two sockets of the same user joined at the same moment.
                created = False
                break
            # Its last member left, and it was removed, while this join ran.
    return MembershipChange(
        group.pk,
        group.name,
        user.pk,
        user.get_username(),
        created,
        created=made and created,
        private=group.private,
    )


def invite_only(name: str) -> ChatError:
    return ChatError(INVITE_ONLY, f"group {name!r} is private: its owners and admins invite")


def add_membership(*, group_id: int, user_id: int, role: str = Membership.Role.MEMBER) -> bool:
    """Make the user a member of the group; False if they were one already.

    The one place a membership is added, so every way of adding one (`join`,
    and from protocol 1.2 `create` and invitations) is held to
    `CHAT_GROUPS_PER_USER`: past it, `too_many_groups`. The user's row is
    locked meanwhile (PostgreSQL), so that joins arriving together cannot pass
    the cap between them; an `IntegrityError` means the group went away.
    """
    with transaction.atomic():
        if settings.CHAT_GROUPS_PER_USER:
            users = get_user_model()._default_manager
            list(users.select_for_update().filter(pk=user_id).values_list("pk"))
        if Membership.objects.filter(group_id=group_id, user_id=user_id).exists():
            return False
        if at_group_cap(user_id):
            raise too_many_groups()
        Membership.objects.create(group_id=group_id, user_id=user_id, role=role)
        return True


def at_group_cap(user_id: int) -> bool:
    cap = settings.CHAT_GROUPS_PER_USER
    return bool(cap) and Membership.objects.filter(user_id=user_id).count() >= cap


def too_many_groups() -> ChatError:
    cap = settings.CHAT_GROUPS_PER_USER
    return ChatError(TOO_MANY_GROUPS, f"you are in {cap} groups, the most one may be in")


def _group_named(name: str) -> tuple[ChatGroup, bool]:
    """The group called `name` (any case), made if there is none: (group, made).

    A new name is `bad_group` if it holds invisible characters or looks like an
    existing group's (chat.lookalikes); the unique skeleton settles two such
    names created at the same moment.
    """
    key = group_key(name)
    while True:
        group = ChatGroup.objects.filter(key=key).first()
        if group is not None:
            return group, False
        refused = new_group_name_refusal(name)
        if refused:
            raise ChatError(BAD_GROUP, refused)
        try:
            with transaction.atomic():
                return ChatGroup.objects.create(name=name), True
        except IntegrityError:
            pass  # made a moment ago, by this name or a look-alike: look again


def group_leave(*, user: User, name: str) -> MembershipChange:
    """End a membership; `not_member` if there was none.

    The last owner leaving while others remain (1.2): of a group made with
    `create`, `last_owner`; of a group made by a `join`, the member who joined
    first becomes its owner (`new_owner`), so that a client of protocol 1.0,
    which knows nothing of owners, can always leave.

    A group left with no members and no messages is removed: otherwise anyone
    could fill the table with groups by joining and leaving made-up names.
    """
    group = ChatGroup.objects.filter(key=group_key(name)).first()
    deleted = 0
    new_owner = None
    if group is not None:
        with transaction.atomic():
            lock_group(group.pk)
            role = (
                Membership.objects.filter(group=group, user_id=user.pk)
                .values_list("role", flat=True)
                .first()
            )
            if role == Membership.Role.OWNER:
                if group.owners_hand_over:
                    refuse_last_owner(group.pk, user.pk, group.name, leaving=True)
                else:
                    new_owner = pass_ownership_on(group.pk, user.pk)
            # The socket that left tells the others itself, before its reply.
            with ending_announced_by_caller():
                deleted, _ = Membership.objects.filter(group=group, user_id=user.pk).delete()
    if not deleted:
        raise not_member(name)
    assert group is not None
    remove_if_empty(group.pk)
    return MembershipChange(
        group.pk,
        group.name,
        user.pk,
        user.get_username(),
        True,
        private=group.private,
        new_owner=new_owner,
    )


def pass_ownership_on(group_id: int, owner_id: int) -> str | None:
    """Make the member who joined first the owner, if `owner_id` is the group's last
    owner and others remain; that member's username, or None when nothing changed."""
    others = Membership.objects.filter(group_id=group_id).exclude(user_id=owner_id)
    if others.filter(role=Membership.Role.OWNER).exists():
        return None
    heir = others.order_by("joined_at", "id").select_related("user").first()
    if heir is None:
        return None
    Membership.objects.filter(pk=heir.pk).update(role=Membership.Role.OWNER)
    return str(heir.user.get_username())


def lock_group(group_id: int) -> None:
    """Hold the group's row until the transaction ends (PostgreSQL), so that two
    changes of its owners (two owners leaving at once, say) run one after the other.

    `FOR NO KEY UPDATE`: a message or membership stored in the group meanwhile
    (its foreign key takes `FOR KEY SHARE`) does not wait for it.
    """
    list(ChatGroup.objects.select_for_update(no_key=True).filter(pk=group_id).values_list("pk"))


def refuse_last_owner(group_id: int, user_id: int, name: str, *, leaving: bool) -> None:
    """`last_owner` if `user_id` is the group's only owner and would stop being one.

    An owner who is the group's only member may leave it (it then goes as any
    group does); no owner may give up the role with no other owner left.
    """
    others = Membership.objects.filter(group_id=group_id).exclude(user_id=user_id)
    if others.filter(role=Membership.Role.OWNER).exists():
        return
    if leaving and not others.exists():
        return
    raise ChatError(
        LAST_OWNER,
        f"you are the last owner of group {name!r}: make another member an owner first",
    )


def remove_if_empty(group_id: int) -> bool:
    """Delete the group if it has no members and no messages; True if it did.

    One statement, so a join or a message arriving at the same moment either
    keeps the group or fails on its foreign key (and `group_join` retries).
    """
    with connection.cursor() as cursor:
        cursor.execute(_remove_if_empty_sql(), [group_id, group_id, group_id])
        return bool(cursor.rowcount)


def _remove_if_empty_sql() -> str:
    quote = connection.ops.quote_name
    return (
        f"DELETE FROM {quote(ChatGroup._meta.db_table)} WHERE id = %s"
        f" AND NOT EXISTS (SELECT 1 FROM {quote(Membership._meta.db_table)}"
        " WHERE group_id = %s)"
        f" AND NOT EXISTS (SELECT 1 FROM {quote(Message._meta.db_table)} WHERE group_id = %s)"
    )


def group_member_names(*, user: User, name: str) -> list[str]:
    """Usernames of a group's members; only members may ask."""
    return group_members(user=user, name=name)[1]


def group_members(*, user: User, name: str) -> tuple[str, list[str]]:
    """The group's own spelling and its members' usernames; only members may ask."""
    members = list(
        Membership.objects.filter(group__key=group_key(name))
        .order_by("user__username")
        .values_list("user_id", "user__username", "group__name")
    )
    if not any(user_id == user.pk for user_id, _, _ in members):
        raise not_member(name)
    return members[0][2], [username for _, username, _ in members]


@dataclass(frozen=True, slots=True)
class MemberRead:
    """A member as `members` lists them: how far they have read, and their role (1.2)."""

    read_id: int
    role: str


def group_members_read(*, user: User, name: str) -> tuple[str, list[str], dict[str, MemberRead]]:
    """`group_members` with how far each member has read the group (0: not yet)
    and their role, in one query.

    What a member's read receipts show after a reload: `members` carries them.
    """
    position = ReadPosition.objects.filter(
        user_id=OuterRef("user_id"),
        conversation=Concat(Value("group:"), Cast(OuterRef("group_id"), CharField())),
    ).values("message_id")[:1]
    members = list(
        Membership.objects.filter(group__key=group_key(name))
        .order_by("user__username")
        .annotate(read_id=Coalesce(Subquery(position), Value(0)))
        .values_list("user_id", "user__username", "group__name", "read_id", "role")
    )
    if not any(user_id == user.pk for user_id, _, _, _, _ in members):
        raise not_member(name)
    names = [username for _, username, _, _, _ in members]
    return (
        members[0][2],
        names,
        {username: MemberRead(read, role) for _, username, _, read, role in members},
    )


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
