"""`search` and `history.around` (protocol 1.2) at protocol level, on the in-memory
layer and on a real Redis, and across two real workers where membership matters.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from tests.chatclient import ChatTestClient, WsClient, open_real_socket
from tests.conftest import REDIS_URL
from tests.servers import HttpSession, running_workers, worker_env

pytestmark = pytest.mark.django_db(transaction=True)

ALL = {"all": True}


@pytest.fixture(autouse=True)
def _room_for_many_searches(settings):
    """Each test asks more than the default command budget allows in a row."""
    settings.CHAT_RATE_BURST = 1000


async def send_ok(client: ChatTestClient | WsClient, to: dict[str, Any], body: str) -> int:
    ack = await client.request(type="send", to=to, body=body)
    assert ack["type"] == "ack", ack
    return int(ack["id"])


async def bodies(client: ChatTestClient | WsClient, q: str, **extra: Any) -> list[str]:
    reply = await client.request(type="search", q=q, **extra)
    assert reply["type"] == "search", reply
    return [result["message"]["body"] for result in reply["results"]]


async def test_search_finds_by_word_phrase_prefix_operator_and_script(layer, connect, alice, bob):
    alice_socket, bob_socket = await connect(alice), await connect(bob)
    await send_ok(alice_socket, ALL, "Release notes for Friday")
    await send_ok(alice_socket, {"user": "bob"}, "Привет, Боб! notes attached")
    await send_ok(bob_socket, ALL, "東京 meeting notes")

    reply = await bob_socket.request(type="search", q="NOTES")
    assert reply["more"] is False and "next" not in reply
    assert [r["message"]["body"] for r in reply["results"]] == [
        "東京 meeting notes",
        "Привет, Боб! notes attached",
        "Release notes for Friday",
    ]
    first = reply["results"][-1]
    assert first["message"]["from"] == "alice" and first["message"]["to"] == ALL
    assert first["spans"] == [[8, 13]]

    assert await bodies(bob_socket, '"release notes"') == ["Release notes for Friday"]
    assert await bodies(bob_socket, '"notes release"') == []
    assert await bodies(bob_socket, "fri") == ["Release notes for Friday"]
    assert await bodies(bob_socket, "привет") == ["Привет, Боб! notes attached"]
    assert await bodies(bob_socket, "東京") == ["東京 meeting notes"]
    assert await bodies(bob_socket, "notes from:alice -friday") == ["Привет, Боб! notes attached"]
    assert await bodies(bob_socket, "from:bob") == ["東京 meeting notes"]
    assert await bodies(bob_socket, "notes", of={"user": "alice"}) == [
        "Привет, Боб! notes attached"
    ]


async def test_search_pages_with_next(layer, connect, alice):
    socket = await connect(alice)
    ids = [await send_ok(socket, ALL, f"item {n}") for n in range(3)]

    page = await socket.request(type="search", q="item", limit=2)
    assert [r["message"]["id"] for r in page["results"]] == [ids[2], ids[1]]
    assert page["more"] is True and page["next"] == ids[1]
    rest = await socket.request(type="search", q="item", limit=2, before=page["next"])
    assert [r["message"]["id"] for r in rest["results"]] == [ids[0]] and rest["more"] is False


@pytest.mark.parametrize(
    ("command", "says"),
    [
        ({"q": '"open'}, "not closed"),
        ({"q": "has:pictures"}, "link or file"),
        ({"q": "before:someday"}, "YYYY-MM-DD"),
        ({"q": ""}, "nothing to search for"),
        ({"q": 5}, "q must be a string"),
        ({}, "search needs q"),
        ({"q": "x", "limit": 51}, "limit"),
        ({"q": "x", "before": "soon"}, "before"),
        ({"q": "x", "of": {"planet": "mars"}}, "of must be"),
    ],
)
async def test_a_bad_search_is_bad_command_saying_what_was_wrong(
    memory_layer, connect, alice, command, says
):
    socket = await connect(alice)
    reply = await socket.request(type="search", **command)
    assert reply["type"] == "error" and reply["code"] == "bad_command", reply
    assert says in reply["message"]
    # The socket goes on.
    assert (await socket.request(type="ping"))["type"] == "pong"


async def test_search_respects_membership_and_never_returns_a_deleted_message(
    layer, connect, alice, bob, carol
):
    alice_socket, bob_socket = await connect(alice), await connect(bob)
    carol_socket = await connect(carol)
    for client in (alice_socket, bob_socket):
        assert (await client.request(type="join", group="Plans"))["type"] == "joined"
    await send_ok(alice_socket, {"group": "Plans"}, "secret plan alpha")
    gone = await send_ok(alice_socket, ALL, "public plan beta")

    assert await bodies(bob_socket, "plan") == ["public plan beta", "secret plan alpha"]
    assert await bodies(carol_socket, "plan") == ["public plan beta"]
    refused = await carol_socket.request(type="search", q="plan in:Plans")
    assert refused["type"] == "error" and refused["code"] == "not_member"

    assert (await alice_socket.request(type="delete", id=gone))["type"] == "deleted"
    assert (await bob_socket.request(type="leave", group="Plans"))["type"] == "left"

    assert await bodies(bob_socket, "plan") == []
    assert await bodies(alice_socket, "plan") == ["secret plan alpha"]
    assert await bodies(alice_socket, "beta") == []


async def test_a_removed_member_no_longer_finds_the_group(layer, connect, alice, bob):
    alice_socket, bob_socket = await connect(alice), await connect(bob)
    assert (await alice_socket.request(type="create", group="Board", private=True))["created"]
    assert (await alice_socket.request(type="invite", group="Board", user="bob"))["by"] == "alice"
    kept = await send_ok(alice_socket, {"group": "Board"}, "quarterly numbers attached")
    assert await bodies(bob_socket, "quarterly") == ["quarterly numbers attached"]

    removed = await alice_socket.request(type="remove", group="Board", user="bob")
    assert removed["type"] == "left"

    assert await bodies(bob_socket, "quarterly") == []
    for q in ("quarterly in:Board", "in:Board"):
        reply = await bob_socket.request(type="search", q=q)
        assert reply["type"] == "error" and reply["code"] == "not_member", reply
    around = await bob_socket.request(type="history", of={"group": "Board"}, around=kept)
    assert around["type"] == "error" and around["code"] == "not_member"
    assert await bodies(alice_socket, "quarterly") == ["quarterly numbers attached"]


async def test_history_around_jumps_to_a_message(layer, connect, alice):
    socket = await connect(alice)
    ids = [await send_ok(socket, ALL, f"m{n}") for n in range(7)]

    reply = await socket.request(type="history", of=ALL, around=ids[2], limit=4)
    assert [m["id"] for m in reply["messages"]] == ids[0:4]
    assert reply["more"] is False and reply["newer"] is True
    both = await socket.request(type="history", of=ALL, around=ids[2], before=ids[3])
    assert both["type"] == "error" and both["code"] == "bad_command"


# -- two real workers --------------------------------------------------------------


@pytest.fixture
def two_workers(redis_prefix):
    env = worker_env(redis_url=REDIS_URL, redis_prefix=redis_prefix)
    env["CHAT_RATE_BURST"] = "200"
    with running_workers(2, env) as workers:
        yield workers


@pytest.fixture
async def sockets():
    opened: list[WsClient] = []

    async def open_socket(worker: Any, cookie: str, username: str) -> WsClient:
        client = await open_real_socket(worker.base_url, cookie, username)
        opened.append(client)
        return client

    yield open_socket
    for client in opened:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.close(), 5)


@pytest.mark.processes
async def test_across_workers_a_member_finds_the_group_until_removed(two_workers, sockets):
    first, second = two_workers
    alice = await sockets(first, HttpSession(first.base_url).signup("alice"), "alice")
    bob = await sockets(second, HttpSession(second.base_url).signup("bob"), "bob")
    bob_on_first = await sockets(first, HttpSession(first.base_url).login("bob"), "bob")
    for client in (alice, bob):
        assert (await client.request(type="join", group="Ops"))["type"] == "joined"
    await send_ok(alice, {"group": "Ops"}, "Ключ от сервера: rotate keys")
    edited = await send_ok(alice, {"group": "Ops"}, "draft text")
    assert (await alice.request(type="edit", id=edited, body="final wording"))["type"] == "edited"

    assert await bodies(bob, "ключ") == ["Ключ от сервера: rotate keys"]
    assert await bodies(bob, "final in:ops") == ["final wording"]
    assert await bodies(bob, "draft") == []

    # Leaving on one worker: the other worker's next search no longer shows the group.
    assert (await bob_on_first.request(type="leave", group="Ops"))["type"] == "left"
    assert await bodies(bob, "ключ") == []
    reply = await bob.request(type="search", q="rotate in:Ops")
    assert reply["type"] == "error" and reply["code"] == "not_member"
