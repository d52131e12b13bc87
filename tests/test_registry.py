"""chat.registry: the worker registry, one suite against memory and a real Redis.

With `chat.presence` it makes what reaping does (`chat.delivery.maintenance`):
the registry finds a worker dead, presence drops its sockets, the registry
forgets it.
"""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest

from chat import registry as registry_module
from chat.presence import MemoryPresenceStore, PresenceStore, RedisPresenceStore
from chat.redis_client import redis_connect
from chat.registry import MemoryWorkerRegistry, RedisWorkerRegistry, WorkerRegistry
from chat.version import VERSION
from chat.worker import current_worker, forget_workers
from tests.conftest import REDIS_URL, require_redis

SILENCE = 30.0


@pytest.fixture(params=["memory", "redis"])
def stores(request, settings) -> tuple[WorkerRegistry, PresenceStore]:
    if request.param == "memory":
        settings.REDIS_URL = ""
        forget_workers()
        return MemoryWorkerRegistry(), MemoryPresenceStore()
    require_redis()
    settings.REDIS_URL = REDIS_URL
    prefix = f"{request.getfixturevalue('redis_prefix')}:"
    # Clients of their own: this fixture runs outside the test's event loop.
    return (
        RedisWorkerRegistry(prefix, redis=redis_connect(REDIS_URL), info_seconds=61),
        RedisPresenceStore(prefix, redis=redis_connect(REDIS_URL)),
    )


@pytest.fixture
def long_ago(monkeypatch):
    """`with long_ago():` makes the registry's clock read an hour earlier."""

    class _Clock:
        def __init__(self) -> None:
            self._context = monkeypatch.context()

        def __enter__(self) -> None:
            patch = self._context.__enter__()
            fake = SimpleNamespace(time=lambda: time.time() - 3600)
            patch.setattr(registry_module, "time", fake)

        def __exit__(self, *exc) -> None:
            self._context.__exit__(*exc)

    return _Clock


async def reap(registry: WorkerRegistry, presence: PresenceStore) -> tuple[list[str], list[str]]:
    """What the maintenance loop does: the dead workers, and the users now offline."""
    dead = await registry.dead(max_silence=SILENCE)
    offline = []
    for found in dead:
        offline.extend(await presence.drop_worker(worker=found.worker))
        await registry.forget(worker=found.worker)
    return [found.worker for found in dead], offline


async def connect(presence: PresenceStore, worker: str, conn: str, user: str) -> None:
    await presence.connect(worker=worker, connection_id=conn, username=user)


async def test_heartbeat_is_false_for_an_unknown_worker_then_true(stores):
    registry, _ = stores
    assert await registry.heartbeat(worker="w1") is False
    assert await registry.heartbeat(worker="w1") is True


async def test_heartbeat_is_false_again_after_the_worker_was_forgotten(stores):
    registry, _ = stores
    await registry.heartbeat(worker="w1")
    await registry.forget(worker="w1")

    assert await registry.heartbeat(worker="w1") is False


async def test_a_silent_worker_is_dead_and_its_users_go_offline(stores, long_ago):
    registry, presence = stores
    with long_ago():
        await registry.heartbeat(worker="dead")
    await registry.heartbeat(worker="alive")
    await connect(presence, "dead", "c1", "alice")
    await connect(presence, "dead", "c2", "alice")
    await connect(presence, "dead", "c3", "bob")
    await connect(presence, "alive", "c4", "carol")

    workers, offline = await reap(registry, presence)

    assert workers == ["dead"]
    assert sorted(offline) == ["alice", "bob"]
    assert await presence.online() == {"carol"}
    assert await registry.heartbeat(worker="dead") is False
    assert await registry.heartbeat(worker="alive") is True


async def test_a_user_with_a_socket_on_a_live_worker_stays_online(stores, long_ago):
    registry, presence = stores
    with long_ago():
        await registry.heartbeat(worker="dead")
    await registry.heartbeat(worker="alive")
    await connect(presence, "dead", "c1", "alice")
    await connect(presence, "alive", "c2", "alice")

    assert (await reap(registry, presence))[1] == []
    assert await presence.online() == {"alice"}
    # The surviving socket is still the user's last one.
    assert await presence.disconnect(worker="alive", connection_id="c2", username="alice")


async def test_workers_that_heartbeat_recently_are_not_dead(stores):
    registry, presence = stores
    await registry.heartbeat(worker="w1")
    await connect(presence, "w1", "c1", "alice")

    assert await reap(registry, presence) == ([], [])
    assert await presence.online() == {"alice"}


async def test_racing_reapers_report_each_user_offline_once(stores, long_ago):
    registry, presence = stores
    with long_ago():
        await registry.heartbeat(worker="dead")
    for n, user in enumerate(["alice", "bob", "carol"]):
        await connect(presence, "dead", f"c{n}", user)

    first, second = await asyncio.gather(reap(registry, presence), reap(registry, presence))

    assert sorted(first[1] + second[1]) == ["alice", "bob", "carol"]
    assert await presence.online() == set()


async def test_the_dead_workers_layer_channel_and_groups_are_reported(stores, long_ago):
    registry, _ = stores
    with long_ago():
        await registry.heartbeat(worker="dead", channel="chan-dead", layer_groups=["chat.all"])
        groups = ["chat.user.1", "chat.group.7"]
        await registry.note_layer_groups(worker="dead", layer_groups=groups)
    await registry.heartbeat(worker="alive", channel="chan-alive", layer_groups=["chat.all"])

    (found,) = await registry.dead(max_silence=SILENCE)

    assert (found.worker, found.channel) == ("dead", "chan-dead")
    assert found.layer_groups == ["chat.all", "chat.group.7", "chat.user.1"]


async def test_a_heartbeat_replaces_the_recorded_layer_groups(stores, long_ago):
    registry, _ = stores
    await registry.heartbeat(worker="w1", channel="chan", layer_groups=["chat.all", "chat.user.1"])
    with long_ago():
        await registry.heartbeat(worker="w1", channel="chan", layer_groups=["chat.all"])

    (found,) = await registry.dead(max_silence=SILENCE)

    assert found.layer_groups == ["chat.all"]


async def test_a_forgotten_worker_leaves_nothing_to_reap(stores, long_ago):
    registry, _ = stores
    with long_ago():
        await registry.heartbeat(worker="w1", channel="chan", layer_groups=["chat.all"])
    await registry.forget(worker="w1")

    assert await registry.dead(max_silence=SILENCE) == []


async def test_live_lists_the_workers_heartbeating_with_their_start_and_version(stores, long_ago):
    registry, _ = stores
    with long_ago():
        await registry.heartbeat(worker="dead")
    await registry.heartbeat(worker="w2")
    await registry.heartbeat(worker="w1")

    live = await registry.live(max_silence=SILENCE)

    assert [row.worker for row in live] == ["w1", "w2"]
    for row in live:
        assert 0 <= time.time() - row.heartbeat < 5
        assert row.started == registry_module.PROCESS_STARTED
        assert row.version == VERSION


def test_settings_pick_the_registry_and_a_change_makes_it_again(settings):
    settings.REDIS_URL = ""
    worker = current_worker()
    memory = worker.registry
    assert isinstance(memory, MemoryWorkerRegistry) and memory.owns_everything
    assert worker.registry is memory

    settings.REDIS_URL = REDIS_URL
    settings.REDIS_PREFIX = "deployment"

    shared = worker.registry
    assert isinstance(shared, RedisWorkerRegistry) and not shared.owns_everything
    assert shared.prefix == "deployment:presence:"
