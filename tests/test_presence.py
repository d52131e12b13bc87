"""chat.presence: one suite run against the in-memory and the Redis store.

Like Django's `BaseCacheTests`, every behaviour is written once and the
`store` fixture supplies each backend. Redis is real and never skipped.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from chat import presence
from chat.delivery import mirror
from chat.models import Connection
from chat.presence import MemoryPresenceStore, RedisPresenceStore
from chat.redis_client import redis_connect
from chat.socket_caps import SocketCaps
from chat.worker import current_worker
from tests.conftest import REDIS_URL, require_redis


@pytest.fixture(params=["memory", "redis"])
def store(request, settings) -> presence.PresenceStore:
    if request.param == "memory":
        settings.REDIS_URL = ""
        return MemoryPresenceStore()
    require_redis()
    settings.REDIS_URL = REDIS_URL
    prefix = request.getfixturevalue("redis_prefix")
    # A client of its own: this fixture runs outside the test's event loop.
    return RedisPresenceStore(prefix=f"{prefix}:", redis=redis_connect(REDIS_URL))


async def connect(store, worker: str, conn: str, user: str) -> bool:
    return await store.connect(worker=worker, connection_id=conn, username=user)


async def disconnect(store, worker: str, conn: str, user: str) -> bool:
    return await store.disconnect(worker=worker, connection_id=conn, username=user)


# -- transitions ---------------------------------------------------------------


async def test_first_socket_is_a_transition_and_user_is_online(store):
    assert await store.online() == set()

    assert await connect(store, "w1", "c1", "alice") is True

    assert await store.online() == {"alice"}


async def test_last_socket_closing_is_a_transition_and_user_is_offline(store):
    await connect(store, "w1", "c1", "alice")

    assert await disconnect(store, "w1", "c1", "alice") is True

    assert await store.online() == set()


async def test_sockets_recorded_together_get_each_its_own_transition_in_order(store):
    await connect(store, "w2", "c0", "carol")
    opened = [("c1", "alice"), ("c2", "alice"), ("c3", "bob"), ("c4", "carol")]

    assert await store.connect_many(worker="w1", sockets=opened) == [True, False, True, False]
    assert await store.online() == {"alice", "bob", "carol"}

    closed = [("c2", "alice"), ("c3", "bob"), ("c1", "alice"), ("c4", "carol"), ("c9", "bob")]
    assert await store.disconnect_many(worker="w1", sockets=closed) == [
        False,
        True,
        True,
        False,
        False,
    ]
    assert await store.online() == {"carol"}


async def test_second_socket_of_a_user_is_no_transition_either_way(store):
    assert await connect(store, "w1", "c1", "alice") is True
    assert await connect(store, "w2", "c2", "alice") is False

    assert await disconnect(store, "w1", "c1", "alice") is False
    assert await store.online() == {"alice"}
    assert await disconnect(store, "w2", "c2", "alice") is True
    assert await store.online() == set()


async def test_users_are_independent(store):
    assert await connect(store, "w1", "c1", "alice") is True
    assert await connect(store, "w1", "c2", "bob") is True

    assert await disconnect(store, "w1", "c1", "alice") is True
    assert await store.online() == {"bob"}


async def test_disconnecting_an_unknown_socket_is_no_transition(store):
    await connect(store, "w1", "c1", "alice")

    assert await disconnect(store, "w1", "c-unknown", "alice") is False
    assert await disconnect(store, "w1", "c1", "bob") is False
    assert await store.online() == {"alice"}


async def test_disconnecting_the_same_socket_twice_is_one_transition(store):
    await connect(store, "w1", "c1", "alice")

    assert await disconnect(store, "w1", "c1", "alice") is True
    assert await disconnect(store, "w1", "c1", "alice") is False


async def test_concurrent_first_sockets_on_different_workers_make_one_transition(store):
    results = await asyncio.gather(*(connect(store, f"w{n}", f"c{n}", "alice") for n in range(8)))

    assert results.count(True) == 1
    assert await store.online() == {"alice"}


async def test_concurrent_last_sockets_closing_make_one_transition(store):
    for n in range(8):
        await connect(store, f"w{n}", f"c{n}", "alice")

    results = await asyncio.gather(
        *(disconnect(store, f"w{n}", f"c{n}", "alice") for n in range(8))
    )

    assert results.count(True) == 1
    assert await store.online() == set()


# -- dropping a worker's sockets (the registry found it dead, or it stops) ----------


async def test_drop_worker_reports_only_users_left_without_a_socket(store):
    await connect(store, "w1", "c1", "alice")
    await connect(store, "w1", "c2", "bob")
    await connect(store, "w2", "c3", "bob")

    offline = await store.drop_worker(worker="w1")

    assert offline == ["alice"]
    assert await store.online() == {"bob"}
    assert await store.drop_worker(worker="w1") == []


async def test_drop_worker_of_an_unknown_worker_reports_nobody(store):
    await connect(store, "w1", "c1", "alice")

    assert await store.drop_worker(worker="nobody-knows") == []
    assert await store.online() == {"alice"}


async def test_usernames_with_unusual_characters_round_trip(store):
    name = "émile:x\u00a0y"
    assert await connect(store, "w1", "c1", name) is True
    assert await store.online() == {name}
    assert await store.drop_worker(worker="w1") == [name]


# -- choosing the store --------------------------------------------------------


def test_settings_without_redis_give_the_worker_one_memory_store(settings):
    settings.REDIS_URL = ""

    first = current_worker().presence

    assert isinstance(first, MemoryPresenceStore)
    assert current_worker().presence is first


def test_settings_with_redis_pick_the_redis_store_under_the_prefix(settings):
    settings.REDIS_URL = REDIS_URL
    settings.REDIS_PREFIX = "deployment"

    store = current_worker().presence

    assert isinstance(store, RedisPresenceStore)
    assert store.prefix == "deployment:"


async def test_two_redis_store_objects_with_one_prefix_share_presence(settings, redis_prefix):
    settings.REDIS_URL = REDIS_URL
    here = RedisPresenceStore(prefix=f"{redis_prefix}:", redis=current_worker().redis)
    there = RedisPresenceStore(prefix=f"{redis_prefix}:", redis=current_worker().redis)

    assert await connect(here, "w1", "c1", "alice") is True
    assert await connect(there, "w2", "c2", "alice") is False
    assert await there.online() == {"alice"}


# -- the database mirror (admin's "who is online") -------------------------------


@pytest.mark.django_db(transaction=True)
def test_connections_mirror_applies_a_batch_of_opened_and_closed_sockets(alice, bob):
    mirror.connection_record(user_id=alice.pk, worker="w1", connection_id="c1", endpoint="json")

    mirror.connections_mirror(
        worker="w1",
        opened={"c2": (alice.pk, "plain"), "c3": (bob.pk, "json")},
        closed=["c1", "never-recorded"],
    )

    assert set(Connection.objects.values_list("connection_id", "worker", "endpoint")) == {
        ("c2", "w1", "plain"),
        ("c3", "w1", "json"),
    }


@pytest.mark.django_db(transaction=True)
def test_connections_mirror_skips_rows_that_would_fail_the_batch(alice, bob):
    mirror.connection_record(user_id=alice.pk, worker="w1", connection_id="c1", endpoint="json")
    gone = bob.pk
    bob.delete()

    mirror.connections_mirror(
        worker="w1", opened={"c1": (alice.pk, "plain"), "c2": (gone, "json")}, closed=[]
    )

    # c1 was recorded already (kept as it was); bob's socket has no user any more.
    assert list(Connection.objects.values_list("connection_id", "endpoint")) == [("c1", "json")]


@pytest.mark.django_db(transaction=True)
def test_connections_forget_workers_removes_only_those_workers(alice, bob):
    mirror.connection_record(user_id=alice.pk, worker="dead", connection_id="c1", endpoint="json")
    mirror.connection_record(user_id=bob.pk, worker="dead2", connection_id="c2", endpoint="json")
    mirror.connection_record(user_id=bob.pk, worker="alive", connection_id="c3", endpoint="json")

    mirror.connections_forget_workers(["dead", "dead2"])

    assert list(Connection.objects.values_list("worker", flat=True)) == ["alive"]


async def test_a_burst_of_connections_queues_instead_of_failing(store):
    # Far more calls in flight than the Redis client's pool holds: a burst of
    # sockets connecting at once must wait for connections, not fail.
    users = [f"user{n}" for n in range(300)]
    firsts = await asyncio.gather(*(connect(store, "w1", f"c{u}", u) for u in users))
    assert all(firsts)
    assert await store.online() == set(users)


# -- socket claims under the per-user cap (chat.socket_caps) -------------------


async def test_two_workers_admitting_at_the_same_instant_cannot_pass_the_cap_together(
    store, settings
):
    """Issue 14.5: the cap was check-then-add, so two workers could both admit."""
    settings.CHAT_SOCKETS_PER_USER = 2
    settings.CHAT_SOCKETS_PER_ADDRESS = 0
    await store.connect(worker="w0", connection_id="c0", username="alice")
    here, there = SocketCaps(store), SocketCaps(store)

    admitted = await asyncio.gather(
        here.admit(user_id=1, username="alice", connection_id="c1", address="a"),
        there.admit(user_id=1, username="alice", connection_id="c2", address="b"),
    )

    assert sorted(admitted) == [False, True]
    winner = "c1" if admitted[0] else "c2"
    # The claim becomes the socket's record: the place stays taken, once.
    await store.connect(worker="w1", connection_id=winner, username="alice")
    assert not await here.admit(user_id=1, username="alice", connection_id="c3", address="a")
    await store.disconnect(worker="w0", connection_id="c0", username="alice")
    assert await there.admit(user_id=1, username="alice", connection_id="c4", address="b")


async def test_a_claim_whose_socket_never_opened_lapses(store, monkeypatch):
    monkeypatch.setattr(presence, "CLAIM_SECONDS", 0.3)
    claim = presence.SocketClaim("bob", "c1", cap=1)

    assert await store.claim_sockets([claim]) == [True]
    assert await store.claim_sockets([presence.SocketClaim("bob", "c2", cap=1)]) == [False]
    deadline = time.monotonic() + 5
    while not (await store.claim_sockets([presence.SocketClaim("bob", "c3", cap=1)]))[0]:
        assert time.monotonic() < deadline, "the claim never lapsed"
        await asyncio.sleep(0.05)
