"""The worker registry: which workers are alive, their layer channels and groups, their age.

Each worker heartbeats here with its layer channel and the layer groups that
channel is in; a worker silent for longer than allowed is dead, and whoever
finds it takes its channel out of those groups (channels_redis would keep it
there until `group_expiry`) and drops its sockets from presence
(`chat.delivery.maintenance`). The admin's Workers page reads the live ones
(`chat.workers`).

Without Redis there is one worker, so a worker that starts owns everything:
what an earlier process left in the database (a `kill -9` leaves its rows)
is stale (`owns_everything`). On Redis the keys are those the presence store used
before the registry was its own module, so that workers of both versions
reap each other during a rolling restart.
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import cast

import redis.asyncio as aioredis

from chat.version import VERSION

PROCESS_STARTED = time.time()


@dataclass(frozen=True, slots=True)
class DeadWorker:
    """A worker found silent: its layer channel and the layer groups it was in."""

    worker: str
    channel: str
    layer_groups: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class LiveWorker:
    """A worker that heartbeated within the timeout, for the Workers page."""

    worker: str
    heartbeat: float
    started: float | None
    version: str


class WorkerRegistry(ABC):
    # True for a registry of one process: a worker starting owns every row.
    owns_everything = False

    @abstractmethod
    async def heartbeat(
        self, *, worker: str, channel: str = "", layer_groups: Iterable[str] = ()
    ) -> bool:
        """Mark the worker alive and record its layer channel and groups.

        False when the registry did not know the worker (new, reaped, or state lost).
        """

    @abstractmethod
    async def note_layer_groups(self, *, worker: str, layer_groups: Iterable[str]) -> None:
        """Record layer groups the worker's channel joined since its last heartbeat."""

    @abstractmethod
    async def dead(self, *, max_silence: float) -> list[DeadWorker]:
        """Workers silent for longer than `max_silence` seconds."""

    @abstractmethod
    async def forget(self, *, worker: str) -> None:
        """Remove a worker (reaped, or stopping)."""

    @abstractmethod
    async def live(self, *, max_silence: float) -> list[LiveWorker]:
        """Workers heartbeating within `max_silence` seconds, by name."""


# A process's in-memory registry, shared by its event loops: the admin reads
# it from a request's thread, the hub writes it from the server's loop.
_beats: dict[str, float] = {}
_layer: dict[str, tuple[str, list[str]]] = {}


def forget_memory_registry() -> None:
    """Forget every worker of this process (tests start from a fresh state)."""
    _beats.clear()
    _layer.clear()


class MemoryWorkerRegistry(WorkerRegistry):
    """The registry of one process, without Redis."""

    owns_everything = True

    async def heartbeat(
        self, *, worker: str, channel: str = "", layer_groups: Iterable[str] = ()
    ) -> bool:
        known = worker in _beats
        _beats[worker] = time.time()
        _layer[worker] = (channel, sorted(layer_groups))
        return known

    async def note_layer_groups(self, *, worker: str, layer_groups: Iterable[str]) -> None:
        channel, groups = _layer.get(worker, ("", []))
        _layer[worker] = (channel, sorted({*groups, *layer_groups}))

    async def dead(self, *, max_silence: float) -> list[DeadWorker]:
        deadline = time.time() - max_silence
        found = []
        for worker, beat in list(_beats.items()):
            if beat < deadline:
                channel, groups = _layer.get(worker, ("", []))
                found.append(DeadWorker(worker, channel, groups))
        return found

    async def forget(self, *, worker: str) -> None:
        _beats.pop(worker, None)
        _layer.pop(worker, None)

    async def live(self, *, max_silence: float) -> list[LiveWorker]:
        since = time.time() - max_silence
        return [
            LiveWorker(worker, beat, PROCESS_STARTED, VERSION)
            for worker, beat in sorted(_beats.items())
            if beat >= since
        ]


# Keys (below the deployment prefix):
#   presence:workers            ZSET worker -> last heartbeat (unix seconds)
#   presence:channel:<w>        STRING: the worker's layer channel
#   presence:layergroups:<w>    SET of the layer groups the worker's channel is in
#   presence:info:<w>           STRING: JSON {started, version}, for the Workers page
class RedisWorkerRegistry(WorkerRegistry):
    """The registry shared by every worker through Redis."""

    def __init__(self, prefix: str, *, redis: aioredis.Redis, info_seconds: int) -> None:
        self.prefix = f"{prefix}presence:"
        self.redis = redis
        # The info key outlives a dead worker by this much, then expires.
        self.info_seconds = info_seconds
        self._workers_key = f"{self.prefix}workers"

    async def heartbeat(
        self, *, worker: str, channel: str = "", layer_groups: Iterable[str] = ()
    ) -> bool:
        groups = list(layer_groups)
        groups_key = f"{self.prefix}layergroups:{worker}"
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zadd(self._workers_key, {worker: time.time()})
            pipe.set(f"{self.prefix}channel:{worker}", channel)
            pipe.set(
                f"{self.prefix}info:{worker}",
                json.dumps({"started": PROCESS_STARTED, "version": VERSION}),
                ex=self.info_seconds,
            )
            pipe.delete(groups_key)
            if groups:
                pipe.sadd(groups_key, *groups)
            results = await pipe.execute()
        return bool(results[0] == 0)

    async def note_layer_groups(self, *, worker: str, layer_groups: Iterable[str]) -> None:
        groups = list(layer_groups)
        if groups:
            await self.redis.sadd(f"{self.prefix}layergroups:{worker}", *groups)

    async def dead(self, *, max_silence: float) -> list[DeadWorker]:
        redis = self.redis
        found = []
        for raw in await redis.zrangebyscore(self._workers_key, "-inf", time.time() - max_silence):
            worker = str(raw)
            channel = await redis.get(f"{self.prefix}channel:{worker}")
            groups = await redis.smembers(f"{self.prefix}layergroups:{worker}") if channel else ()
            found.append(DeadWorker(worker, str(channel or ""), sorted(str(g) for g in groups)))
        return found

    async def forget(self, *, worker: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(f"{self.prefix}channel:{worker}", f"{self.prefix}layergroups:{worker}")
            pipe.zrem(self._workers_key, worker)
            await pipe.execute()

    async def live(self, *, max_silence: float) -> list[LiveWorker]:
        redis = self.redis
        beats = cast(
            list[tuple[str, float]],
            await redis.zrangebyscore(
                self._workers_key, time.time() - max_silence, "+inf", withscores=True
            ),
        )
        if not beats:
            return []
        infos = await redis.mget([f"{self.prefix}info:{worker}" for worker, _ in beats])
        found = []
        for (worker, beat), raw in zip(beats, infos, strict=True):
            info = json.loads(raw) if raw else {}
            started = float(info["started"]) if info.get("started") else None
            version = str(info.get("version", ""))
            found.append(LiveWorker(str(worker), float(beat), started, version))
        return sorted(found, key=lambda row: row.worker)
