"""Group read receipts, at most one per reader and group per second; the latest wins."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any

# Seconds between two receipts of one reader in one group.
RECEIPT_INTERVAL = 1.0

Send = Callable[[int, dict[str, Any], int], Coroutine[Any, Any, None]]


class ReceiptThrottle:
    """Sends a group receipt at once, or at the end of the interval with the newest id then.

    Per worker: a reader's sockets on one worker share the interval.
    """

    def __init__(self, send: Send) -> None:
        self._send = send  # (group id, event, reader id)
        self._sent_at: dict[tuple[int, int], float] = {}
        self._waiting: dict[tuple[int, int], dict[str, Any]] = {}

    async def receipt(self, *, reader_id: int, group_id: int, event: dict[str, Any]) -> None:
        key = (reader_id, group_id)
        waiting = self._waiting.get(key)
        if waiting is not None:
            if event["id"] > waiting["id"]:
                self._waiting[key] = event
            return
        now = time.monotonic()
        wait = self._sent_at.get(key, 0.0) + RECEIPT_INTERVAL - now
        if wait <= 0:
            self._forget_old(now)
            self._sent_at[key] = now
            await self._send(group_id, event, reader_id)
            return
        self._waiting[key] = event
        asyncio.get_running_loop().call_later(wait, self._send_later, key)

    def _send_later(self, key: tuple[int, int]) -> None:
        event = self._waiting.pop(key)
        self._sent_at[key] = time.monotonic()
        asyncio.get_running_loop().create_task(self._send(key[1], event, key[0]))

    def _forget_old(self, now: float) -> None:
        if len(self._sent_at) > 10_000:
            self._sent_at = {
                key: at for key, at in self._sent_at.items() if at > now - RECEIPT_INTERVAL
            }
