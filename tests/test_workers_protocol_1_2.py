"""Protocol 1.2 across two real daphne workers sharing one Redis: `edited`,
`deleted`, `reaction` and `profile` reach the audience on the other worker,
and two workers changing messages at the same moment lose no change.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from tests.chatclient import WsClient, open_real_socket
from tests.conftest import REDIS_URL
from tests.servers import HttpSession, Worker, running_workers, worker_env

pytestmark = [pytest.mark.processes, pytest.mark.django_db(transaction=True)]

ALL = {"all": True}


@pytest.fixture
def two_workers(redis_prefix):
    env = worker_env(redis_url=REDIS_URL, redis_prefix=redis_prefix)
    # The concurrency test sends a few dozen changes at once.
    env["CHAT_RATE_BURST"] = "200"
    with running_workers(2, env) as workers:
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


async def test_edited_deleted_and_reaction_cross_workers(two_workers, sockets):
    first, second = two_workers
    alice = await sockets.open(first, HttpSession(first.base_url).signup("alice"), "alice")
    bob = await sockets.open(second, HttpSession(second.base_url).signup("bob"), "bob")
    alice_on_second = await sockets.open(
        second, HttpSession(second.base_url).login("alice"), "alice"
    )

    ack = await alice.request(type="send", to={"user": "bob"}, body="helo")
    edited = await alice.request(type="edit", id=ack["id"], body="hello @bob")
    assert edited["type"] == "edited"
    for client in (bob, alice_on_second):
        event = await client.expect("edited")
        assert event["message"] == edited["message"] and event["new_mentions"] == ["bob"]

    reaction = await bob.request(type="react", id=ack["id"], emoji="👍")
    assert reaction["type"] == "reaction" and reaction["count"] == 1
    event = await alice.expect("reaction", id=ack["id"])
    assert event["user"] == "bob" and event["on"] is True and event["rev"] == reaction["rev"]

    deleted = await alice.request(type="delete", id=ack["id"])
    assert deleted["type"] == "deleted"
    for client in (bob, alice_on_second):
        event = await client.expect("deleted")
        assert event["message"]["deleted"] is True and event["message"]["body"] == ""


async def test_a_new_name_reaches_the_other_worker_and_its_presence_notices(two_workers, sockets):
    first, second = two_workers
    alice = await sockets.open(first, HttpSession(first.base_url).signup("alice"), "alice")
    bob_there = await sockets.open(second, HttpSession(second.base_url).signup("bob"), "bob")
    await alice.expect("presence", user="bob", online=True, name="bob")
    bob_here = await sockets.open(first, HttpSession(first.base_url).login("bob"), "bob")

    renamed = await bob_there.request(type="profile", name="Robert")
    assert renamed["type"] == "profile"
    for client in (alice, bob_here):
        event = await client.expect("profile", user="bob")
        assert event == {"type": "profile", "user": "bob", "name": "Robert"}

    # Bob's last socket is on the first worker, which learnt the name from the second.
    await bob_there.close()
    await bob_here.close()
    await alice.expect("presence", user="bob", online=False, name="Robert")


async def test_two_workers_changing_at_the_same_moment_lose_no_change(two_workers, sockets):
    first, second = two_workers
    alice = await sockets.open(first, HttpSession(first.base_url).signup("alice"), "alice")
    bob = await sockets.open(second, HttpSession(second.base_url).signup("bob"), "bob")
    targets = [(await alice.request(type="send", to=ALL, body=f"t{n}"))["id"] for n in range(3)]
    start = alice.hello["last_rev"]
    faces = list("😀😃😄😁😆😅🤣😂🙂🙃")

    async def all_at_once(client: WsClient, commands: list[dict]) -> list[dict]:
        """Every command sent before any answer is read: the worker has them all at once."""
        refs = [f"{client.username}-{n}" for n in range(len(commands))]
        for ref, command in zip(refs, commands, strict=True):
            await client.send(ref=ref, **command)
        return [await client.answer(ref) for ref in refs]

    async def react_all(client: WsClient) -> list[dict]:
        reacts = [
            {"type": "react", "id": target, "emoji": face} for target in targets for face in faces
        ]
        return await all_at_once(client, reacts)

    async def edit_all(client: WsClient) -> list[dict]:
        edits = [
            {"type": "edit", "id": target, "body": f"edit {n}"}
            for n in range(5)
            for target in targets
        ]
        return await all_at_once(client, edits)

    reactions, edits = await asyncio.gather(react_all(bob), edit_all(alice))

    replies = reactions + edits
    assert all(r["type"] in ("reaction", "edited") for r in replies), replies
    revs = [r["rev"] if r["type"] == "reaction" else r["message"]["rev"] for r in replies]
    assert len(set(revs)) == len(revs), "two changes got one rev"
    later = await sockets.open(first, HttpSession(first.base_url).signup("carol"), "carol")
    listed = await later.request(type="changes", since=start)
    by_id = {m["id"]: m for m in listed["messages"]}
    assert set(by_id) == set(targets)
    for target in targets:
        mine = [rev for reply, rev in zip(replies, revs, strict=True) if _target(reply) == target]
        assert by_id[target]["rev"] == max(mine)
        assert [r["emoji"] for r in by_id[target]["reactions"]] == faces
    assert later.hello["last_rev"] == max(revs)


def _target(reply: dict) -> int:
    return int(reply["id"] if reply["type"] == "reaction" else reply["message"]["id"])


async def test_a_member_removed_on_one_worker_hears_nothing_more_on_the_other(two_workers, sockets):
    """Issue 27: `invite`, `role` and `remove` across workers; from the removal
    on, the removed member's sockets on the other worker get nothing of the group."""
    first, second = two_workers
    alice = await sockets.open(first, HttpSession(first.base_url).signup("alice"), "alice")
    bob_cookie = HttpSession(second.base_url).signup("bob")
    bobs = [await sockets.open(w, bob_cookie, "bob") for w in (second, first)]
    carol = await sockets.open(second, HttpSession(second.base_url).signup("carol"), "carol")

    await alice.request(type="create", group="Crew", private=True)
    await alice.request(type="invite", group="Crew", user="bob")
    for bob in bobs:
        await bob.expect("joined", group="Crew", user="bob", by="alice", private=True)
    # The worker that did not make the change knows the group now: bob may type to it.
    await bobs[0].send(type="typing", to={"group": "Crew"})
    await alice.expect("typing", user="bob", to={"group": "Crew"})
    listed = await carol.request(type="groups", q="")
    assert "Crew" not in [g["group"] for g in listed["groups"]]
    await alice.request(type="role", group="Crew", user="bob", role="admin")
    for bob in bobs:
        await bob.expect("role", group="Crew", user="bob", role="admin", by="alice")
    before = await alice.request(type="send", to={"group": "Crew"}, body="before")
    for bob in bobs:
        await bob.expect("message", id=before["id"])

    removed = await alice.request(type="remove", group="Crew", user="bob")
    assert removed["type"] == "left" and removed["by"] == "alice"
    for bob in bobs:
        await bob.expect("left", group="Crew", user="bob", by="alice")

    await alice.send(type="typing", to={"group": "Crew"})
    after = await alice.request(type="send", to={"group": "Crew"}, body="after")
    await alice.request(type="read", of={"group": "Crew"}, id=after["id"])
    refused = await bobs[0].request(type="history", of={"group": "Crew"})
    assert refused["type"] == "error" and refused["code"] == "not_member"
    marker = await alice.request(type="send", to={"user": "bob"}, body="marker")
    for bob in bobs:
        await bob.expect("message", id=marker["id"])
        leaked = [e for e in bob.inbox if "Crew" in str(e)]
        assert not leaked, f"bob still hears Crew: {leaked}"
