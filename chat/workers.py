"""The workers as a group, for the admin: who heartbeats, for how long, with how many sockets.

Read through the worker registry (`chat.registry`) and the connection mirror.
A worker silent for longer than CHAT_PRESENCE_TIMEOUT is left out: it is
dead, and about to be reaped. Without Redis there is one worker, this
process: before its first socket it has not heartbeated, and is listed anyway.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from dataclasses import dataclass

from asgiref.sync import async_to_sync
from django.conf import settings
from django.db.models import Count

from chat.models import Connection
from chat.registry import PROCESS_STARTED, LiveWorker
from chat.upstream.twisted import running_reactor_loop
from chat.version import VERSION
from chat.worker import Worker, current_worker


@dataclass(frozen=True)
class WorkerRow:
    worker: str
    heartbeat_age: float
    open_sockets: int
    uptime: float | None
    version: str


async def _live(max_silence: float) -> list[LiveWorker]:
    """Under daphne, read on the server's loop through its worker's registry; elsewhere
    (a test, WSGI) `async_to_sync` made a loop for this call, so a worker for it alone."""
    if running_reactor_loop() is asyncio.get_running_loop():
        return await current_worker().registry.live(max_silence=max_silence)
    worker = Worker()
    try:
        return await worker.registry.live(max_silence=max_silence)
    finally:
        await worker.close_redis()


def live_workers() -> list[WorkerRow]:
    """Every live worker, by name, from the registry and the connection mirror."""
    now = time.time()
    sockets = dict(
        Connection.objects.values_list("worker").annotate(n=Count("id")).values_list("worker", "n")
    )
    live = async_to_sync(_live)(settings.CHAT_PRESENCE_TIMEOUT)
    if not live and not settings.REDIS_URL:
        live = [LiveWorker(f"{socket.gethostname()}-{os.getpid()}", now, PROCESS_STARTED, VERSION)]
    return [
        WorkerRow(
            worker=row.worker,
            heartbeat_age=max(0.0, now - row.heartbeat),
            open_sockets=sockets.get(row.worker, 0),
            uptime=now - row.started if row.started else None,
            version=row.version,
        )
        for row in live
    ]
