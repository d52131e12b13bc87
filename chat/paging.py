"""Lists of people (`who`, `members`) in pages, by name, within the reply's byte bound.

A list of names is small until it is not: with tens of thousands online, one
`who` would be a reply of megabytes. Each page is at most `limit` entries and
at most what fits in one reply frame; the client asks for the next with
`after` set to the reply's `next` (the last name listed). Names sort by code
point, the same on every worker and every database.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from typing import TypeVar

from chat.messaging import fit_in_bytes

T = TypeVar("T")


def names_page(names: Sequence[str], *, after: str | None, limit: int) -> tuple[list[str], bool]:
    """The sorted `names` after `after`, at most `limit`; and whether more follow."""
    ordered = sorted(names)
    start = bisect.bisect_right(ordered, after) if after is not None else 0
    page = ordered[start : start + limit]
    return page, start + len(page) < len(ordered)


def fit_page(
    entries: list[T], more: bool, *, max_bytes: int, name: Callable[[T], str]
) -> tuple[list[T], dict[str, object]]:
    """`entries` cut to `max_bytes` of JSON; the reply's `more` (and `next` when more follow)."""
    fitted = fit_in_bytes(entries, max_bytes)
    more = more or len(fitted) < len(entries)
    if more and fitted:
        return fitted, {"more": True, "next": name(fitted[-1])}
    return fitted, {"more": False}
