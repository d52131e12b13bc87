"""Ways to ask whether a library still has what a reach needs."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any


def missing_attributes(owner: Any, *names: str) -> str | None:
    """ "X has no attribute a, b" for the names `owner` lacks; None if it has them all."""
    absent = [name for name in names if not hasattr(owner, name)]
    if not absent:
        return None
    return f"{_name(owner)} has no {', '.join(absent)}"


def missing_assignments(function: Callable[..., Any], *names: str) -> str | None:
    """The instance attributes that `function` (an `__init__`, say) no longer sets.

    For attributes that exist only on instances made while a connection
    runs: the source that sets them is what can be checked without one.
    """
    try:
        source = inspect.getsource(function)
    except (OSError, TypeError):
        return f"the source of {_name(function)} cannot be read"
    absent = [
        name for name in names if f"self.{name} =" not in source and f"self.{name}:" not in source
    ]
    if not absent:
        return None
    return f"{_name(function)} no longer sets {', '.join(absent)}"


def _name(owner: Any) -> str:
    module = str(getattr(owner, "__module__", None) or "")
    qualname = str(getattr(owner, "__qualname__", None) or repr(owner))
    return f"{module}.{qualname}" if module else qualname
