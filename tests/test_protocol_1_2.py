"""Protocol 1.2 at protocol level, on the in-memory layer and on a real Redis:
`edit`, `delete`, `react`, `unreact`, `changes`, `send.reply_to`, mentions,
`hello.last_rev`, and the 1.2 fields of every message object.
"""

from __future__ import annotations

from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.contrib.auth.models import Permission

from chat.actions import queries
from chat.models import Message
from chat.profiles import set_name
from tests.chatclient import ChatTestClient
from tests.conftest import make_user

pytestmark = pytest.mark.django_db(transaction=True)

ALL = {"all": True}
MESSAGE_FIELDS = {"rev", "edited_at", "deleted", "reply_to", "reactions", "mentions", "files"}


async def send_ok(client: ChatTestClient, to: dict[str, Any], body: str, **extra: Any) -> int:
    ack = await client.request(type="send", to=to, body=body, **extra)
    assert ack["type"] == "ack", ack
    return int(ack["id"])


async def error_of(client: ChatTestClient, **command: Any) -> str:
    reply = await client.request(**command)
    assert reply["type"] == "error", reply
    assert reply["message"]
    return str(reply["code"])


async def test_every_message_object_carries_the_new_fields(layer, connect, alice, bob):
    alice_socket, bob_socket = await connect(alice), await connect(bob)
    first = await send_ok(alice_socket, {"user": "bob"}, "hi @bob")

    live = await bob_socket.expect("message", id=first)
    history = await bob_socket.request(type="history", of={"user": "alice"})
    synced = await bob_socket.request(type="sync", since=0)
    listed = await bob_socket.request(type="conversations")
    changes = await bob_socket.request(type="changes", since=0)

    for message in (
        live,
        history["messages"][0],
        synced["messages"][0],
        listed["items"][0]["last"],
        changes["messages"][0],
    ):
        assert message.keys() >= MESSAGE_FIELDS, message
        assert message["rev"] == first
        assert message["edited_at"] is None and message["deleted"] is False
        assert message["reply_to"] is None and message["reactions"] == []
        assert message["mentions"] == ["bob"]
    assert listed["items"][0]["mentions"] == 1


async def test_an_edit_reaches_the_audience_and_the_editors_other_sockets(
    layer, connect, alice, bob, carol
):
    alice1, alice2 = await connect(alice), await connect(alice)
    bob_socket, carol_socket = await connect(bob), await connect(carol)
    sent = await send_ok(alice1, {"user": "bob"}, "helo")

    reply = await alice1.request(type="edit", id=sent, body="hello @bob")

    assert reply["type"] == "edited"
    assert reply["message"]["body"] == "hello @bob"
    assert reply["message"]["rev"] > sent
    assert reply["new_mentions"] == ["bob"]
    for client in (alice2, bob_socket):
        event = await client.expect("edited")
        assert "ref" not in event
        assert event["message"] == reply["message"]
        assert event["new_mentions"] == ["bob"]
    await alice1.assert_nothing("edited")
    await carol_socket.assert_nothing("edited")


async def test_edit_errors(layer, connect, alice, bob, carol, settings):
    alice_socket, bob_socket = await connect(alice), await connect(bob)
    carol_socket = await connect(carol)
    sent = await send_ok(alice_socket, {"user": "bob"}, "mine")

    assert await error_of(bob_socket, type="edit", id=sent, body="x") == "not_yours"
    assert await error_of(carol_socket, type="edit", id=sent, body="x") == "no_such_message"
    assert await error_of(alice_socket, type="edit", id=10**9, body="x") == "no_such_message"
    assert await error_of(alice_socket, type="edit", id=sent, body="") == "empty_body"
    assert await error_of(alice_socket, type="edit", id=sent, body="x" * 5000) == "too_large"
    assert await error_of(alice_socket, type="edit", id="1", body="x") == "bad_command"
    assert await error_of(alice_socket, type="edit", body="x") == "bad_command"
    settings.CHAT_EDIT_WINDOW = 1
    await database_sync_to_async(
        lambda: Message.objects.filter(id=sent).update(
            created_at=Message.objects.get(id=sent).created_at.replace(year=2000)
        )
    )()
    assert await error_of(alice_socket, type="edit", id=sent, body="late") == "too_late"


