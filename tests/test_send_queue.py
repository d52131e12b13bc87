"""chat.send_queue: sends stored in batches (group commit), delivered in id order.

On the in-memory layer and on a real Redis. A batch can be held in the
database thread (`store.hold_first()`), so that what arrives meanwhile queues
up: batch boundaries are then exact, not a matter of timing.
"""

from __future__ import annotations

import asyncio
import threading

import pytest
from asgiref.sync import sync_to_async

from chat import send_queue
from chat.messaging import message_send_many
from chat.models import Message
from chat.protocol import NO_SUCH_USER, UNAVAILABLE, Address, ChatError
from chat.worker import current_worker
from tests.chatclient import TIMEOUT
from tests.conftest import refusing_message_inserts

pytestmark = pytest.mark.django_db(transaction=True)

TO_ALL = Address("all")
TO_BOB = Address("user", "bob")


class RecordingStore:
    """`message_send_many` as the queue calls it, recording each batch's bodies."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.release.set()

    def hold_first(self) -> None:
        """Keep the first batch in the database thread until `release` is set."""
        self.release.clear()

    def __call__(self, requests):
        self.batches.append([request.body for request in requests])
        if len(self.batches) == 1:
            self.entered.set()
            if not self.release.wait(TIMEOUT):
                raise RuntimeError("the test never released the first batch")
        return message_send_many(requests)

    async def first_batch_entered(self) -> None:
        assert await asyncio.to_thread(self.entered.wait, TIMEOUT), "no batch reached the store"

    async def submit_behind_held_batch(self, queue, sender, first, later):
        """Submit `first` (to, body) and hold its batch in the database, then each of
        `later` so that they queue behind it; the caller sets `release`."""
        self.hold_first()
        held = asyncio.ensure_future(queue.submit(sender, *first))
        await self.first_batch_entered()
        waiting = [asyncio.ensure_future(queue.submit(sender, to, body)) for to, body in later]
        await queued()
        return held, waiting


@pytest.fixture
def store(monkeypatch):
    recording = RecordingStore()
    monkeypatch.setattr(send_queue, "message_send_many", recording)
    yield recording
    recording.release.set()  # never leave the database thread waiting


@sync_to_async
def stored_bodies() -> list[str]:
    return list(Message.objects.order_by("id").values_list("body", flat=True))


async def queued() -> None:
    """One turn of the loop: every task created so far has queued its send."""
    await asyncio.sleep(0)


async def received_messages(client, count: int) -> list[dict]:
    return [await client.expect("message") for _ in range(count)]


async def test_a_lone_send_is_stored_at_once_as_a_batch_of_one(layer, store, alice, bob):
    queue = current_worker().send_queue
    for n in range(3):
        await asyncio.wait_for(queue.submit(alice, TO_BOB, f"m{n}"), TIMEOUT)

    assert store.batches == [["m0"], ["m1"], ["m2"]]


async def test_sends_arriving_during_a_batch_form_the_next_one_and_are_delivered_in_id_order(
    layer, connect, store, alice, bob
):
    bob1 = await connect(bob)
    queue = current_worker().send_queue
    first, rest = await store.submit_behind_held_batch(
        queue, alice, (TO_ALL, "first"), [(TO_BOB if n % 2 else TO_ALL, f"m{n}") for n in range(49)]
    )
    store.release.set()

    stored = await asyncio.wait_for(asyncio.gather(first, *rest), TIMEOUT)

    bodies = ["first"] + [f"m{n}" for n in range(49)]
    assert store.batches == [["first"], bodies[1:]]
    ids = [message.id for message in stored]
    assert ids == sorted(set(ids)) and len(ids) == 50
    assert [message.event["body"] for message in stored] == bodies
    assert [m["id"] for m in await received_messages(bob1, 50)] == ids
    await bob1.assert_nothing("message", timeout=0.05)
    assert await stored_bodies() == bodies


async def test_a_batch_takes_at_most_max_batch_sends(layer, store, monkeypatch, alice):
    monkeypatch.setattr(send_queue, "MAX_BATCH", 4)
    queue = current_worker().send_queue
    first, rest = await store.submit_behind_held_batch(
        queue, alice, (TO_ALL, "first"), [(TO_ALL, f"m{n}") for n in range(10)]
    )
    store.release.set()

    stored = await asyncio.wait_for(asyncio.gather(first, *rest), TIMEOUT)

    assert store.batches == [
        ["first"],
        ["m0", "m1", "m2", "m3"],
        ["m4", "m5", "m6", "m7"],
        ["m8", "m9"],
    ]
    ids = [message.id for message in stored]
    assert ids == sorted(set(ids))


async def test_a_refused_send_gets_its_error_and_the_rest_of_its_batch_is_stored(
    layer, connect, store, alice, bob
):
    bob1 = await connect(bob)
    queue = current_worker().send_queue
    first, (refused, kept) = await store.submit_behind_held_batch(
        queue, alice, (TO_BOB, "first"), [(Address("user", "nobody"), "refused"), (TO_BOB, "kept")]
    )
    store.release.set()

    results = await asyncio.wait_for(
        asyncio.gather(first, refused, kept, return_exceptions=True), TIMEOUT
    )

    assert store.batches == [["first"], ["refused", "kept"]]
    assert isinstance(results[1], ChatError) and results[1].code == NO_SUCH_USER
    assert [m["body"] for m in await received_messages(bob1, 2)] == ["first", "kept"]
    assert await stored_bodies() == ["first", "kept"]


async def test_a_cancelled_sender_still_has_its_message_stored_and_delivered(
    layer, connect, store, alice, bob
):
    bob1 = await connect(bob)
    queue = current_worker().send_queue
    # Cancelled only once both are queued.
    in_database, (waiting, kept) = await store.submit_behind_held_batch(
        queue,
        alice,
        (TO_BOB, "cancelled while stored"),
        [(TO_BOB, "cancelled while queued"), (TO_BOB, "kept")],
    )
    in_database.cancel()
    waiting.cancel()
    store.release.set()

    await asyncio.wait_for(kept, TIMEOUT)

    assert in_database.cancelled() and waiting.cancelled()
    bodies = ["cancelled while stored", "cancelled while queued", "kept"]
    assert [m["body"] for m in await received_messages(bob1, 3)] == bodies
    assert await stored_bodies() == bodies
    after = await asyncio.wait_for(queue.submit(alice, TO_BOB, "after"), TIMEOUT)
    assert (await bob1.expect("message"))["id"] == after.id


async def test_the_writer_survives_a_failing_batch(layer, connect, monkeypatch, alice, bob):
    bob1 = await connect(bob)
    calls = 0

    def fail_once(requests):
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom")
        return message_send_many(requests)

    monkeypatch.setattr(send_queue, "message_send_many", fail_once)
    queue = current_worker().send_queue

    with pytest.raises(ChatError) as failed:
        await asyncio.wait_for(queue.submit(alice, TO_BOB, "lost"), TIMEOUT)
    stored = await asyncio.wait_for(queue.submit(alice, TO_BOB, "stored"), TIMEOUT)

    assert failed.value.code == UNAVAILABLE
    assert (await bob1.expect("message"))["id"] == stored.id
    await bob1.assert_nothing("message", timeout=0.05)
    assert await stored_bodies() == ["stored"]


async def test_a_database_failure_fails_the_whole_batch_and_stores_nothing(
    layer, connect, store, monkeypatch, alice, bob
):
    bob1 = await connect(bob)
    queue = current_worker().send_queue
    first, batch = await store.submit_behind_held_batch(
        queue, alice, (TO_BOB, "first"), [(TO_BOB, f"m{n}") for n in range(3)]
    )

    # The database refuses the second batch only.
    with refusing_message_inserts(lambda params: "m0" in (params or ())):
        store.release.set()
        await asyncio.wait_for(first, TIMEOUT)
        results = await asyncio.wait_for(asyncio.gather(*batch, return_exceptions=True), TIMEOUT)

    assert store.batches == [["first"], ["m0", "m1", "m2"]]
    assert [getattr(r, "code", r) for r in results] == [UNAVAILABLE] * 3
    assert (await bob1.expect("message"))["body"] == "first"
    await bob1.assert_nothing("message")
    assert await stored_bodies() == ["first"]
