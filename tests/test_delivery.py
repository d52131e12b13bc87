"""chat.delivery without sockets: notice coalescing, and the hub's fan-out to
fake connections that record what they are sent."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer

from chat import delivery
from chat.coalesce import Coalescer
from chat.delivery import Hub, session_digest, user_layer_group
from chat.delivery.messages import Audience, Notice, SessionEnd, presence_notice
from chat.delivery.notices import drop_flaps
from chat.delivery.publishing import membership_notice_pair
from chat.messaging import message_send
from chat.protocol import CLOSE_POLICY_VIOLATION, Address
from chat.worker import current_worker
from tests.conftest import make_user

WAIT = 5.0


# -- coalescing presence flaps --------------------------------------------------


def online(user: str) -> Notice:
    return presence_notice(user, online=True)


def offline(user: str) -> Notice:
    return presence_notice(user, online=False)


def joined(user: str) -> Notice:
    return Notice({"type": "joined", "group": "A", "user": user}, Audience(group=1))


def coalesced(notices: list[Notice]) -> list[Notice]:
    return [notice for notice, _ in drop_flaps([(notice, None) for notice in notices])]


def test_coalesce_keeps_a_single_transition():
    notices = [online("alice")]

    assert coalesced(notices) == notices


def test_coalesce_drops_an_even_number_of_flaps():
    assert coalesced([online("alice"), offline("alice")]) == []
    assert coalesced([offline("alice"), online("alice")] * 2) == []


def test_coalesce_keeps_only_the_last_of_an_odd_number_of_flaps():
    assert coalesced([online("alice"), offline("alice"), online("alice")]) == [online("alice")]


def test_coalesce_treats_users_independently_and_keeps_order():
    notices = [online("alice"), online("bob"), offline("alice"), offline("carol")]

    assert coalesced(notices) == [online("bob"), offline("carol")]


def test_coalesce_never_drops_other_notices():
    notices = [online("alice"), joined("alice"), offline("alice"), joined("bob")]

    assert coalesced(notices) == [joined("alice"), joined("bob")]


def test_coalesce_of_nothing_is_nothing():
    assert coalesced([]) == []


# -- the hub's fan-out -----------------------------------------------------------


@dataclass(eq=False)
class FakeConnection:
    """A socket as the hub sees it: records frames and its close code."""

    user_id: int
    username: str
    connection_id: str
    session_digest: str = field(default_factory=lambda: session_digest("default-session"))
    frames: asyncio.Queue = field(default_factory=asyncio.Queue)
    closed: asyncio.Future = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    texts: list[str] = field(default_factory=list)

    async def write(self, text: str) -> None:
        self.texts.append(text)
        event = json.loads(text)
        for one in event["events"] if event["type"] == "batch" else [event]:
            self.frames.put_nowait(one)

    def write_now(self, text: str) -> bool:
        return False

    async def write_events(self, text: str, events: object) -> None:
        await self.write(text)

    async def close_with(self, code: int) -> None:
        if not self.closed.done():
            self.closed.set_result(code)

    async def next_event(self) -> dict[str, Any]:
        return await asyncio.wait_for(self.frames.get(), WAIT)

    async def next_message(self) -> dict[str, Any]:
        """The next `message` event, past markers left by `settle` for other sockets."""
        while (event := await self.next_event())["type"] == "marker":
            pass
        return event

    def received_nothing(self) -> bool:
        """Nothing but `settle` markers is waiting."""
        waiting = []
        while not self.frames.empty():
            waiting.append(self.frames.get_nowait())
        return all(event["type"] == "marker" for event in waiting)


class BrokenConnection(FakeConnection):
    async def write(self, text: str) -> None:
        raise ConnectionResetError("gone")


@pytest.fixture
async def hub(layer, transactional_db):
    started = Hub(
        get_channel_layer(), presence=current_worker().presence, registry=current_worker().registry
    )
    await started.start()
    yield started
    await started.stop()


@pytest.fixture
def fake(hub):
    """`await fake(user, name, group_ids=...)` attaches a fake connection to the hub."""
    count = 0

    async def attach(user, *, group_ids=(), session="default-session", cls=FakeConnection):
        nonlocal count
        count += 1
        conn = cls(
            user_id=user.pk,
            username=user.get_username(),
            connection_id=f"{user.get_username()}-{count}",
            session_digest=session_digest(session),
        )
        await hub.attach(conn, group_ids=group_ids, endpoint="json")
        return conn

    return attach


_markers = itertools.count()


async def settle(hub: Hub, *connections: FakeConnection) -> list[dict[str, Any]]:
    """Wait until everything published so far has reached these connections.

    The hub's channel is read in order, so once a marker published now comes
    out, every earlier notice has too. Returns (and consumes) what came first,
    leaving out older markers.
    """
    marker = {"type": "marker", "n": next(_markers)}
    await hub.publish("chat.all", Notice(marker, Audience(everyone=True)))
    before = []
    for conn in connections:
        while (event := await conn.next_event()) != marker:
            if event["type"] != "marker":
                before.append(event)
    return before


async def test_direct_message_reaches_every_socket_of_both_users_and_nobody_else(
    hub, fake, alice, bob, carol
):
    alice_tabs = [await fake(alice), await fake(alice)]
    bob_tab = await fake(bob)
    carol_tab = await fake(carol)
    await settle(hub, *alice_tabs, bob_tab, carol_tab)
    stored = await database_sync_to_async(message_send)(
        sender=alice, to=Address("user", "bob"), body="hi"
    )

    await hub.deliver_messages([stored])

    for conn in [*alice_tabs, bob_tab]:
        event = await conn.next_message()
        assert (event["type"], event["id"], event["body"]) == ("message", stored.id, "hi")
    assert carol_tab.received_nothing()


async def test_group_message_reaches_only_members_connected_here(hub, fake, alice, bob, carol):
    from chat.groups import group_join

    change = await database_sync_to_async(group_join)(user=alice, name="A")
    await database_sync_to_async(group_join)(user=bob, name="A")
    alice_tab = await fake(alice, group_ids=[change.group_id])
    bob_tab = await fake(bob, group_ids=[change.group_id])
    carol_tab = await fake(carol)
    await settle(hub, alice_tab, bob_tab, carol_tab)
    stored = await database_sync_to_async(message_send)(
        sender=alice, to=Address("group", "A"), body="team"
    )

    await hub.deliver_messages([stored])

    assert (await alice_tab.next_message())["id"] == stored.id
    assert (await bob_tab.next_message())["id"] == stored.id
    assert carol_tab.received_nothing()


async def test_broadcast_reaches_every_socket(hub, fake, alice, bob):
    tabs = [await fake(alice), await fake(bob), await fake(bob)]
    await settle(hub, *tabs)
    stored = await database_sync_to_async(message_send)(sender=alice, to=Address("all"), body="all")

    await hub.deliver_messages([stored])

    for tab in tabs:
        assert (await tab.next_message())["id"] == stored.id


async def test_messages_stored_together_reach_a_socket_in_one_frame_in_order(hub, fake, alice, bob):
    from chat.groups import group_join

    change = await database_sync_to_async(group_join)(user=alice, name="A")
    await database_sync_to_async(group_join)(user=bob, name="A")
    bob_tab = await fake(bob, group_ids=[change.group_id])
    await settle(hub, bob_tab)
    stored = [
        await database_sync_to_async(message_send)(
            sender=alice, to=Address("group", "A"), body=f"m{n}"
        )
        for n in range(3)
    ]
    frames_before = len(bob_tab.texts)

    await hub.deliver_messages(stored)

    received = [await bob_tab.next_message() for _ in stored]
    assert [(e["id"], e["body"]) for e in received] == [
        (m.id, f"m{n}") for n, m in enumerate(stored)
    ]
    assert len(bob_tab.texts) - frames_before == 1
    assert json.loads(bob_tab.texts[-1])["type"] == "batch"


async def test_messages_to_different_audiences_keep_their_order(hub, fake, alice, bob, carol):
    from chat.groups import group_join

    change = await database_sync_to_async(group_join)(user=alice, name="A")
    await database_sync_to_async(group_join)(user=bob, name="A")
    bob_tab = await fake(bob, group_ids=[change.group_id])
    carol_tab = await fake(carol)
    await settle(hub, bob_tab, carol_tab)
    send = database_sync_to_async(message_send)
    in_group = await send(sender=alice, to=Address("group", "A"), body="g1")
    to_all = await send(sender=alice, to=Address("all"), body="all")
    in_group_again = await send(sender=alice, to=Address("group", "A"), body="g2")

    await hub.deliver_messages([in_group, to_all, in_group_again])

    assert [(await bob_tab.next_message())["id"] for _ in range(3)] == [
        in_group.id,
        to_all.id,
        in_group_again.id,
    ]
    assert (await carol_tab.next_message())["id"] == to_all.id
    assert carol_tab.received_nothing()


async def test_a_long_run_is_split_into_frames_of_at_most_max_run(
    hub, fake, alice, bob, monkeypatch
):
    monkeypatch.setattr("chat.delivery.publishing.MAX_RUN", 2)
    bob_tab = await fake(bob)
    await settle(hub, bob_tab)
    send = database_sync_to_async(message_send)
    stored = [await send(sender=alice, to=Address("all"), body=f"m{n}") for n in range(5)]
    frames_before = len(bob_tab.texts)

    await hub.deliver_messages(stored)

    assert [(await bob_tab.next_message())["id"] for _ in stored] == [m.id for m in stored]
    assert len(bob_tab.texts) - frames_before == 3


async def test_sockets_here_get_a_message_once_without_waiting_for_the_layer(
    hub, fake, alice, bob, monkeypatch
):
    bob_tab = await fake(bob)
    await settle(hub, bob_tab)
    stored = await database_sync_to_async(message_send)(sender=alice, to=Address("all"), body="x")
    release = asyncio.Event()
    group_send = hub.channel.layer.group_send

    async def held_group_send(layer_group, message):
        await release.wait()
        await group_send(layer_group, message)

    monkeypatch.setattr(hub.channel.layer, "group_send", held_group_send)
    delivering = asyncio.ensure_future(hub.deliver_messages([stored]))

    assert (await bob_tab.next_message())["id"] == stored.id
    assert not delivering.done()
    release.set()
    await delivering
    # The layer's copy came back before the marker and was not written again.
    assert await settle(hub, bob_tab) == []


async def test_a_failing_socket_does_not_stop_delivery_to_the_others(hub, fake, alice, bob):
    await fake(alice, cls=BrokenConnection)
    bob_tab = await fake(bob)
    await settle(hub, bob_tab)
    stored = await database_sync_to_async(message_send)(sender=alice, to=Address("all"), body="x")

    await hub.deliver_messages([stored])

    assert (await bob_tab.next_message())["id"] == stored.id


async def test_first_socket_of_a_user_is_announced_to_others_not_to_itself(hub, fake, alice, bob):
    bob_tab = await fake(bob)
    await settle(hub, bob_tab)

    alice_tab = await fake(alice)

    assert await settle(hub, bob_tab) == [
        {"type": "presence", "user": "alice", "online": True, "name": "alice"}
    ]
    assert await settle(hub, alice_tab) == []


async def test_second_socket_of_a_user_is_not_announced(hub, fake, alice, bob):
    bob_tab = await fake(bob)
    await fake(alice)
    await settle(hub, bob_tab)

    await fake(alice)

    assert await settle(hub, bob_tab) == []


async def test_last_socket_closing_is_announced_offline(hub, fake, alice, bob):
    bob_tab = await fake(bob)
    first, second = await fake(alice), await fake(alice)
    await settle(hub, bob_tab)

    await hub.detach(first)
    assert await settle(hub, bob_tab) == []

    await hub.detach(second)
    [offline] = await settle(hub, bob_tab)
    assert offline == {
        "type": "presence",
        "user": "alice",
        "online": False,
        "name": "alice",
        "last_seen": offline["last_seen"],
    }
    assert await hub.presence.last_seen(["alice"]) == {"alice": offline["last_seen"]}


async def test_session_end_closes_only_that_sessions_sockets(hub, fake, alice, bob):
    laptop = [await fake(alice, session="laptop"), await fake(alice, session="laptop")]
    phone = await fake(alice, session="phone")
    bob_laptop = await fake(bob, session="laptop")

    await hub.publish(
        f"chat.user.{alice.pk}",
        SessionEnd(user_id=alice.pk, session=session_digest("laptop")),
    )

    for conn in laptop:
        assert await asyncio.wait_for(conn.closed, WAIT) == CLOSE_POLICY_VIOLATION
    # One dispatch closes every matching socket, so the others are settled.
    assert not phone.closed.done()
    assert not bob_laptop.closed.done()


async def test_stopping_the_hub_closes_its_sockets_and_drops_presence(hub, fake, alice):
    tab = await fake(alice)
    assert await hub.presence.online() == {"alice"}

    await hub.stop(close_code=1012)

    assert await asyncio.wait_for(tab.closed, WAIT) == 1012
    assert await hub.presence.online() == set()


async def test_stopping_over_a_spread_closes_sockets_in_turn_and_refuses_new_ones(
    hub, fake, alice, bob
):
    tabs = [await fake(alice) for _ in range(5)]
    loop = asyncio.get_running_loop()
    closed_at: list[float] = []
    for tab in tabs:
        tab.closed.add_done_callback(lambda _: closed_at.append(loop.time()))

    stopping = asyncio.create_task(hub.stop(close_code=1012, spread=0.5))
    await asyncio.wait_for(
        asyncio.wait([t.closed for t in tabs], return_when="FIRST_COMPLETED"), WAIT
    )
    assert hub.stopping
    with pytest.raises(RuntimeError):
        await fake(bob)
    # Still delivering to the sockets not yet closed, and bob was never registered.
    assert await hub.presence.online() == {"alice"}
    await asyncio.wait_for(stopping, WAIT)

    assert [tab.closed.result() for tab in tabs] == [1012] * 5
    # One socket every 0.1 s: 0, 0.1, ... 0.4 s.
    assert max(closed_at) - min(closed_at) >= 0.3
    assert await hub.presence.online() == set()


async def test_join_and_leave_reach_members_and_the_users_other_sockets_only(
    hub, fake, alice, bob, carol
):
    from chat.groups import group_join, group_leave

    group_id = (await database_sync_to_async(group_join)(user=alice, name="A")).group_id
    alice_tab = await fake(alice, group_ids=[group_id])
    carol_here, carol_there = await fake(carol), await fake(carol)
    bob_tab = await fake(bob)
    await settle(hub, alice_tab, carol_here, carol_there, bob_tab)

    async def announce(joined: bool) -> dict[str, Any]:
        change = await database_sync_to_async(group_join if joined else group_leave)(
            user=carol, name="A"
        )
        event = {"type": "joined" if joined else "left", "group": "A", "user": "carol"}
        await hub.note_membership(user_id=carol.pk, group_id=change.group_id, joined=joined)
        await hub.announcing.many(
            membership_notice_pair(
                event,
                user_id=carol.pk,
                group_id=change.group_id,
                joined=joined,
                exclude_connection=carol_here.connection_id,
            )
        )
        return event

    joined_event = await announce(joined=True)
    assert await settle(hub, alice_tab) == [joined_event]
    assert await settle(hub, carol_there) == [joined_event]
    assert await settle(hub, carol_here) == []
    assert await settle(hub, bob_tab) == []

    stored = await database_sync_to_async(message_send)(
        sender=alice, to=Address("group", "A"), body="welcome"
    )
    await hub.deliver_messages([stored])
    for tab in (alice_tab, carol_here, carol_there):
        assert (await tab.next_message())["id"] == stored.id

    left_event = await announce(joined=False)
    assert await settle(hub, alice_tab) == [left_event]
    assert await settle(hub, carol_there) == [left_event]

    stored = await database_sync_to_async(message_send)(
        sender=alice, to=Address("group", "A"), body="bye"
    )
    await hub.deliver_messages([stored])
    assert (await alice_tab.next_message())["id"] == stored.id
    assert await settle(hub, carol_here, carol_there, bob_tab) == []


async def test_a_join_notice_reaches_the_members_of_when_it_arrived_not_of_the_flush(
    hub, fake, alice, bob, carol
):
    """Notices wait up to CHAT_NOTICE_DELAY; who joins meanwhile was not there yet."""
    from chat.groups import group_join

    group_id = (await database_sync_to_async(group_join)(user=alice, name="A")).group_id
    alice_tab = await fake(alice, group_ids=[group_id])
    bob_tab = await fake(bob)
    await settle(hub, alice_tab, bob_tab)

    carol_joined = {"type": "joined", "group": "A", "user": "carol"}
    # As the receive loop hands it over, then bob joins before it is flushed.
    await hub.handlers.chat_notice(
        Notice(carol_joined, Audience(group=group_id, exclude_user=carol.pk))
    )
    await database_sync_to_async(group_join)(user=bob, name="A")
    await hub.note_membership(user_id=bob.pk, group_id=group_id, joined=True)

    assert await settle(hub, alice_tab) == [carol_joined]
    assert await settle(hub, bob_tab) == []


# -- who is online, read once for a burst ------------------------------------------


class CountingPresence:
    """Wraps the hub's presence store: counts `online` reads, and can hold them."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.reads = 0
        self.release = asyncio.Event()
        self.release.set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def online(self) -> set[str]:
        self.reads += 1
        await self.release.wait()
        return await self.store.online()