async def test_a_delete_leaves_a_tombstone_for_everyone(layer, connect, alice, bob, carol):
    alice_socket, bob_socket = await connect(alice), await connect(bob)
    carol_socket = await connect(carol)
    sent = await send_ok(alice_socket, ALL, "oops")

    assert await error_of(bob_socket, type="delete", id=sent) == "not_yours"
    reply = await alice_socket.request(type="delete", id=sent)

    assert reply["type"] == "deleted"
    tombstone = reply["message"]
    assert tombstone["deleted"] is True and tombstone["body"] == ""
    for client in (bob_socket, carol_socket):
        event = await client.expect("deleted")
        assert event["message"] == tombstone and "ref" not in event
    history = await carol_socket.request(type="history", of=ALL)
    assert history["messages"][0]["deleted"] is True
    assert history["messages"][0]["body"] == ""


async def test_a_moderator_deletes_over_the_protocol(layer, connect, alice, bob):
    alice_socket = await connect(alice)
    sent = await send_ok(alice_socket, ALL, "spam")
    await database_sync_to_async(
        lambda: bob.user_permissions.add(Permission.objects.get(codename="delete_message"))
    )()
    bob_socket = await connect(bob)

    reply = await bob_socket.request(type="delete", id=sent)

    assert reply["type"] == "deleted" and reply["message"]["deleted"] is True
    await alice_socket.expect("deleted")


async def test_reactions_are_counted_and_told_to_the_audience(layer, connect, alice, bob, carol):
    alice_socket, bob_socket = await connect(alice), await connect(bob)
    carol_socket = await connect(carol)
    for client in (alice_socket, bob_socket):
        assert (await client.request(type="join", group="Team"))["type"] == "joined"
    sent = await send_ok(alice_socket, {"group": "team"}, "vote")

    reply = await bob_socket.request(type="react", id=sent, emoji="👍")

    assert reply["type"] == "reaction"
    assert {k: reply[k] for k in ("id", "to", "emoji", "user", "on", "count")} == {
        "id": sent,
        "to": {"group": "Team"},
        "emoji": "👍",
        "user": "bob",
        "on": True,
        "count": 1,
    }
    event = await alice_socket.expect("reaction", id=sent)
    assert "ref" not in event and event["rev"] == reply["rev"] > sent
    await carol_socket.assert_nothing("reaction")

    again = await bob_socket.request(type="react", id=sent, emoji="👍")
    assert again["type"] == "reaction" and again["count"] == 1 and again["rev"] == reply["rev"]
    await alice_socket.assert_nothing("reaction")

    off = await bob_socket.request(type="unreact", id=sent, emoji="👍")
    assert off["on"] is False and off["count"] == 0 and off["rev"] > reply["rev"]
    await alice_socket.expect("reaction", id=sent, on=False)

    assert await error_of(bob_socket, type="react", id=sent, emoji="❤") == "bad_emoji"
    assert await error_of(bob_socket, type="react", id=sent, emoji="no") == "bad_emoji"
    assert await error_of(bob_socket, type="react", id=sent, emoji="x" * 100) == "bad_emoji"
    assert await error_of(bob_socket, type="react", id=sent, emoji=5) == "bad_command"
    assert await error_of(carol_socket, type="react", id=sent, emoji="👍") == "no_such_message"


async def test_too_many_distinct_emoji_are_refused(layer, connect, alice, settings):
    settings.CHAT_RATE_BURST = 100
    alice_socket = await connect(alice)
    sent = await send_ok(alice_socket, ALL, "all the faces")
    faces = list("😀😃😄😁😆😅🤣😂🙂🙃😉😊😇🥰😍🤩😘😗😚😙")
    for face in faces:
        assert (await alice_socket.request(type="react", id=sent, emoji=face))["type"] == "reaction"

    assert await error_of(alice_socket, type="react", id=sent, emoji="👍") == "too_many_reactions"


async def test_a_reply_quotes_and_a_foreign_reply_is_refused(layer, connect, alice, bob, carol):
    alice_socket, bob_socket = await connect(alice), await connect(bob)
    carol_socket = await connect(carol)
    original = await send_ok(alice_socket, {"user": "bob"}, "lunch?")
    private = await send_ok(carol_socket, {"user": "alice"}, "secret")
    await alice_socket.request(type="profile", name="Alice L.")

    reply_id = await send_ok(bob_socket, {"user": "alice"}, "yes", reply_to=original)
    event = await alice_socket.expect("message", id=reply_id)
    history = await bob_socket.request(type="history", of={"user": "alice"})

    quoted = {"id": original, "from": "alice", "from_name": "Alice L.", "excerpt": "lunch?"}
    assert event["reply_to"] == quoted
    assert history["messages"][-1]["reply_to"] == quoted
    assert (
        await error_of(bob_socket, type="send", to={"user": "alice"}, body="?", reply_to=private)
        == "no_such_message"
    )
    assert await error_of(bob_socket, type="send", to=ALL, body="?", reply_to="x") == "bad_command"


