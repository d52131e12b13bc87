"""Protocol 1.1 events across two real daphne workers sharing one Redis:
`read` to every connection of the reader, `receipt` and `typing` to the
audience on the other worker.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from tests.chatclient import WsClient, open_real_socket
from tests.conftest import REDIS_URL
from tests.servers import HttpSession, Worker, running_workers, worker_env

pytestmark = [pytest.mark.processes, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def two_workers(redis_prefix):
    with running_workers(2, worker_env(redis_url=REDIS_URL, redis_prefix=redis_prefix)) as workers:
        yield workers


@pytest.fixture
async def sockets():
    opened: list[WsClient] = []

    class Opener:
        async def open(self, worker: Worker, cookie: str, username: str) -> WsClient:
            client = await open_real_socket(worker.base_url, cookie, username)
            opened.append(client)
            return client

    yield Opener()
    for client in opened:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.close(), 5)


async def test_read_receipt_and_typing_cross_workers(two_workers, sockets):
    first, second = two_workers
    alice = await sockets.open(first, HttpSession(first.base_url).signup("alice"), "alice")
    bob = await sockets.open(second, HttpSession(second.base_url).signup("bob"), "bob")
    carol = await sockets.open(second, HttpSession(second.base_url).signup("carol"), "carol")
    bob_on_first = await sockets.open(first, HttpSession(first.base_url).login("bob"), "bob")

    # Typing, direct and in a group, from worker 1 to worker 2.
    await alice.send(type="typing", to={"user": "bob"})
    for client in (bob, bob_on_first):
        await client.expect("typing", user="alice", to={"user": "alice"})
    for client in (alice, bob, carol):
        assert (await client.request(type="join", group="Ops"))["type"] == "joined"
    await alice.send(type="typing", to={"group": "ops"})
    await bob.expect("typing", user="alice", to={"group": "Ops"})
    await carol.expect("typing", user="alice", to={"group": "Ops"})

    # A read on worker 2 reaches bob's socket on worker 1; the receipt reaches alice.
    ack = await alice.request(type="send", to={"user": "bob"}, body="across")
    reply = await bob.request(type="read", of={"user": "alice"}, id=ack["id"])
    assert reply["id"] == ack["id"]
    other = await bob_on_first.expect("read", of={"user": "alice"}, id=ack["id"])
    assert "ref" not in other
    receipt = await alice.expect("receipt", of={"user": "bob"})
    assert receipt == {"type": "receipt", "of": {"user": "bob"}, "user": "bob", "id": ack["id"]}

    # A group receipt from worker 2 reaches worker 1 and carol on worker 2.
    ack = await alice.request(type="send", to={"group": "Ops"}, body="group")
    await bob.request(type="read", of={"group": "OPS"}, id=ack["id"])
    for client in (alice, carol):
        await client.expect("receipt", of={"group": "Ops"}, user="bob", id=ack["id"])
    await bob_on_first.expect("read", of={"group": "Ops"}, id=ack["id"])
