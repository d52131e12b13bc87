"""Look-alike user names: Unicode TR39 confusable skeletons, computed by ICU.

Two names whose skeletons are equal read the same on screen (`alice` with a
Cyrillic small a, U+0430, in place of the Latin one), so a new name whose
skeleton equals an existing user's, or that looks like the guest prefix, is
refused at sign-up. The skeleton is ICU's own (`SpoofChecker.getSkeleton`), not a table of our own.
"""

from __future__ import annotations

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
