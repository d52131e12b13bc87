"""Several daphne workers sharing one Redis and one database act as one server."""

from __future__ import annotations

import pytest

from tests.chatclient import open_real_socket
from tests.conftest import REDIS_URL
from tests.servers import HttpSession, running_workers, worker_env

pytestmark = [pytest.mark.processes, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def two_workers(redis_prefix):
    with running_workers(2, worker_env(redis_url=REDIS_URL, redis_prefix=redis_prefix)) as workers:
        yield workers


async def test_direct_message_crosses_workers(two_workers):
    first, second = two_workers
    alice_cookie = HttpSession(first.base_url).signup("alice")
    bob_cookie = HttpSession(second.base_url).signup("bob")
    alice = await open_real_socket(first.base_url, alice_cookie, "alice")
    bob = await open_real_socket(second.base_url, bob_cookie, "bob")
    try:
        await alice.expect("presence", user="bob", online=True)
        ack = await alice.request(type="send", to={"user": "bob"}, body="across")
        message = await bob.expect("message", id=ack["id"])
        assert message["body"] == "across"
        assert message["from"] == "alice"
    finally:
        await alice.close()
        await bob.close()