async def test_a_burst_of_online_calls_shares_reads_made_after_each_call(hub, fake, alice, bob):
    counting = hub.online_reader.presence = CountingPresence(hub.presence)
    await fake(alice)
    counting.release.clear()
    first = asyncio.ensure_future(hub.online())
    while counting.reads == 0:
        await asyncio.sleep(0)
    # Bob comes online while the first read is running: calls made now must
    # see him, so they wait for the next read, which all of them share.
    await fake(bob)
    burst = [asyncio.ensure_future(hub.online()) for _ in range(50)]
    counting.release.set()
    assert await asyncio.wait_for(first, WAIT) <= {"alice", "bob"}
    results = await asyncio.wait_for(asyncio.gather(*burst), WAIT)
    assert all(result == {"alice", "bob"} for result in results)
    assert counting.reads == 2


async def test_online_names_are_sorted_once_for_the_calls_that_share_a_read(hub, fake, alice, bob):
    await fake(bob)
    await fake(alice)

    names = await asyncio.wait_for(asyncio.gather(*(hub.online_names() for _ in range(20))), WAIT)

    assert all(result == ("alice", "bob") for result in names)
    assert len({id(result) for result in names}) <= 2  # the first read, and the shared one


async def test_a_cancelled_online_call_does_not_cancel_the_others(hub, fake, alice):
    counting = hub.online_reader.presence = CountingPresence(hub.presence)
    await fake(alice)
    counting.release.clear()
    impatient = asyncio.ensure_future(hub.online())
    patient = asyncio.ensure_future(hub.online())
    while counting.reads == 0:
        await asyncio.sleep(0)
    impatient.cancel()
    counting.release.set()
    assert await asyncio.wait_for(patient, WAIT) == {"alice"}
    assert impatient.cancelled()


