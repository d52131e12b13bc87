"""The workers as a group, for the admin: who heartbeats, for how long, with how many sockets.

Read from the presence records in Redis that workers write with each
heartbeat (`chat.presence`). A worker silent for longer than
CHAT_PRESENCE_TIMEOUT is left out: it is dead, and about to be reaped.
Without Redis there is one worker, this process.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from typing import cast

import redis
from django.conf import settings
from django.db.models import Count

from chat.models import Connection
from chat.presence import PROCESS_STARTED
from chat.version import VERSION


@dataclass(frozen=True)
class WorkerRow:
    worker: str
    heartbeat_age: float
    open_sockets: int
    uptime: float | None
    version: str


def live_workers() -> list[WorkerRow]:
    """Every live worker, by name, from the presence records and the connection mirror."""
    now = time.time()
    sockets = dict(
        Connection.objects.values_list("worker").annotate(n=Count("id")).values_list("worker", "n")
    )
    if not settings.REDIS_URL:
        worker = next(iter(sockets), f"{socket.gethostname()}-{os.getpid()}")
        return [WorkerRow(worker, 0.0, sockets.get(worker, 0), now - PROCESS_STARTED, VERSION)]
    prefix = f"{settings.REDIS_PREFIX}:presence:"
    client = redis.Redis.from_url(settings.REDIS_URL, decode_responses=True)
    try:
        beats = cast(
            list[tuple[str, float]],
            client.zrangebyscore(
                f"{prefix}workers", now - settings.CHAT_PRESENCE_TIMEOUT, "+inf", withscores=True
            ),
        )
        infos = cast(
            list[str | None],
            client.mget([f"{prefix}info:{worker}" for worker, _ in beats]) if beats else [],
        )
    finally:
        client.close()
    rows = []
    for (worker, beat), raw in zip(beats, infos, strict=True):
        info = json.loads(raw) if raw else {}
        started = float(info["started"]) if info.get("started") else None
        rows.append(
            WorkerRow(
                worker=worker,
                heartbeat_age=max(0.0, now - beat),
                open_sockets=sockets.get(worker, 0),
                uptime=now - started if started else None,
                version=str(info.get("version", "")),
            )
        )
    return sorted(rows, key=lambda row: row.worker)
