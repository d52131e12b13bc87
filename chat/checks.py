"""System checks: which fast paths (`chat.upstream`) are on with the installed libraries.

Django runs them for `manage.py check`, `runserver` and `migrate`; daphne runs
no checks, so `chatsite.asgi` calls `report_fast_paths` when a worker starts.
A fast path that is off is a Warning (`chat.W001`) naming what is missing and
what is used instead; the ones that are on are listed in one Info
(`chat.I001`, which `SILENCED_SYSTEM_CHECKS` can silence).
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
    on = []
    for name in upstream.FAST_PATHS:
        problem = upstream.problem(name)
        if problem is None:
            on.append(name)
        else:
            messages.append(
                checks.Warning(
                    f"fast path off: {name}: {problem}",
                    hint=f"Instead, {upstream.FALLBACKS[name]}. The installed library changed "
                    "what chat/upstream reaches for; see that module.",
                    id="chat.W001",
                )
            )
    if on:
        messages.insert(0, checks.Info(f"fast paths on: {'; '.join(on)}", id="chat.I001"))
    return messages


def report_fast_paths() -> None:
    """Run the fast-path check and log what it says: INFO when on, WARNING when off."""
    for message in checks.run_checks(tags=[FAST_PATHS_TAG]):
        level = logging.WARNING if message.is_serious(checks.WARNING) else logging.INFO
        hint = f" ({message.hint})" if message.hint else ""
        logger.log(level, "%s: %s%s", message.id, message.msg, hint)
