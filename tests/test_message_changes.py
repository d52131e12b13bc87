"""Protocol 1.2 storage and rules, called directly: edit, delete, react, mention, reply, changes."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth.models import Permission, User
from django.db import connection, connections
from django.test.utils import CaptureQueriesContext

from chat.conversations import conversation_list
from chat.groups import group_join
from chat.mentions import MAX_CANDIDATES, candidates
from chat.message_changes import (
    MAX_EMOJI_PER_MESSAGE,
    is_emoji,
    message_changes,
    message_delete,
    message_edit,
    message_react,
    message_tombstone,
)
from chat.messaging import (
    SendRequest,
    StoredMessage,
    last_visible_revs,
    message_history,
    message_send,
    message_send_many,
)
from chat.models import Message, MessageEdit, Reaction
from chat.protocol import (
    BAD_EMOJI,
    NO_SUCH_MESSAGE,
    NOT_YOURS,
    TOO_LATE,
    TOO_MANY_REACTIONS,
    Address,
    ChatError,
)
from tests.conftest import _make_user

TO_ALL = Address("all")


def to_user(name: str) -> Address:
    return Address("user", name)


def to_group(name: str) -> Address:
    return Address("group", name)


def code_of(call) -> str:
    with pytest.raises(ChatError) as refused:
        call()
    return refused.value.code


def history_of(user: User, of: Address) -> list[dict]:
    return message_history(user=user, of=of, before=None, limit=100)


# -- mentions -----------------------------------------------------------------


def test_mentions_take_the_longest_username_after_the_at_sign(alice, bob, carol):
    _make_user("bob.smith")
    stored = message_send(
        sender=alice, to=TO_ALL, body="hi @bob. and (@carol), @bob.smith! @nobody @"
    )

    assert stored.event["mentions"] == ["bob", "bob.smith", "carol"]
    assert Message.objects.get(id=stored.id).mentions == " bob bob.smith carol "


def test_a_direct_message_mentions_only_its_other_party(alice, bob, carol):
    stored = message_send(sender=alice, to=to_user("bob"), body="@bob @carol look")

    assert stored.event["mentions"] == ["bob"]


def test_a_group_message_mentions_only_members(alice, bob, carol):
    group_join(user=alice, name="Team")
    group_join(user=bob, name="team")

    stored = message_send(sender=alice, to=to_group("TEAM"), body="@bob, @carol: hi")

    assert stored.event["mentions"] == ["bob"]


def test_a_hostile_body_is_cut_to_a_bounded_number_of_candidates():
    body = "@" + "a." * 2000 + " @b" * 500

    assert sum(len(names) for names in candidates(body)) <= MAX_CANDIDATES


def test_a_batch_without_at_signs_costs_no_extra_query_and_one_with_them_one(alice, bob):
    group_join(user=alice, name="team")
    group_join(user=bob, name="team")
    plain = [SendRequest(alice, to_group("team"), f"plain {n}") for n in range(5)]
    with CaptureQueriesContext(connection) as without:
        message_send_many(plain)
    mentioning = [SendRequest(alice, to_group("team"), f"@bob {n}") for n in range(5)]
    with CaptureQueriesContext(connection) as with_mentions:
        results = message_send_many(mentioning)

    assert all(isinstance(r, StoredMessage) for r in results)
    assert len(with_mentions.captured_queries) == len(without.captured_queries) + 1
    assert [r.event["mentions"] for r in results if isinstance(r, StoredMessage)] == [["bob"]] * 5


def test_direct_messages_resolve_mentions_without_a_query(alice, bob):
    plain = [SendRequest(alice, to_user("bob"), f"plain {n}") for n in range(3)]
    with CaptureQueriesContext(connection) as without:
        message_send_many(plain)
    mentioning = [SendRequest(alice, to_user("bob"), f"@bob {n}") for n in range(3)]
    with CaptureQueriesContext(connection) as with_mentions:
        message_send_many(mentioning)

    assert len(with_mentions.captured_queries) == len(without.captured_queries)


def test_unread_mentions_are_counted_per_conversation(alice, bob, carol):
    group_join(user=alice, name="team")
    group_join(user=bob, name="team")
    message_send(sender=alice, to=to_group("team"), body="@bob one")
    message_send(sender=alice, to=to_group("team"), body="no mention")
    message_send(sender=alice, to=to_group("team"), body="@bob two")
    message_send(sender=alice, to=TO_ALL, body="@BOB is not bob")
    message_send(sender=carol, to=TO_ALL, body="@bob hello")

    items, _ = conversation_list(user=bob, before=None, limit=10)
    by_name = {str(item["of"]): item for item in items}

    assert by_name[str({"group": "team"})]["mentions"] == 2
    assert by_name[str({"group": "team"})]["unread"] == 3
    assert by_name[str({"all": True})]["mentions"] == 1


# -- replies ------------------------------------------------------------------


def test_a_reply_quotes_the_start_of_the_message_it_answers(alice, bob):
    original = message_send(sender=bob, to=to_user("alice"), body="x" * 150)

    reply = message_send(sender=alice, to=to_user("bob"), body="yes", reply_to=original.id)

    assert reply.event["reply_to"] == {
        "id": original.id,
        "from": "bob",
        "from_name": "bob",
        "excerpt": "x" * 100,
    }
    [_, stored] = history_of(alice, to_user("bob"))
    assert stored["reply_to"] == reply.event["reply_to"]


def test_a_reply_to_another_conversation_or_to_no_message_is_refused(alice, bob, carol):
    elsewhere = message_send(sender=bob, to=to_user("carol"), body="private")
    group_join(user=alice, name="team")
    in_group = message_send(sender=alice, to=to_group("team"), body="group")

    assert (
        code_of(
            lambda: message_send(sender=alice, to=to_user("bob"), body="?", reply_to=elsewhere.id)
        )
        == NO_SUCH_MESSAGE
    )
    assert (
        code_of(lambda: message_send(sender=alice, to=TO_ALL, body="?", reply_to=in_group.id))
        == NO_SUCH_MESSAGE
    )
    assert (
        code_of(lambda: message_send(sender=alice, to=TO_ALL, body="?", reply_to=10**9))
        == NO_SUCH_MESSAGE
    )
    assert not Message.objects.filter(body="?").exists()


def test_a_refused_reply_leaves_the_rest_of_the_batch_stored(alice, bob):
    results = message_send_many(
        [
            SendRequest(alice, TO_ALL, "first"),
            SendRequest(alice, TO_ALL, "bad", reply_to=10**9),
            SendRequest(alice, TO_ALL, "third"),
        ]
    )

    assert isinstance(results[0], StoredMessage) and isinstance(results[2], StoredMessage)
    assert isinstance(results[1], ChatError) and results[1].code == NO_SUCH_MESSAGE
    assert results[0].id < results[2].id


# -- edit -----------------------------------------------------------------------


def test_the_author_edits_and_the_earlier_body_is_kept(alice, bob):
    stored = message_send(sender=alice, to=TO_ALL, body="helo")

    change = message_edit(user=alice, message_id=stored.id, body="hello")

    assert change.changed and change.kind == "edited" and change.everyone
    assert change.event["body"] == "hello"
    assert change.event["edited_at"] is not None
    assert change.event["rev"] > stored.id
    [kept] = MessageEdit.objects.filter(message_id=stored.id)
    assert (kept.body, kept.edited_by_id) == ("helo", alice.pk)
    assert history_of(bob, TO_ALL)[0]["body"] == "hello"


def test_only_the_author_may_edit(alice, bob):
    stored = message_send(sender=alice, to=TO_ALL, body="mine")

    assert code_of(lambda: message_edit(user=bob, message_id=stored.id, body="x")) == NOT_YOURS


def test_a_message_others_cannot_see_is_no_such_message(alice, bob, carol):
    stored = message_send(sender=alice, to=to_user("bob"), body="between us")

    assert (
        code_of(lambda: message_edit(user=carol, message_id=stored.id, body="x")) == NO_SUCH_MESSAGE
    )
    assert code_of(lambda: message_delete(user=carol, message_id=stored.id)) == NO_SUCH_MESSAGE
    assert (
        code_of(lambda: message_react(user=carol, message_id=stored.id, emoji="👍", on=True))
        == NO_SUCH_MESSAGE
    )


def test_editing_is_refused_after_the_window_and_allowed_any_time_with_zero(alice, settings):
    stored = message_send(sender=alice, to=TO_ALL, body="old")
    Message.objects.filter(id=stored.id).update(
        created_at=datetime.now(UTC) - timedelta(seconds=3601)
    )

    assert code_of(lambda: message_edit(user=alice, message_id=stored.id, body="x")) == TOO_LATE
    settings.CHAT_EDIT_WINDOW = 0
    assert message_edit(user=alice, message_id=stored.id, body="x").changed


def test_an_edit_tells_only_whom_it_newly_mentions(alice, bob, carol):
    stored = message_send(sender=alice, to=TO_ALL, body="hi @bob")

    change = message_edit(user=alice, message_id=stored.id, body="hi @bob and @carol")

    assert change.event["mentions"] == ["bob", "carol"]
    assert change.new_mentions == ["carol"]


def test_a_deleted_message_cannot_be_edited(alice):
    stored = message_send(sender=alice, to=TO_ALL, body="gone")
    message_delete(user=alice, message_id=stored.id)

    assert (
        code_of(lambda: message_edit(user=alice, message_id=stored.id, body="back"))
        == NO_SUCH_MESSAGE
    )


# -- delete -----------------------------------------------------------------------


def _tables_text() -> str:
    """Every text column of every chat table, as the database holds them."""
    tables = [m._meta.db_table for m in (Message, MessageEdit, Reaction)]
    found: list[str] = []
    with connection.cursor() as cursor:
        for table in tables:
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")
            found.extend(str(row) for row in cursor.fetchall())
    return "\n".join(found)


def test_nothing_of_a_deleted_message_stays_in_the_database(alice, bob):
    original = message_send(sender=bob, to=TO_ALL, body="first")
    stored = message_send(sender=alice, to=TO_ALL, body="secret-one @bob", reply_to=original.id)
    message_edit(user=alice, message_id=stored.id, body="secret-two @bob")
    message_react(user=bob, message_id=stored.id, emoji="👍", on=True)

    change = message_delete(user=alice, message_id=stored.id)

    assert change.changed and change.kind == "deleted"
    assert change.event["deleted"] is True
    assert change.event["body"] == ""
    assert change.event["reactions"] == [] and change.event["mentions"] == []
    assert change.event["reply_to"] is None
    text = _tables_text()
    assert "secret" not in text
    assert "👍" not in text
    row = Message.objects.get(id=stored.id)
    assert (row.body, row.mentions, row.reply_to_id, row.deleted) == ("", "", None, True)
    assert not MessageEdit.objects.filter(message_id=stored.id).exists()
    assert not Reaction.objects.filter(message_id=stored.id).exists()


def test_a_reply_to_a_deleted_message_quotes_nothing(alice, bob):
    original = message_send(sender=bob, to=TO_ALL, body="to be removed")
    reply = message_send(sender=alice, to=TO_ALL, body="answer", reply_to=original.id)
    message_delete(user=bob, message_id=original.id)

    [_, stored] = history_of(alice, TO_ALL)

    assert stored["id"] == reply.id
    assert stored["reply_to"] == {
        "id": original.id,
        "from": "bob",
        "from_name": "bob",
        "excerpt": "",
    }


def test_others_may_not_delete_but_a_moderator_may(alice, bob, carol):
    stored = message_send(sender=alice, to=TO_ALL, body="rude")

    assert code_of(lambda: message_delete(user=bob, message_id=stored.id)) == NOT_YOURS
    carol.user_permissions.add(Permission.objects.get(codename="delete_message"))
    assert message_delete(user=carol, message_id=stored.id).changed


def test_deleting_twice_changes_nothing_the_second_time(alice):
    stored = message_send(sender=alice, to=TO_ALL, body="once")
    first = message_delete(user=alice, message_id=stored.id)

    again = message_delete(user=alice, message_id=stored.id)

    assert not again.changed
    assert again.event["rev"] == first.event["rev"]


def test_the_admin_deletes_the_same_way(alice, bob):
    stored = message_send(sender=alice, to=to_user("bob"), body="admin removes")

    change = message_tombstone(stored.id)

    assert change is not None and change.changed
    assert change.user_ids and set(change.user_ids) == {alice.pk, bob.pk}
    assert "admin removes" not in _tables_text()


# -- reactions -----------------------------------------------------------------------


def test_emoji_must_be_one_fully_qualified_sequence():
    assert is_emoji("👍")
    assert is_emoji("👍🏽")
    assert is_emoji("❤️")
    assert is_emoji("👩‍👩‍👧")
    assert not is_emoji("❤")  # without its variation selector: not fully qualified
    assert not is_emoji("👍👍")
    assert not is_emoji(":+1:")
    assert not is_emoji("")
    assert not is_emoji("a")


def test_reactions_are_counted_per_emoji_in_order_of_first_use(alice, bob, carol):
    stored = message_send(sender=alice, to=TO_ALL, body="react to me")

    message_react(user=bob, message_id=stored.id, emoji="🎉", on=True)
    message_react(user=carol, message_id=stored.id, emoji="👍", on=True)
    change = message_react(user=alice, message_id=stored.id, emoji="🎉", on=True)

    assert change.changed
    assert change.event == {
        "id": stored.id,
        "to": {"all": True},
        "emoji": "🎉",
        "user": "alice",
        "on": True,
        "count": 2,
        "rev": change.event["rev"],
    }
    [message] = history_of(bob, TO_ALL)
    assert message["reactions"] == [
        {"emoji": "🎉", "count": 2, "users": ["bob", "alice"]},
        {"emoji": "👍", "count": 1, "users": ["carol"]},
    ]
    assert message["rev"] == change.event["rev"]


def test_reacting_again_or_removing_what_is_not_there_changes_nothing(alice, bob):
    stored = message_send(sender=alice, to=TO_ALL, body="once")
    first = message_react(user=bob, message_id=stored.id, emoji="👍", on=True)

    again = message_react(user=bob, message_id=stored.id, emoji="👍", on=True)
    absent = message_react(user=bob, message_id=stored.id, emoji="🎉", on=False)

    assert not again.changed and not absent.changed
    assert again.event["rev"] == first.event["rev"] == absent.event["rev"]
    assert Reaction.objects.count() == 1
    removed = message_react(user=bob, message_id=stored.id, emoji="👍", on=False)
    assert removed.changed and removed.event["count"] == 0
    assert removed.event["rev"] > first.event["rev"]


def test_a_message_holds_at_most_twenty_distinct_emoji(alice, bob):
    stored = message_send(sender=alice, to=TO_ALL, body="many")
    some = [e for e in ("😀😃😄😁😆😅🤣😂🙂🙃😉😊😇🥰😍🤩😘😗😚😙😋")][:MAX_EMOJI_PER_MESSAGE]
    for emoji in some:
        message_react(user=alice, message_id=stored.id, emoji=emoji, on=True)

    assert (
        code_of(lambda: message_react(user=bob, message_id=stored.id, emoji="👍", on=True))
        == TOO_MANY_REACTIONS
    )
    assert message_react(user=bob, message_id=stored.id, emoji=some[0], on=True).changed


def test_a_reaction_lists_at_most_twenty_users_but_counts_all(alice):
    stored = message_send(sender=alice, to=TO_ALL, body="popular")
    people = [_make_user(f"fan{n:02}") for n in range(22)]
    for person in people:
        message_react(user=person, message_id=stored.id, emoji="👍", on=True)

    [message] = history_of(alice, TO_ALL)

    assert message["reactions"][0]["count"] == 22
    assert message["reactions"][0]["users"] == [p.username for p in people[:20]]


def test_bad_emoji_and_deleted_messages_are_refused(alice):
    stored = message_send(sender=alice, to=TO_ALL, body="x")

    assert (
        code_of(lambda: message_react(user=alice, message_id=stored.id, emoji="x", on=True))
        == BAD_EMOJI
    )
    message_delete(user=alice, message_id=stored.id)
    assert (
        code_of(lambda: message_react(user=alice, message_id=stored.id, emoji="👍", on=True))
        == NO_SUCH_MESSAGE
    )


# -- changes and rev -----------------------------------------------------------------


def test_changes_lists_every_change_since_a_rev_in_rev_order(alice, bob, carol):
    first = message_send(sender=alice, to=TO_ALL, body="one")
    second = message_send(sender=alice, to=TO_ALL, body="two")
    hidden = message_send(sender=alice, to=to_user("carol"), body="not for bob")
    since = max(first.id, second.id)

    message_edit(user=alice, message_id=first.id, body="one!")
    message_react(user=carol, message_id=second.id, emoji="👍", on=True)
    third = message_send(sender=alice, to=TO_ALL, body="three")
    message_delete(user=alice, message_id=hidden.id)

    messages, more = message_changes(user=bob, since=since, limit=500)

    assert not more
    assert [m["id"] for m in messages] == [first.id, second.id, third.id]
    assert [m["rev"] for m in messages] == sorted(m["rev"] for m in messages)
    assert messages[0]["body"] == "one!" and messages[0]["edited_at"] is not None
    assert messages[1]["reactions"][0]["emoji"] == "👍"
    assert last_visible_revs([bob.pk])[bob.pk] == messages[-1]["rev"]
    assert last_visible_revs([carol.pk])[carol.pk] > messages[-1]["rev"]


def test_changes_pages_with_limit(alice, bob):
    sent = [message_send(sender=alice, to=TO_ALL, body=f"m{n}") for n in range(5)]
    message_edit(user=alice, message_id=sent[0].id, body="edited")

    page, more = message_changes(user=bob, since=0, limit=3)
    rest, more_after = message_changes(user=bob, since=page[-1]["rev"], limit=3)

    assert more and not more_after
    assert [m["id"] for m in page + rest] == [s.id for s in sent[1:]] + [sent[0].id]


def test_changes_from_the_highest_seen_rev_miss_nothing_under_concurrent_changes(alice, bob, carol):
    """Two writers editing and reacting at once while a reader follows `changes`."""
    targets = [message_send(sender=alice, to=TO_ALL, body=f"t{n}").id for n in range(4)]
    start = max(targets)
    rounds = 16
    errors: list[BaseException] = []
    done = threading.Event()
    made: list[int] = []
    lock = threading.Lock()

    def change(user: User, edit: bool) -> None:
        try:
            for n in range(rounds):
                if edit:
                    target = targets[n % len(targets)]
                    result = message_edit(user=user, message_id=target, body=f"e{n}")
                else:
                    # On, then off again: every call changes something.
                    target = targets[(n // 2) % len(targets)]
                    result = message_react(user=user, message_id=target, emoji="👍", on=n % 2 == 0)
                with lock:
                    made.append(result.event["rev"])
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    seen: set[int] = set()

    def read() -> None:
        highest = start
        try:
            while True:
                finished = done.is_set()
                messages, more = message_changes(user=carol, since=highest, limit=500)
                seen.update(m["rev"] for m in messages)
                highest = max([highest, *(m["rev"] for m in messages)])
                if finished and not more:
                    return
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    writers = [
        threading.Thread(target=change, args=(alice, True)),
        threading.Thread(target=change, args=(bob, False)),
    ]
    reader = threading.Thread(target=read)
    reader.start()
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join(timeout=60)
    done.set()
    reader.join(timeout=60)

    assert not errors, errors
    assert len(made) == 2 * rounds and len(set(made)) == 2 * rounds
    # Every change's rev was either listed, or superseded by a later change of
    # the same message that was: what the reader holds now is the final state.
    final = {m["id"]: m["rev"] for m in message_changes(user=carol, since=start, limit=500)[0]}
    assert set(final.values()) <= seen
    assert max(made) in seen
