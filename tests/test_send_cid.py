"""Protocol 1.1 `cid` on `send`: a send repeated after a lost ack is stored once.

A client that lost its connection between sending and the ack cannot know
whether the message was stored. With a `cid` it may simply send again: the
server recognises the (sender, cid) pair and answers with the first ack,
storing and delivering nothing more. Tested in the store (both databases,
including two writers racing with one cid) and at protocol level on both
channel layers.
"""

from __future__ import annotations

import threading

import pytest
from django.db import connections

from chat.messaging import (
    SendRequest,
    StoredMessage,
    message_history,
    message_send,
    message_send_many,
    message_sync,
)
from chat.models import Message
from chat.protocol import BAD_COMMAND, NO_SUCH_USER, Address, ChatError
from tests.chatclient import ChatTestClient

pytestmark = pytest.mark.django_db(transaction=True)

TO_ALL = Address("all")
ALL = {"all": True}


# -- the store -----------------------------------------------------------------


def test_a_repeated_cid_returns_the_stored_message_and_stores_nothing(alice, bob):
    first = message_send(sender=alice, to=Address("user", "bob"), body="once", cid="c-1")
    again = message_send(sender=alice, to=Address("user", "bob"), body="once", cid="c-1")

    assert not first.replayed and again.replayed
    assert (again.id, again.ts) == (first.id, first.ts)
    assert again.event == first.event and first.event["cid"] == "c-1"
    assert Message.objects.filter(sender=alice).count() == 1


def test_the_same_cid_twice_in_one_batch_is_stored_once(alice):
    results = message_send_many(
        [
            SendRequest(alice, TO_ALL, "twice", "c-2"),
            SendRequest(alice, TO_ALL, "other", "c-3"),
            SendRequest(alice, TO_ALL, "twice", "c-2"),
        ]
    )

    assert all(isinstance(result, StoredMessage) for result in results), results
    first, other, repeat = results
    assert isinstance(first, StoredMessage) and isinstance(repeat, StoredMessage)
    assert repeat.id == first.id and repeat.replayed and not first.replayed
    assert isinstance(other, StoredMessage) and other.id > first.id
    assert Message.objects.count() == 2


def test_a_cid_belongs_to_its_sender_and_a_refused_send_does_not_use_it(alice, bob):
    with pytest.raises(ChatError) as refused:
        message_send(sender=alice, to=Address("user", "nobody"), body="x", cid="shared")
    assert refused.value.code == NO_SUCH_USER

    mine = message_send(sender=alice, to=TO_ALL, body="alice's", cid="shared")
    theirs = message_send(sender=bob, to=TO_ALL, body="bob's", cid="shared")

    assert not mine.replayed and not theirs.replayed and mine.id != theirs.id
    assert Message.objects.count() == 2


def test_sync_and_history_carry_the_cid_of_messages_sent_with_one(alice, bob):
    with_cid = message_send(sender=alice, to=Address("user", "bob"), body="a", cid="c-4")
    without = message_send(sender=alice, to=Address("user", "bob"), body="b")

    synced, _ = message_sync(user=bob, since=0)
    listed = message_history(user=bob, of=Address("user", "alice"), before=None, limit=10)

    for messages in (synced, listed):
        by_id = {message["id"]: message for message in messages}
        assert by_id[with_cid.id]["cid"] == "c-4"
        assert "cid" not in by_id[without.id]


ROUNDS = 15


def test_two_writers_racing_with_one_cid_store_it_once(alice):
    """Two workers storing the same (sender, cid) at the same moment, many times.

    Each writer's check for an earlier message can run before the other's
    commit; the unique constraint then refuses the second insert and the
    store tries again, which finds the first. Every round must end with one
    row and both writers holding its id.
    """
    barrier = threading.Barrier(2, timeout=30)
    results: dict[int, list[StoredMessage]] = {n: [] for n in range(ROUNDS)}
    lock = threading.Lock()
    errors: list[BaseException] = []

    def write() -> None:
        try:
            for n in range(ROUNDS):
                barrier.wait()
                stored = message_send(sender=alice, to=TO_ALL, body=f"round {n}", cid=f"race-{n}")
                with lock:
                    results[n].append(stored)
        except BaseException as error:
            errors.append(error)
            barrier.abort()
        finally:
            connections.close_all()

    threads = [threading.Thread(target=write, name=f"writer-{n}") for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert not any(thread.is_alive() for thread in threads), "writers hung"
    assert not errors, errors
    for n, pair in results.items():
        assert len(pair) == 2 and pair[0].id == pair[1].id, (n, pair)
        assert sorted(stored.replayed for stored in pair) == [False, True], (n, pair)
    assert Message.objects.count() == ROUNDS


# -- the protocol ----------------------------------------------------------------


async def test_ack_and_message_carry_the_cid(layer, connect, alice, bob):
    alice_socket = await connect(alice)
    bob_socket = await connect(bob)

    ack = await alice_socket.request(type="send", to={"user": "bob"}, body="hi", cid="page-1")
    assert ack["type"] == "ack" and ack["cid"] == "page-1"
    own = await alice_socket.expect("message", id=ack["id"])
    theirs = await bob_socket.expect("message", id=ack["id"])
    assert own["cid"] == theirs["cid"] == "page-1"


async def test_a_send_without_cid_is_answered_as_in_version_1(layer, connect, alice):
    alice_socket = await connect(alice)

    ack = await alice_socket.request(type="send", to=ALL, body="plain")
    message = await alice_socket.expect("message", id=ack["id"])

    assert set(ack) == {"type", "id", "ts", "ref"}
    assert "cid" not in message
    # null means "not given", as for every optional field.
    with_null = await alice_socket.request(type="send", to=ALL, body="null", cid=None)
    assert with_null["type"] == "ack" and "cid" not in with_null


async def test_a_send_repeated_after_a_lost_ack_is_neither_stored_nor_delivered_twice(
    layer, connect, alice, bob
):
    bob_socket = await connect(bob)
    first_socket = await connect(alice)
    ack = await first_socket.request(type="send", to={"user": "bob"}, body="maybe?", cid="k-9")
    await bob_socket.expect("message", id=ack["id"])
    # The ack was "lost": the client reconnects and sends the same message again.
    await first_socket.close()
    second_socket = await connect(alice)

    again = await second_socket.request(type="send", to={"user": "bob"}, body="maybe?", cid="k-9")
    after = await second_socket.request(type="send", to={"user": "bob"}, body="next")

    assert again["type"] == "ack"
    assert (again["id"], again["ts"], again["cid"]) == (ack["id"], ack["ts"], "k-9")
    # Deliveries come in id order: a second copy would come before "next".
    following = await bob_socket.expect("message")
    assert following["id"] == after["id"] and following["body"] == "next"
    assert await Message.objects.filter(body="maybe?").acount() == 1


@pytest.mark.parametrize(
    "cid",
    ["", "x" * 65, 7, True, ["a"], {"a": 1}, "nul\x00here"],
    ids=["empty", "too-long", "number", "bool", "list", "object", "nul"],
)
async def test_a_cid_that_is_not_a_short_string_is_bad_command(layer, connect, alice, cid):
    alice_socket: ChatTestClient = await connect(alice)

    reply = await alice_socket.request(type="send", to=ALL, body="x", cid=cid)

    assert reply["type"] == "error" and reply["code"] == BAD_COMMAND, reply
    assert "cid" in reply["message"]
    assert await Message.objects.acount() == 0