async def test_a_failed_online_read_reaches_its_callers_and_the_next_read_works(hub, fake, alice):
    counting = hub.online_reader.presence = CountingPresence(hub.presence)
    await fake(alice)
    store = counting.store

    class Down:
        async def online(self) -> set[str]:
            raise ConnectionError("redis is down")

    counting.store = Down()
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(hub.online(), WAIT)
    counting.store = store
    assert await asyncio.wait_for(hub.online(), WAIT) == {"alice"}


# -- the admin's mirror of open sockets ------------------------------------------


async def mirrored(hub: Hub, expected: set[str]) -> set[str]:
    """The connection ids in the database once they are `expected` (or after WAIT)."""
    from chat.models import Connection

    def ids() -> set[str]:
        return set(
            Connection.objects.filter(worker=hub.worker_id).values_list("connection_id", flat=True)
        )

    deadline = asyncio.get_running_loop().time() + WAIT
    while (found := await database_sync_to_async(ids)()) != expected:
        if asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.02)
    return found


async def test_sockets_are_mirrored_for_the_admin_in_batches(hub, fake, alice, bob, monkeypatch):
    from chat.delivery import mirror

    calls = 0
    real = mirror.connections_mirror

    def counting(**kwargs: Any) -> None:
        nonlocal calls
        calls += 1
        real(**kwargs)

    monkeypatch.setattr(mirror, "connections_mirror", counting)
    conns = await asyncio.gather(*(fake(alice if n % 2 else bob) for n in range(40)))
    everyone = {c.connection_id for c in conns}
    assert await mirrored(hub, everyone) == everyone
    assert calls < 40
    for conn in conns[:30]:
        await hub.detach(conn)
    remaining = {c.connection_id for c in conns[30:]}
    assert await mirrored(hub, remaining) == remaining


