"""Joins that arrive together, stored in one transaction (issue 29).

A join commits before its `joined` reply (the membership must survive a crash
of the worker and of Redis), and `chat.groups.group_join` does that with its
own transaction: several statements and a commit, every one a round trip on
Channels' single database thread. When sockets open in a burst (a morning
rush, a worker's restart) their joins queue one behind another there.
`group_join_many` stores a burst's joins of groups that exist with a fixed
number of statements and one commit; a `Coalescer` in front of it
(`chat.worker`) hands it whatever arrived while the previous batch was in the
database, so at rest a join still goes alone and at once.

Everything else goes through `group_join` one at a time, after the batch: a
join that would make a group (its name is checked for look-alikes there), a
join of a private group by someone not in it (refused there), and
the joins of a user the batch would take past `CHAT_GROUPS_PER_USER` (refused
there with `too_many_groups`). A batch that meets a concurrent change (the
group removed when its last member left, the same membership made by another
worker) fails as a whole with `IntegrityError`; the `Coalescer` then runs
each join alone, through `group_join`, which retries those races.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import Count

from chat.groups import MembershipChange, group_join
from chat.models import ChatGroup, Membership, group_key
from chat.protocol import ChatError


@dataclass(frozen=True, slots=True)
class JoinRequest:
    user: User
    # Validated by `chat.protocol` (its `Join` command).
    name: str


def group_join_many(requests: list[JoinRequest]) -> list[MembershipChange | ChatError]:
    """`group_join` of each request, in order: its change, or the `ChatError` it raised.

    Answers as `group_join` would had the requests run one after another: a
    second join of the same user and group in the batch is `changed=False`.
    """
    if len(requests) == 1:
        return each_alone(requests)
    keys = [group_key(r.name) for r in requests]
    cap = settings.CHAT_GROUPS_PER_USER
    with transaction.atomic():
        groups = {g.key: g for g in ChatGroup.objects.filter(key__in=set(keys))}
        user_ids = sorted({r.user.pk for r in requests})
        if cap:
            # As `add_membership` does: no other join of these users passes the
            # cap meanwhile (PostgreSQL). In pk order, so batches never deadlock.
            users = get_user_model()._default_manager
            list(users.select_for_update().filter(pk__in=user_ids).order_by("pk").values("pk"))
        existing = set(
            Membership.objects.filter(
                group_id__in=[g.pk for g in groups.values()], user_id__in=user_ids
            ).values_list("group_id", "user_id")
        )
        pairs = [
            (groups[key].pk, request.user.pk) if key in groups else None
            for key, request in zip(keys, requests, strict=True)
        ]
        # A private group's non-member is refused by `group_join` (`invite_only`).
        batched = [
            pair is not None and (pair in existing or not groups[key].private)
            for key, pair in zip(keys, pairs, strict=True)
        ]
        fresh = list(
            dict.fromkeys(
                p
                for p, b in zip(pairs, batched, strict=True)
                if b and p is not None and p not in existing
            )
        )
        if cap and fresh:
            held = dict(
                Membership.objects.filter(user_id__in={u for _, u in fresh})
                .values("user_id")
                .annotate(n=Count("id"))
                .values_list("user_id", "n")
            )
            adding = Counter(u for _, u in fresh)
            over = {u for u, n in adding.items() if held.get(u, 0) + n > cap}
            if over:
                # group_join refuses them one by one, at the cap.
                batched = [
                    b and r.user.pk not in over for b, r in zip(batched, requests, strict=True)
                ]
                fresh = [(g, u) for g, u in fresh if u not in over]
        Membership.objects.bulk_create([Membership(group_id=g, user_id=u) for g, u in fresh])
    answers: list[MembershipChange | ChatError] = []
    answered = set(existing)
    alone = [r for r, b in zip(requests, batched, strict=True) if not b]
    separately = iter(each_alone(alone))
    for request, key, pair, in_batch in zip(requests, keys, pairs, batched, strict=True):
        if not in_batch or pair is None:
            answers.append(next(separately))
            continue
        group = groups[key]
        answers.append(
            MembershipChange(
                group.pk,
                group.name,
                request.user.pk,
                request.user.get_username(),
                pair not in answered,
                private=group.private,
            )
        )
        answered.add(pair)
    return answers


def each_alone(requests: list[JoinRequest]) -> list[MembershipChange | ChatError]:
    """`group_join` of each request on its own (a refusal answers only its own)."""
    answers: list[MembershipChange | ChatError] = []
    for request in requests:
        try:
            answers.append(group_join(user=request.user, name=request.name))
        except ChatError as refused:
            answers.append(refused)
    return answers
