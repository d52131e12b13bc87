"""Joins that arrive together, stored in one transaction (issue 29).

A join commits before its `joined` reply (the membership must survive a crash
of the worker and of Redis), and `chat.groups.group_join` does that with its
own transaction: two `get_or_create`s, a savepoint and a commit, every one a
round trip on Channels' single database thread. When sockets open in a burst
(a morning rush, a worker's restart) their joins queue one behind another
there. `group_join_many` stores a burst's joins with a fixed number of
statements and one commit; a `Coalescer` in front of it (`chat.worker`) hands
it whatever arrived while the previous batch was in the database, so at rest
a join still goes alone and at once.

A batch that meets a concurrent change (another worker creating the same group
or membership, or removing an emptied group) fails as a whole with
`IntegrityError`; the `Coalescer` then runs each join alone, through
`group_join`, which knows how to retry those races.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.contrib.auth.models import User
from django.db import transaction

from chat.groups import MembershipChange, group_join
from chat.models import ChatGroup, Membership, group_key


@dataclass(frozen=True, slots=True)
class JoinRequest:
    user: User
    # Validated by `chat.protocol` (its `Join` command).
    name: str


def group_join_many(requests: list[JoinRequest]) -> list[MembershipChange]:
    """`group_join` of each request, in order, in one transaction.

    Answers as `group_join` would had the requests run one after another:
    the first to join a group it creates gets `created`, a second join of
    the same user and group in the batch is `changed=False`.
    """
    if len(requests) == 1:
        only = requests[0]
        return [group_join(user=only.user, name=only.name)]
    spelling: dict[str, str] = {}
    for request in requests:
        spelling.setdefault(group_key(request.name), request.name)
    with transaction.atomic():
        groups = {g.key: g for g in ChatGroup.objects.filter(key__in=list(spelling))}
        new = [ChatGroup(name=name, key=key) for key, name in spelling.items() if key not in groups]
        # The primary keys come back from the INSERT (PostgreSQL, SQLite 3.35+).
        made = {g.key for g in ChatGroup.objects.bulk_create(new)}
        groups.update({g.key: g for g in new})
        pairs = [(groups[group_key(r.name)].pk, r.user.pk) for r in requests]
        existing = set(
            Membership.objects.filter(
                group_id__in={g for g, _ in pairs}, user_id__in={u for _, u in pairs}
            ).values_list("group_id", "user_id")
        )
        fresh = list(dict.fromkeys(pair for pair in pairs if pair not in existing))
        Membership.objects.bulk_create(
            [Membership(group_id=group_id, user_id=user_id) for group_id, user_id in fresh]
        )
    answered: set[tuple[int, int]] = set(existing)
    created_by: set[str] = set()
    changes = []
    for request, pair in zip(requests, pairs, strict=True):
        group = groups[group_key(request.name)]
        changed = pair not in answered
        answered.add(pair)
        # Like `group_join`: created is the join that brought the group into being.
        created = changed and group.key in made and group.key not in created_by
        if created:
            created_by.add(group.key)
        changes.append(
            MembershipChange(
                group.pk,
                group.name,
                request.user.pk,
                request.user.get_username(),
                changed,
                created=created,
            )
        )
    return changes