async def test_a_socket_closed_before_its_mirror_write_is_never_recorded(hub, fake, alice):
    opened = await fake(alice)
    closed = await fake(alice)
    await hub.detach(closed)
    assert await mirrored(hub, {opened.connection_id}) == {opened.connection_id}


# -- ending when cancelled, whatever the layer does with the cancellation ----------


async def test_the_receive_loop_ends_when_the_layer_turns_cancellation_into_an_error():
    class SwallowingLayer:
        """Like redis-py when a blocked read is cancelled: raises ConnectionError."""

        def __init__(self) -> None:
            self.reading = asyncio.Event()

        async def receive(self, channel: str) -> dict[str, Any]:
            self.reading.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                raise ConnectionError("Connection closed by server.") from None
            raise AssertionError("unreachable")

    layer = SwallowingLayer()
    # A hub of its own, never started: no other loop reads a real layer here.
    worker = current_worker()
    hub = Hub(layer, presence=worker.presence, registry=worker.registry)  # type: ignore[arg-type]
    loop_task = asyncio.ensure_future(hub.channel.receive_loop(hub.handlers.dispatch))
    await asyncio.wait_for(layer.reading.wait(), WAIT)
    loop_task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(loop_task, WAIT)


class FirstCallHeld:
    """Wraps an async call: records what each call carries and holds the first one.

    For the hub's shared trips: with the first trip out and held, every
    later caller must wait for the next trip, so how the calls were grouped
    shows in `recorded` (`record` of each call's arguments, in order).
    """

    def __init__(self, call: Callable[..., Awaitable[Any]], record: Callable[..., Any]) -> None:
        self.call = call
        self.record = record
        self.recorded: list[Any] = []
        self.release = asyncio.Event()

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.recorded.append(self.record(*args, **kwargs))
        if len(self.recorded) == 1:
            await self.release.wait()
        return await self.call(*args, **kwargs)

    async def release_once(
        self, coalescer: Coalescer[Any, Any], expected: int, in_trips: Callable[[], int]
    ) -> None:
        """Release the first call once `expected` items are in trips or waiting for one."""
        try:
            async with asyncio.timeout(WAIT):
                while in_trips() + len(coalescer._waiting) < expected:
                    await asyncio.sleep(0.01)
        finally:
            self.release.set()


