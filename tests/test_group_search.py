"""`groups` (protocol 1.1) counts in the database and tells only members who is online.

A page of large groups must cost what a page of small ones does (issue 24,
finding 6: 50 groups of 4,000 members took 1.6 s and slowed everyone's
ping), and a stranger watching a group's `online` count could tell whether
someone going offline is one of its members (finding 7).
"""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import make_password
from django.db.backends.utils import CursorWrapper

from chat.models import ChatGroup, Membership, group_key

pytestmark = pytest.mark.django_db(transaction=True)

MEMBERS = 400


@database_sync_to_async
def big_groups(names: list[str], members: int) -> None:
    """Groups of `members` users each (the same users in all of them)."""
    password = make_password(None)
    users = get_user_model().objects.bulk_create(
        get_user_model()(username=f"member{n}", password=password) for n in range(members)
    )
    for name in names:
        group = ChatGroup.objects.create(name=name, key=group_key(name))
        Membership.objects.bulk_create(Membership(group=group, user=user) for user in users)


@pytest.fixture
def rows_read(monkeypatch) -> list[int]:
    """Counts every row any database cursor hands to the server while the test runs."""
    counted = [0]

    def fetchone(self):
        row = self.cursor.fetchone()
        counted[0] += row is not None
        return row

    def fetchmany(self, *args):
        rows = self.cursor.fetchmany(*args)
        counted[0] += len(rows)
        return rows

    def fetchall(self):
        rows = self.cursor.fetchall()
        counted[0] += len(rows)
        return rows

    for name, method in (("fetchone", fetchone), ("fetchmany", fetchmany), ("fetchall", fetchall)):
        monkeypatch.setattr(CursorWrapper, name, method, raising=False)
    return counted


async def test_a_page_of_large_groups_loads_none_of_their_members(layer, connect, alice, rows_read):
    await big_groups(["Big A", "Big B", "Big C"], MEMBERS)
    alice_socket = await connect(alice)
    assert (await alice_socket.request(type="join", group="Big B"))["type"] == "joined"

    before = rows_read[0]
    reply = await alice_socket.request(type="groups", q="big")
    read = rows_read[0] - before

    # The three groups and the online count of alice's one: not a row per member.
    assert read < 10, f"{read} rows read for one page of {3 * MEMBERS} memberships"
    assert reply["groups"] == [
        {"group": "Big A", "members": MEMBERS, "online": None, "member": False, "private": False},
        {"group": "Big B", "members": MEMBERS + 1, "online": 1, "member": True, "private": False},
        {"group": "Big C", "members": MEMBERS, "online": None, "member": False, "private": False},
    ]


async def test_online_is_told_to_members_only(layer, connect, alice, bob, carol):
    alice_socket, bob_socket = await connect(alice), await connect(bob)
    await connect(carol)
    for socket, group in ((bob_socket, "Secret"), (alice_socket, "Open"), (bob_socket, "Open")):
        assert (await socket.request(type="join", group=group))["type"] == "joined"

    as_stranger = await alice_socket.request(type="groups", q="secret")
    as_member = await bob_socket.request(type="groups", q="secret")
    open_group = await alice_socket.request(type="groups", q="open")

    assert as_stranger["groups"] == [
        {"group": "Secret", "members": 1, "online": None, "member": False, "private": False}
    ]
    assert as_member["groups"] == [
        {"group": "Secret", "members": 1, "online": 1, "member": True, "private": False}
    ]
    assert open_group["groups"] == [
        {"group": "Open", "members": 2, "online": 2, "member": True, "private": False}
    ]
