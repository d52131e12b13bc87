"""The hub's parts on their own, without a hub, a layer or a socket."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from channels.layers import InMemoryChannelLayer

from chat.delivery.channel import WorkerChannel
from chat.delivery.handlers import LayerHandlers
from chat.delivery.maintenance import Maintenance
from chat.delivery.messages import (
    LAYER_ALL,
    AccessEnd,
    Audience,
    Deliver,
    MemberChange,
    Notices,
    Renamed,
    Typing,
    from_layer,
    to_layer,
)
from chat.delivery.mirror import ConnectionMirror
from chat.delivery.notices import NoticeBatcher
from chat.delivery.online import PresenceRecorder
from chat.delivery.publishing import (
    deliveries,
    membership_notice_pair,
    to_group,
    to_username,
)
from chat.delivery.sockets import SocketIndex
from chat.delivery.subscriptions import LayerSubscriptions
from chat.messaging import StoredMessage
from chat.presence import MemoryPresenceStore
from chat.registry import DeadWorker, MemoryWorkerRegistry


@dataclass(eq=False)
class Tab:
    user_id: int
    username: str
    connection_id: str
    session_digest: str = ""

    async def write(self, text: str) -> None:
        raise AssertionError("not written in these tests")

    def write_now(self, text: str) -> bool:
        return False

    async def write_events(self, text: str, events: object) -> None:
        await self.write(text)

    async def close_with(self, code: int) -> None:
        raise AssertionError("not closed in these tests")


async def test_the_index_keeps_each_users_name_for_their_presence_notices():
    index = SocketIndex()
    handlers = LayerHandlers(
        index,
        subscriptions=LayerSubscriptions(
            WorkerChannel(InMemoryChannelLayer()),
            registry=MemoryWorkerRegistry(),
            worker_id="w",
            wants=index.wants,
        ),
        notices=NoticeBatcher(index),
    )
    alice1, alice2 = Tab(1, "alice", "a1"), Tab(1, "alice", "a2")
    index.add(alice1, group_ids=[], name="Alice")
    # A later handshake may have read the name before a rename: the first one's stays.
    index.add(alice2, group_ids=[], name="Alice (before)")
    assert index.names == {"alice": "Alice"}

    await handlers.dispatch(from_layer(to_layer(Renamed(username="alice", name="Al"))))
    await handlers.dispatch(from_layer(to_layer(Renamed(username="bob", name="Robert"))))
    assert index.names == {"alice": "Al"}  # bob has no socket here

    index.remove(alice1)
    assert index.names == {"alice": "Al"}
    index.remove(alice2)
    assert index.names == {}


def test_the_index_finds_an_audiences_sockets_and_leaves_out_the_excluded():
    index = SocketIndex()
    alice1, alice2, bob = Tab(1, "alice", "a1"), Tab(1, "alice", "a2"), Tab(2, "bob", "b1")
    index.add(alice1, group_ids=[7])
    index.add(alice2, group_ids=[])
    index.add(bob, group_ids=[8])

    assert set(index.targets(Audience(everyone=True))) == {alice1, alice2, bob}
    assert set(index.targets(Audience(group=7))) == {alice1, alice2}
    assert index.targets(Audience(users=(2,))) == [bob]
    assert index.targets(Audience(everyone=True, exclude_username="alice")) == [bob]
    assert index.targets(Audience(users=(1,), exclude_connection="a1")) == [alice2]
    assert index.targets(Audience(group=9)) == []


def test_the_index_wants_the_layer_groups_of_whoever_is_connected():
    index = SocketIndex()
    alice, bob = Tab(1, "alice", "a1"), Tab(2, "bob", "b1")
    assert index.add(alice, group_ids=[7]) == [LAYER_ALL, "chat.user.1", "chat.group.7"]
    index.add(bob, group_ids=[7, 8])

    assert index.remove(bob)
    assert not index.remove(bob)
    assert index.wanted_layer_groups() == {LAYER_ALL, "chat.user.1", "chat.group.7"}
    index.apply(MemberChange(user_id=1, group_id=7, joined=False))
    assert index.wanted_layer_groups() == {LAYER_ALL, "chat.user.1"}
    assert not index.apply(MemberChange(user_id=2, group_id=7, joined=True))  # not here
    index.remove(alice)
    assert index.wanted_layer_groups() == set()
    assert not index


def stored(number: int, **audience: object) -> StoredMessage:
    return StoredMessage(number, "ts", {"type": "message", "id": number}, **audience)  # type: ignore[arg-type]


def test_messages_to_one_audience_in_a_row_travel_as_one_batch():
    sends = deliveries(
        [stored(1, group_id=7), stored(2, group_id=7), stored(3, everyone=True)], origin="me"
    )

    assert [(group, message.audience) for group, message in sends] == [
        ("chat.group.7", Audience(group=7)),
        (LAYER_ALL, Audience(everyone=True)),
    ]
    batch = json.loads(sends[0][1].text)
    assert [event["id"] for event in batch["events"]] == [1, 2]
    assert json.loads(sends[1][1].text) == {"type": "message", "id": 3}
    assert {message.origin for _, message in sends} == {"me"}


def test_a_direct_message_goes_to_each_of_its_users_layer_groups():
    sends = deliveries([stored(1, user_ids=(1, 2))], origin="me")

    assert [(group, message.audience.users) for group, message in sends] == [
        ("chat.user.1", (1,)),
        ("chat.user.2", (2,)),
    ]


# -- maintenance, with the store and the layer in memory -------------------------


class ForgetfulRegistry(MemoryWorkerRegistry):
    """A registry that has lost this worker (Redis restarted empty) and finds one dead."""

    async def heartbeat(self, *, worker: str, channel: str = "", layer_groups: Any = ()) -> bool:
        return False

    async def dead(self, *, max_silence: float) -> list[DeadWorker]:
        return [DeadWorker("dead", "dead!1", ["chat.all"])]


async def test_maintenance_closes_sockets_a_forgetful_store_lost_and_announces_the_reaped(
    settings, transactional_db
):
    settings.CHAT_PRESENCE_TIMEOUT = 3.0
    layer = InMemoryChannelLayer()
    channel = WorkerChannel(layer)
    await channel.open()
    store = MemoryPresenceStore()
    await store.connect(worker="dead", connection_id="g1", username="ghost")
    registry = ForgetfulRegistry()
    subscriptions = LayerSubscriptions(
        channel, registry=registry, worker_id="w1", wants=lambda group: group == "chat.all"
    )
    await subscriptions.subscribe(["chat.all"])
    await layer.group_add("chat.all", "dead!1")
    resets: list[None] = []
    offline: list[str] = []

    async def reset() -> None:
        resets.append(None)

    async def announce(usernames: list[str]) -> None:
        offline.extend(usernames)

    maintenance = Maintenance(
        presence=store,
        registry=registry,
        worker_id="w1",
        channel=channel,
        subscriptions=subscriptions,
        mirror=ConnectionMirror("w1"),
        has_sockets=lambda: True,
        reset_sockets=reset,
        announce_offline=announce,
    )

    await maintenance.maintain()

    assert resets == [None]  # clients reconnect and sync what they may have missed
    assert offline == ["ghost"]
    assert "dead!1" not in layer.groups.get("chat.all", {})
    assert channel.name in layer.groups["chat.all"]


@dataclass(eq=False)
class WritingTab(Tab):
    """A socket that keeps what it is sent and how it was closed."""

    def __post_init__(self) -> None:
        self.written: list[str] = []
        self.closed: list[int] = []

    def write_now(self, text: str) -> bool:
        self.written.append(text)
        return True

    async def close_with(self, code: int) -> None:
        self.closed.append(code)


def handlers_over(index: SocketIndex) -> LayerHandlers:
    channel = WorkerChannel(InMemoryChannelLayer())
    subscriptions = LayerSubscriptions(
        channel, registry=MemoryWorkerRegistry(), worker_id="w", wants=index.wants
    )
    return LayerHandlers(index, subscriptions=subscriptions, notices=NoticeBatcher(index))


async def test_each_layer_message_goes_to_the_handler_its_type_names():
    index = SocketIndex()
    alice, bob = WritingTab(1, "alice", "a1"), WritingTab(2, "bob", "b1")
    index.add(alice, group_ids=[7])
    index.add(bob, group_ids=[])
    handlers = handlers_over(index)

    for _, message in to_group(7, {"type": "receipt"}, exclude_user=2):
        await handlers.dispatch(from_layer(to_layer(message)))
    for _, message in to_username("bob", {"type": "typing", "user": "alice"}):
        await handlers.dispatch(from_layer(to_layer(message)))
    await handlers.dispatch(AccessEnd(user_id=1))

    assert alice.written == ['{"type":"receipt"}']
    assert bob.written == ['{"type":"typing","user":"alice"}']
    assert (alice.closed, bob.closed) == ([1008], [])


async def test_a_membership_notice_changes_the_index_of_the_worker_that_receives_it():
    index = SocketIndex()
    carol = WritingTab(3, "carol", "c1")
    index.add(carol, group_ids=[])
    handlers = handlers_over(index)
    event = {"type": "joined", "group": "A", "user": "carol"}

    to_members, to_own = membership_notice_pair(
        event, user_id=3, group_id=9, joined=True, exclude_connection="c2"
    )
    # As they travel: one layer message for both (`Hub.announcing`, `LAYER_ALL`).
    await handlers.dispatch(from_layer(to_layer(Notices((to_members, to_own)))))

    assert index.targets(Audience(group=9)) == [carol]
    assert to_members.member_change is None and to_own.member_change is not None


async def test_held_join_notices_reach_each_member_of_when_they_arrived():
    """A burst of joins, held for one flush: each member hears of the joins after
    their own, a member who left meanwhile hears nothing more, a newcomer nothing
    earlier (worked out at the flush, `NoticeBatcher`)."""
    index = SocketIndex()
    alice, dave = WritingTab(1, "alice", "a1"), WritingTab(4, "dave", "d1")
    index.add(alice, group_ids=[9])
    index.add(dave, group_ids=[9])
    handlers = handlers_over(index)

    def joined(user: str) -> dict[str, Any]:
        return {"type": "joined", "group": "G", "user": user}

    async def join(tab: WritingTab) -> None:
        for notice in membership_notice_pair(
            joined(tab.username),
            user_id=tab.user_id,
            group_id=9,
            joined=True,
            exclude_connection=None,
        ):
            await handlers.chat_notice(notice)

    bob = WritingTab(2, "bob", "b1")
    index.add(bob, group_ids=[])
    await join(bob)
    await handlers.apply(MemberChange(user_id=4, group_id=9, joined=False))
    carol = WritingTab(3, "carol", "c1")
    index.add(carol, group_ids=[])
    await join(carol)
    await handlers.notices.flush()

    def received(tab: WritingTab) -> list[dict[str, Any]]:
        events = []
        for text in tab.written:
            frame = json.loads(text)
            events.extend(frame["events"] if frame["type"] == "batch" else [frame])
        return events

    assert received(alice) == [joined("bob"), joined("carol")]
    # Their own copy (the change for their other sockets), then the joins after theirs.
    assert received(bob) == [joined("bob"), joined("carol")]
    assert received(carol) == [joined("carol")]
    assert received(dave) == []
    assert len(alice.written) == 1  # one frame


async def test_going_offline_records_last_seen_and_says_so_in_the_notice():
    presence = MemoryPresenceStore()
    recorder = PresenceRecorder(presence, worker_id="w")

    notice = await recorder.went_offline("alice")

    assert notice.event["online"] is False
    assert notice.event["last_seen"] == (await presence.last_seen(["alice"]))["alice"]


def test_events_that_are_not_messages_are_addressed_by_layer_group():
    [(group, deliver)] = to_group(4, {"type": "receipt"}, exclude_user=1)
    [(everyone, typing)] = to_username("bob", {"type": "typing"})

    assert group == "chat.group.4" and isinstance(deliver, Deliver)
    assert deliver.audience == Audience(group=4, exclude_user=1)
    assert everyone == LAYER_ALL and isinstance(typing, Typing) and typing.username == "bob"
