"""Look-alike user names: Unicode TR39 confusable skeletons, computed by ICU.

Two names whose skeletons are equal read the same on screen (`alice` with a
Cyrillic small a, U+0430, in place of the Latin one), so a new name whose
skeleton equals an existing user's, or that looks like the guest prefix, is
refused at sign-up. The skeleton is ICU's own (`SpoofChecker.getSkeleton`), not a table of our own.
Group names are held to the same rule (`group_skeleton`), and may not hold
invisible (default-ignorable) characters at all.
"""

from __future__ import annotations

import unicodedata
from typing import Any

import icu

# uspoof_getSkeleton is safe to call from several threads on one checker.
_checker = icu.SpoofChecker()


def skeleton(text: str) -> str:
    """TR39 skeleton of `text`: equal skeletons mean the texts are confusable."""
    return str(_checker.getSkeleton(0, text))


def skeletons(name: str) -> set[str]:
    """The skeletons of `name` as written and case-folded (names are case-insensitive)."""
    return {skeleton(name), skeleton(name.casefold())}


def group_skeleton(name: str) -> str:
    """The one skeleton group names are compared by (`ChatGroup.skeleton`, unique).

    Group names are case-insensitive, so the skeleton is case-folded and taken
    again (TEAM in Cyrillic capitals skeletons to the Latin TEAM, the group `team`);
    compatibility forms first (NFKC), as ICU leaves some fullwidth letters be.
    """
    return skeleton(skeleton(unicodedata.normalize("NFKC", name)).casefold())


def default_ignorables(text: str) -> list[str]:
    """The default-ignorable code points in `text` (joiners, variation selectors, ...):
    drawn as nothing, so a name holding one looks like the name without."""
    return [
        char
        for char in text
        if icu.Char.hasBinaryProperty(char, icu.UProperty.DEFAULT_IGNORABLE_CODE_POINT)
    ]


def new_group_name_refusal(name: str, *, exclude_pk: int | None = None) -> str | None:
    """Why a group may not be given `name` (it is invisibly padded, or looks like
    another group's), or None. One indexed query."""
    from chat.models import ChatGroup, group_key

    hidden = default_ignorables(name)
    if hidden:
        codes = ", ".join(f"U+{ord(char):04X}" for char in dict.fromkeys(hidden))
        return f"group names may not hold invisible characters ({codes})"
    # A group of the same name in any case is that group, not a look-alike.
    alike = ChatGroup.objects.filter(skeleton=group_skeleton(name)).exclude(key=group_key(name))
    if exclude_pk is not None:
        alike = alike.exclude(pk=exclude_pk)
    other = alike.values_list("name", "private").first()
    if other is None:
        return None
    if other[1]:
        # A private group's name is told to nobody who did not name it (1.2).
        return f"{name!r} looks like the name of an existing group"
    return f"{name!r} looks like the existing group {other[0]!r}"


def looks_like_prefix(name: str, prefix: str) -> bool:
    prefix_skeleton = skeleton(prefix)
    return any(each.startswith(prefix_skeleton) for each in skeletons(name))


def lookalike_taken(name: str) -> bool:
    """Whether a registered user's name looks like `name` (one indexed query)."""
    from chat.models import NameSkeleton

    return NameSkeleton.objects.filter(skeleton__in=skeletons(name)).exists()


def name_skeletons_record(user: Any, *, replace: bool = True) -> None:
    """Store the skeletons of `user`'s name (not for guests), replacing older ones."""
    from chat.accounts import is_guest_name
    from chat.models import NameSkeleton

    if replace:
        NameSkeleton.objects.filter(user_id=user.pk).delete()
    if is_guest_name(user.username):
        return
    NameSkeleton.objects.bulk_create(
        NameSkeleton(user_id=user.pk, skeleton=each) for each in skeletons(user.username)
    )


def _record_on_save(sender: Any, instance: Any, created: bool, **kwargs: Any) -> None:
    update_fields = kwargs.get("update_fields")
    # A new guest costs no query; a login (update_fields=["last_login"]) none either.
    if created or update_fields is None or "username" in update_fields:
        name_skeletons_record(instance, replace=not created)


def connect_name_skeleton_signals() -> None:
    """Keep every user's name skeletons current, whoever creates or renames the user."""
    from django.contrib.auth import get_user_model
    from django.db.models.signals import post_save

    post_save.connect(
        _record_on_save, sender=get_user_model(), dispatch_uid="chat.lookalikes.record"
    )
