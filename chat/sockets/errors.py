"""A socket's error budget: too many errors a minute and it is closed (1008)."""

from __future__ import annotations

import time
from collections import deque

from django.conf import settings

# Seconds over which errors are counted against CHAT_MAX_ERRORS_PER_MINUTE.
_ERROR_WINDOW = 60.0


class ErrorBudget:
    """The times of one socket's recent errors; made by its first error, as most never err."""

    __slots__ = ("_times",)

    def __init__(self) -> None:
        self._times: deque[float] = deque()

    def spent(self) -> bool:
        """Count an error now; True once the last minute holds more than allowed."""
        now = time.monotonic()
        times = self._times
        times.append(now)
        while times and times[0] < now - _ERROR_WINDOW:
            times.popleft()
        return len(times) > settings.CHAT_MAX_ERRORS_PER_MINUTE
