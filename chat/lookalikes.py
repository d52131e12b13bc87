"""Look-alike user names: Unicode TR39 confusable skeletons, computed by ICU.

Two names whose skeletons are equal read the same on screen (`alice` with a
Cyrillic small a, U+0430, in place of the Latin one), so a new name whose
skeleton equals an existing user's, or that looks like the guest prefix, is
refused at sign-up. The skeleton is ICU's own (`SpoofChecker.getSkeleton`), not a table of our own.
"""

from __future__ import annotations

from collections.abc import Iterable

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


def lookalike_of(name: str, existing: Iterable[str]) -> str | None:
    """The first of `existing` that `name` can be mistaken for, if any."""
    wanted = skeletons(name)
    for other in existing:
        if wanted & skeletons(other):
            return other
    return None