async def test_hello_last_rev_and_changes_after_a_disconnect(layer, connect, alice, bob, carol):
    alice_socket = await connect(alice)
    edited = await send_ok(alice_socket, ALL, "first")
    deleted = await send_ok(alice_socket, ALL, "second")
    reacted = await send_ok(alice_socket, ALL, "third")
    bob_socket = await connect(bob)
    seen = bob_socket.hello["last_rev"]
    assert seen == reacted == bob_socket.hello["last_id"]
    await bob_socket.close()

    await alice_socket.request(type="edit", id=edited, body="first!")
    await alice_socket.request(type="delete", id=deleted)
    await (await connect(carol)).request(type="react", id=reacted, emoji="🎉")

    again = await connect(bob)
    reply = await again.request(type="changes", since=seen)

    assert reply["type"] == "changes" and reply["more"] is False and "next" not in reply
    by_id = {m["id"]: m for m in reply["messages"]}
    assert list(by_id) == [edited, deleted, reacted]
    assert by_id[edited]["body"] == "first!" and by_id[edited]["edited_at"]
    assert by_id[deleted]["deleted"] is True and by_id[deleted]["body"] == ""
    assert by_id[reacted]["reactions"] == [{"emoji": "🎉", "count": 1, "users": ["carol"]}]
    assert again.hello["last_rev"] == reply["messages"][-1]["rev"]
    assert again.hello["last_id"] == reacted


async def test_changes_pages_with_next(layer, connect, alice, bob):
    alice_socket = await connect(alice)
    ids = [await send_ok(alice_socket, ALL, f"m{n}") for n in range(3)]
    bob_socket = await connect(bob)

    page = await bob_socket.request(type="changes", since=0, limit=2)
    rest = await bob_socket.request(type="changes", since=page["next"], limit=2)

    assert page["more"] is True and page["next"] == page["messages"][-1]["rev"]
    assert [m["id"] for m in page["messages"] + rest["messages"]] == ids
    assert rest["more"] is False
    assert await error_of(bob_socket, type="changes", since=0, limit=0) == "bad_command"
    assert await error_of(bob_socket, type="changes", since=0, limit=501) == "bad_command"
    assert await error_of(bob_socket, type="changes") == "bad_command"


async def test_an_edit_notifies_only_the_newly_mentioned(layer, connect, alice, bob, carol):
    alice_socket = await connect(alice)
    sent = await send_ok(alice_socket, ALL, "hey @bob")
    bob_socket = await connect(bob)

    reply = await alice_socket.request(type="edit", id=sent, body="hey @bob and @carol")

    assert reply["new_mentions"] == ["carol"]
    event = await bob_socket.expect("edited")
    assert event["new_mentions"] == ["carol"]
    assert event["message"]["mentions"] == ["bob", "carol"]


def _every_table_as_text() -> str:
    """Every row of every table in the database, as text."""
    from django.db import connection

    rows: list[str] = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names(cursor):
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")
            rows.extend(repr(row) for row in cursor.fetchall())
    return "\n".join(rows)


async def test_the_database_holds_nothing_of_a_deleted_message(layer, connect, alice, bob):
    alice_socket, bob_socket = await connect(alice), await connect(bob)
    earlier = await send_ok(bob_socket, {"user": "alice"}, "question")
    sent = await send_ok(
        alice_socket, {"user": "bob"}, "first-secret-wording @bob", reply_to=earlier
    )
    await alice_socket.request(type="edit", id=sent, body="second-secret-wording @bob")
    await bob_socket.request(type="react", id=sent, emoji="🦄")
    assert "first-secret-wording" in await database_sync_to_async(_every_table_as_text)()

    reply = await alice_socket.request(type="delete", id=sent)

    assert reply["type"] == "deleted"
    text = await database_sync_to_async(_every_table_as_text)()
    assert "secret-wording" not in text
    assert "🦄" not in text
    row = await database_sync_to_async(lambda: Message.objects.get(id=sent))()
    assert (row.body, row.mentions, row.reply_to_id) == ("", "", None)


# -- display names ---------------------------------------------------------------


async def test_a_changed_name_reaches_everyone_online_and_the_users_other_sockets(
    layer, connect, alice, bob, carol
):
    alice1, alice2 = await connect(alice), await connect(alice)
    bob_socket = await connect(bob)
    assert alice1.hello["name"] == "alice"

    reply = await alice1.request(type="profile", name=" Alice L. ")

    assert reply["type"] == "profile"
    assert (reply["user"], reply["name"]) == ("alice", "Alice L.")
    for client in (alice2, bob_socket):
        event = await client.expect("profile")
        assert event == {"type": "profile", "user": "alice", "name": "Alice L."}
    await alice1.assert_nothing("profile")
    carol_socket = await connect(carol)
    sent = await send_ok(carol_socket, ALL, "hello")
    live = await alice1.expect("message", id=sent)
    assert live["from_name"] == "carol"
    await send_ok(alice2, ALL, "from the other socket")
    seen = await bob_socket.expect("message", **{"from": "alice"})
    assert seen["from_name"] == "Alice L."
    users = await carol_socket.request(type="users", q="ali")
    assert users["users"][0]["name"] == "Alice L."
    assert (await connect(alice)).hello["name"] == "Alice L."