async def test_presence_of_sockets_opening_together_leaves_in_one_layer_message(
    hub, fake, alice, bob, carol, monkeypatch
):
    watcher = await fake(await make_user("dave"))
    held = FirstCallHeld(hub.publish, record=lambda layer_group, message, **_: message)
    monkeypatch.setattr(hub, "publish", held)
    opening = asyncio.gather(fake(alice), fake(bob), fake(carol))
    # The first trip is held until every socket has announced itself:
    # whatever did not make it into the first goes together in the next.
    published = held.recorded
    await held.release_once(hub.announcing, 3, lambda: len(notices_in(published)))
    await asyncio.wait_for(opening, WAIT)

    assert len(published) <= 2, published
    assert sorted(n.presence for n in notices_in(published)) == ["alice", "bob", "carol"]
    seen = {(await watcher.next_event())["user"] for _ in range(3)}
    assert seen == {"alice", "bob", "carol"}


def notices_in(published: list[Any]) -> list[Notice]:
    return [n for message in published for n in getattr(message, "notices", [message])]


async def test_layer_groups_of_sockets_opening_together_are_joined_in_one_trip(
    hub, fake, alice, bob, carol, monkeypatch
):
    await fake(await make_user("dave"))  # chat.all and dave's own group are joined
    held = FirstCallHeld(
        delivery.channel.group_add_many, record=lambda layer, groups, channel, **_: list(groups)
    )
    monkeypatch.setattr(delivery.channel, "group_add_many", held)
    opening = asyncio.gather(
        fake(alice, group_ids=[7]), fake(bob, group_ids=[7]), fake(carol, group_ids=[8])
    )
    trips = held.recorded
    await held.release_once(hub.subscriptions.joining, 5, lambda: sum(map(len, trips)))
    alice1, bob1, carol1 = await asyncio.wait_for(opening, WAIT)

    assert len(trips) <= 2, trips
    expected = {
        *(user_layer_group(u.pk) for u in (alice, bob, carol)),
        "chat.group.7",
        "chat.group.8",
    }
    assert sorted(g for trip in trips for g in trip) == sorted(expected)
    # Through the layer, as another worker would send: each group reaches its socket.
    for layer_group, audience, body in [
        (user_layer_group(carol.pk), {"users": [carol.pk]}, "to carol"),
        ("chat.group.7", {"group": 7}, "to group 7"),
    ]:
        text = json.dumps({"type": "message", "body": body})
        await hub.channel.layer.group_send(
            layer_group, {"type": "chat.deliver", "text": text, **audience}
        )
    assert (await next_with_body(carol1))["body"] == "to carol"
    assert (await next_with_body(alice1))["body"] == "to group 7"
    assert (await next_with_body(bob1))["body"] == "to group 7"


async def next_with_body(conn: FakeConnection) -> dict[str, Any]:
    """The next event with a body, past presence notices and markers."""
    while "body" not in (event := await conn.next_event()):
        pass
    return event


async def test_presence_of_sockets_opening_together_is_recorded_in_one_trip(
    hub, fake, alice, bob, carol, monkeypatch
):
    watcher = await fake(await make_user("dave"))
    held = FirstCallHeld(hub.presence.connect_many, record=lambda *, worker, sockets: list(sockets))
    monkeypatch.setattr(hub.presence, "connect_many", held)
    opening = asyncio.gather(fake(alice), fake(alice), fake(bob))
    trips = held.recorded
    await held.release_once(hub.recorder.connecting, 3, lambda: sum(map(len, trips)))
    await asyncio.wait_for(opening, WAIT)

    assert len(trips) <= 2, trips
    assert sorted(name for trip in trips for _, name in trip) == ["alice", "alice", "bob"]
    # One transition per user: alice's second socket is not announced.
    seen = [(await watcher.next_event())["user"] for _ in range(2)]
    assert sorted(seen) == ["alice", "bob"]
    assert await settle(hub, watcher) == []
