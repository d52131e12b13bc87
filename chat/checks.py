"""System checks: which fast paths (`chat.upstream`) are on with the installed libraries.

Django runs them for `manage.py check`, `runserver` and `migrate`; daphne runs
no checks, so `chatsite.asgi` calls `report_fast_paths` when a worker starts.
A fast path that is off is a Warning (`chat.W001`) naming what is missing and
what is used instead. All on is the normal case and the check says nothing
then (a `manage.py` command prints only a problem); a starting worker logs
the ones that are on as one INFO line, `chat.I001`.
"""

from __future__ import annotations

import logging
from typing import Any

from django.core import checks

from chat import upstream

logger = logging.getLogger(__name__)

FAST_PATHS_TAG = "chat_fast_paths"


@checks.register(FAST_PATHS_TAG)
def check_fast_paths(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    messages: list[checks.CheckMessage] = []
    for name in upstream.FAST_PATHS:
        problem = upstream.problem(name)
        if problem is not None:
            messages.append(
                checks.Warning(
                    f"fast path off: {name}: {problem}",
                    hint=f"Instead, {upstream.FALLBACKS[name]}. The installed library changed "
                    "what chat/upstream reaches for; see that module.",
                    id="chat.W001",
                )
            )
    return messages


def report_fast_paths() -> None:
    """Log which fast paths are on (INFO, `chat.I001`) and each that is off (WARNING)."""
    on = [name for name in upstream.FAST_PATHS if upstream.problem(name) is None]
    if on:
        logger.info("chat.I001: fast paths on: %s", "; ".join(on))
    for message in checks.run_checks(tags=[FAST_PATHS_TAG]):
        hint = f" ({message.hint})" if message.hint else ""
        logger.warning("%s: %s%s", message.id, message.msg, hint)