async def test_presence_carries_the_name_as_it_is_when_the_last_socket_closes(
    layer, connect, alice, bob
):
    await database_sync_to_async(set_name)(bob, "Bob B.")
    alice_socket = await connect(alice)
    bob1 = await connect(bob)
    online = await alice_socket.expect("presence", user="bob", online=True)
    assert online["name"] == "Bob B."
    bob2 = await connect(bob)

    await bob1.request(type="profile", name="Robert")
    await alice_socket.expect("profile", user="bob")
    await bob2.expect("profile", user="bob")
    await bob1.close()
    await bob2.close()  # opened with the old name: the notice has the new one

    offline = await alice_socket.expect("presence", user="bob", online=False)
    assert offline["name"] == "Robert"


async def test_the_name_in_hello_and_presence_costs_the_handshake_no_read(
    layer, connect, monkeypatch, alice, bob
):
    """It comes with the user the handshake read, not from a query of its own per socket."""
    await database_sync_to_async(set_name)(bob, "Robert")
    alice_socket = await connect(alice)

    def no_read(usernames: Any) -> dict[str, str]:
        raise AssertionError(f"the names of {usernames} were read")

    monkeypatch.setattr(queries, "names_of", no_read)
    bob_socket = await connect(bob)

    assert bob_socket.hello["name"] == "Robert"
    online = await alice_socket.expect("presence", user="bob", online=True)
    assert online["name"] == "Robert"


async def test_group_members_carry_names(layer, connect, alice, bob):
    alice_socket, bob_socket = await connect(alice), await connect(bob)
    for client in (alice_socket, bob_socket):
        assert (await client.request(type="join", group="G"))["type"] == "joined"
    await bob_socket.request(type="profile", name="Robert")
    members = await alice_socket.request(type="members", group="G")
    assert {(m["user"], m["name"]) for m in members["members"]} == {
        ("alice", "alice"),
        ("bob", "Robert"),
    }


async def test_users_finds_people_by_a_word_of_their_name_but_no_guest_offline(
    layer, connect, alice, bob, carol
):
    """The picker and `@` find people by the name they show ("lee" finds "Bob Lee")."""
    await make_user("leeroy")
    zoe = await make_user("zmartin")
    guest, former = await make_user("guest-24680"), await make_user("formerlee")
    named = ((bob, "Bob Lee"), (carol, "Carol Leeds"), (zoe, "Zoë Martin"))
    for user, name in (*named, (guest, "Lee Guest"), (former, "Lee Former")):
        await database_sync_to_async(set_name)(user, name)
    former.is_active = False
    await database_sync_to_async(former.save)()
    alice_socket = await connect(alice)
    await connect(carol)

    async def found(q: str) -> list[tuple[str, str, bool]]:
        reply = await alice_socket.request(type="users", q=q)
        assert reply["type"] == "users", reply
        return [(u["user"], u["name"], u["online"]) for u in reply["users"]]

    # The username prefix first, then the rest found by name, online first.
    assert await found("LEE") == [
        ("leeroy", "leeroy", False),
        ("carol", "Carol Leeds", True),
        ("bob", "Bob Lee", False),
    ]
    assert await found("carol le") == [("carol", "Carol Leeds", True)]
    assert await found("zoe") == [("zmartin", "Zoë Martin", False)]
    # A word prefix only, never the middle of a word; query syntax is only text.
    for q in ("ee", "%", "_", "'", "\\"):
        assert await found(q) == [], q
    for q in ("lee & !bob", "le:*|b", "b'"):
        assert await found(q) == [("bob", "Bob Lee", False)], q
    # A guest is listed only while online; an inactive user never.
    assert await found("guest") == []
    await connect(guest)
    assert await found("lee guest") == [("guest-24680", "Lee Guest", True)]


async def test_a_bad_name_is_refused_and_the_socket_stays_open(layer, connect, alice):
    alice_socket = await connect(alice)
    for name in ("", "x" * 65, "a\u202eb", None):
        assert await error_of(alice_socket, type="profile", name=name) == "bad_command"
    assert (await alice_socket.request(type="ping"))["type"] == "pong"
    assert (await connect(alice)).hello["name"] == "alice"
