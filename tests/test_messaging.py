"""chat.messaging called directly: audiences, history, sync, and the ordering guarantee."""

from __future__ import annotations

import random
import re
import threading
from datetime import UTC, datetime
from unittest import mock

import pytest
from django.contrib.auth.models import User
from django.db import connection, connections
from django.db.models import Max
from django.db.models.signals import post_save
from django.test.utils import CaptureQueriesContext

from chat import messaging
from chat.groups import group_join, group_leave
from chat.messaging import (
    SendRequest,
    StoredMessage,
    last_visible_id,
    last_visible_ids,
    message_history,
    message_send,
    message_send_many,
    message_sync,
)
from chat.models import Message
from chat.protocol import (
    NO_SUCH_USER,
    NOT_MEMBER,
    SYNC_MAX_MESSAGES,
    UNAVAILABLE,
    Address,
    ChatError,
)
from tests.conftest import refusing_message_inserts

pytestmark = pytest.mark.django_db(transaction=True)

TO_ALL = Address("all")


def to_user(name: str) -> Address:
    return Address("user", name)


def to_group(name: str) -> Address:
    return Address("group", name)


def synced_ids(user, since: int = 0) -> list[int]:
    messages, _ = message_sync(user=user, since=since)
    return [m["id"] for m in messages]


# -- sending and audiences ---------------------------------------------------


def test_direct_message_is_visible_only_to_sender_and_recipient(alice, bob, carol):
    stored = message_send(sender=alice, to=to_user("bob"), body="psst")

    assert set(stored.user_ids) == {alice.pk, bob.pk}
    assert stored.group_id is None and not stored.everyone
    assert synced_ids(alice) == [stored.id]
    assert synced_ids(bob) == [stored.id]
    assert synced_ids(carol) == []
    assert last_visible_id(user=carol) == 0


def test_direct_message_to_oneself_has_one_recipient(alice):
    stored = message_send(sender=alice, to=to_user("alice"), body="note to self")

    assert stored.user_ids == (alice.pk,)
    assert message_history(user=alice, of=to_user("alice"), before=None, limit=50)[0]["id"] == (
        stored.id
    )


def test_direct_message_to_unknown_user_is_refused_and_not_stored(alice):
    with pytest.raises(ChatError) as refused:
        message_send(sender=alice, to=to_user("nobody"), body="hello?")

    assert refused.value.code == NO_SUCH_USER
    assert not Message.objects.exists()


def test_group_message_is_visible_to_current_members_only(alice, bob, carol):
    group_join(user=alice, name="A")
    group_join(user=bob, name="A")

    stored = message_send(sender=alice, to=to_group("A"), body="hi group")

    assert stored.group_id is not None and stored.user_ids == () and not stored.everyone
    assert synced_ids(alice) == [stored.id]
    assert synced_ids(bob) == [stored.id]
    assert synced_ids(carol) == []


def test_group_messages_are_no_longer_visible_after_leaving(alice, bob):
    group_join(user=alice, name="A")
    group_join(user=bob, name="A")
    message_send(sender=alice, to=to_group("A"), body="before bob left")

    group_leave(user=bob, name="A")

    assert synced_ids(bob) == []
    assert last_visible_id(user=bob) == 0
    with pytest.raises(ChatError) as refused:
        message_history(user=bob, of=to_group("A"), before=None, limit=50)
    assert refused.value.code == NOT_MEMBER


def test_sending_to_a_group_requires_membership(alice, bob):
    group_join(user=bob, name="A")

    with pytest.raises(ChatError) as refused:
        message_send(sender=alice, to=to_group("A"), body="let me in")

    assert refused.value.code == NOT_MEMBER
    assert not Message.objects.exists()


def test_sending_to_a_group_that_does_not_exist_is_not_member(alice):
    with pytest.raises(ChatError) as refused:
        message_send(sender=alice, to=to_group("nowhere"), body="anyone?")

    assert refused.value.code == NOT_MEMBER


def test_broadcast_is_visible_to_everyone(alice, bob, carol):
    stored = message_send(sender=alice, to=TO_ALL, body="hello all")

    assert stored.everyone
    for user in (alice, bob, carol):
        assert synced_ids(user) == [stored.id]
        assert last_visible_id(user=user) == stored.id


def test_a_failing_store_is_unavailable_and_stores_nothing(alice):
    with refusing_message_inserts(), pytest.raises(ChatError) as refused:
        message_send(sender=alice, to=TO_ALL, body="lost?")

    assert refused.value.code == UNAVAILABLE
    assert not Message.objects.exists()


def test_stored_event_is_the_protocol_message(alice, bob):
    stored = message_send(sender=alice, to=to_user("bob"), body="héllo 👋")

    assert stored.event == {
        "type": "message",
        "id": stored.id,
        "from": "alice",
        "from_name": "alice",
        "to": {"user": "bob"},
        "body": "héllo 👋",
        "ts": stored.ts,
        # Protocol 1.2
        "rev": stored.id,
        "edited_at": None,
        "deleted": False,
        "reply_to": None,
        "reactions": [],
        "mentions": [],
        "files": [],
    }


def test_timestamp_is_iso8601_utc_with_milliseconds(alice):
    before = datetime.now(UTC).replace(microsecond=0)
    stored = message_send(sender=alice, to=TO_ALL, body="when?")

    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", stored.ts), stored.ts
    moment = datetime.fromisoformat(stored.ts.replace("Z", "+00:00"))
    assert before <= moment <= datetime.now(UTC)
    [synced], _ = message_sync(user=alice, since=0)
    assert synced["ts"] == stored.ts


def test_message_ids_increase(alice):
    ids = [message_send(sender=alice, to=TO_ALL, body=str(n)).id for n in range(5)]

    assert ids == sorted(ids)
    assert len(set(ids)) == 5


# -- sending in batches ------------------------------------------------------


def stored_rows() -> list[tuple[int, str]]:
    return list(Message.objects.order_by("id").values_list("id", "body"))


def test_a_batch_gives_each_request_its_own_result_in_its_slot(alice, bob, carol):
    group_join(user=alice, name="A")
    group_join(user=bob, name="A")

    results = message_send_many(
        [
            SendRequest(alice, to_user("bob"), "direct"),
            SendRequest(carol, to_group("A"), "not a member"),
            SendRequest(alice, to_group("A"), "group"),
            SendRequest(alice, to_user("nobody"), "no such user"),
            SendRequest(bob, TO_ALL, "all"),
        ]
    )

    direct, not_member, group, no_user, everyone = results
    assert isinstance(not_member, ChatError) and not_member.code == NOT_MEMBER
    assert isinstance(no_user, ChatError) and no_user.code == NO_SUCH_USER
    assert isinstance(direct, StoredMessage) and set(direct.user_ids) == {alice.pk, bob.pk}
    assert isinstance(group, StoredMessage) and group.group_id is not None
    assert isinstance(everyone, StoredMessage) and everyone.everyone
    assert direct.event["to"] == {"user": "bob"} and direct.event["from"] == "alice"
    assert group.event["to"] == {"group": "A"} and everyone.event["from"] == "bob"
    assert direct.id < group.id < everyone.id
    assert stored_rows() == [(direct.id, "direct"), (group.id, "group"), (everyone.id, "all")]
    assert synced_ids(bob) == [direct.id, group.id, everyone.id]
    assert synced_ids(carol) == [everyone.id]


def test_a_batch_checks_audiences_with_one_query_each_and_inserts_once(alice, bob, carol):
    for user in (alice, bob):
        group_join(user=user, name="A")
    group_join(user=carol, name="B")
    requests = [
        SendRequest(alice, to_user("bob"), "1"),
        SendRequest(bob, to_user("carol"), "2"),
        SendRequest(alice, to_group("A"), "3"),
        SendRequest(carol, to_group("B"), "4"),
        SendRequest(carol, to_group("A"), "5"),
        SendRequest(alice, to_user("nobody"), "6"),
    ]

    with CaptureQueriesContext(connection) as queries:
        results = message_send_many(requests)

    sql = [query["sql"] for query in queries.captured_queries]
    assert [type(r) for r in results] == [StoredMessage] * 4 + [ChatError] * 2
    if connection.vendor == "postgresql":
        # Checks, lock, insert and the senders' names (1.2 `from_name`): one statement.
        assert len(sql) == 1, sql
        return
    # The senders' names now (protocol 1.2 `from_name`): one read per batch.
    names = [q for q in sql if 'FROM "chat_profile"' in q]
    assert len(names) == 1, sql
    sql = [q for q in sql if q not in names]
    assert len([q for q in sql if 'FROM "auth_user"' in q]) == 1, sql
    assert len([q for q in sql if 'FROM "chat_membership"' in q]) == 1, sql
    assert len([q for q in sql if 'INSERT INTO "chat_message"' in q]) == 1, sql


def test_a_batch_of_nothing_stores_nothing_and_asks_nothing(alice):
    with CaptureQueriesContext(connection) as queries:
        assert message_send_many([]) == []

    assert queries.captured_queries == []


def test_a_failing_batch_is_unavailable_for_every_request_and_stores_nothing(alice, bob):
    requests = [
        SendRequest(alice, to_user("bob"), "one"),
        SendRequest(alice, to_user("nobody"), "refused anyway"),
        SendRequest(bob, TO_ALL, "two"),
    ]

    with refusing_message_inserts():
        results = message_send_many(requests)

    assert [r.code for r in results if isinstance(r, ChatError)] == [UNAVAILABLE] * 3
    assert not Message.objects.exists()


def test_a_batch_without_bulk_insert_ids_inserts_row_by_row_in_order(alice, bob, monkeypatch):
    # The ORM's way, which databases other than PostgreSQL take.
    monkeypatch.setattr(messaging, "_send_in_one_statement", messaging._send_with_orm)
    monkeypatch.setattr(type(connection.features), "can_return_rows_from_bulk_insert", False)

    with CaptureQueriesContext(connection) as queries:
        results = message_send_many([SendRequest(alice, TO_ALL, f"m{n}") for n in range(4)])

    inserts = [q for q in queries.captured_queries if q["sql"].startswith("INSERT")]
    assert len(inserts) == 4
    ids = [r.id for r in results if isinstance(r, StoredMessage)]
    assert len(ids) == 4 and ids == sorted(set(ids))
    assert stored_rows() == [(id_, f"m{n}") for n, id_ in enumerate(ids)]


def test_batches_continue_the_id_order(alice, bob):
    first = message_send(sender=alice, to=TO_ALL, body="before")
    batch = message_send_many([SendRequest(bob, TO_ALL, f"m{n}") for n in range(3)])
    last = message_send(sender=alice, to=TO_ALL, body="after")

    ids = [first.id, *(r.id for r in batch if isinstance(r, StoredMessage)), last.id]
    assert len(ids) == 5 and ids == sorted(set(ids))


# -- history -------------------------------------------------------------------


def test_history_lists_the_newest_messages_oldest_first(alice, bob):
    ids = [message_send(sender=alice, to=to_user("bob"), body=f"m{n}").id for n in range(5)]

    history = message_history(user=bob, of=to_user("alice"), before=None, limit=3)

    assert [m["id"] for m in history] == ids[2:]
    assert [m["body"] for m in history] == ["m2", "m3", "m4"]


def test_history_before_returns_older_messages_only(alice, bob):
    ids = [message_send(sender=alice, to=to_user("bob"), body=f"m{n}").id for n in range(5)]

    history = message_history(user=alice, of=to_user("bob"), before=ids[3], limit=2)

    assert [m["id"] for m in history] == ids[1:3]


def test_history_of_a_direct_conversation_holds_both_directions_only(alice, bob, carol):
    first = message_send(sender=alice, to=to_user("bob"), body="hi bob").id
    message_send(sender=alice, to=to_user("carol"), body="hi carol")
    message_send(sender=alice, to=TO_ALL, body="hi all")
    second = message_send(sender=bob, to=to_user("alice"), body="hi alice").id

    history = message_history(user=alice, of=to_user("bob"), before=None, limit=50)

    assert [m["id"] for m in history] == [first, second]


def test_history_of_a_group_and_of_all_keep_to_their_conversation(alice, bob):
    group_join(user=alice, name="A")
    in_group = message_send(sender=alice, to=to_group("A"), body="group").id
    broadcast = message_send(sender=alice, to=TO_ALL, body="all").id
    message_send(sender=alice, to=to_user("bob"), body="direct")

    group_history = message_history(user=alice, of=to_group("A"), before=None, limit=50)
    all_history = message_history(user=bob, of=TO_ALL, before=None, limit=50)

    assert [m["id"] for m in group_history] == [in_group]
    assert group_history[0]["to"] == {"group": "A"}
    assert [m["id"] for m in all_history] == [broadcast]
    assert all_history[0]["to"] == {"all": True}


def test_history_with_an_unknown_user_is_no_such_user(alice):
    with pytest.raises(ChatError) as refused:
        message_history(user=alice, of=to_user("nobody"), before=None, limit=50)

    assert refused.value.code == NO_SUCH_USER


def test_last_visible_ids_of_many_users_match_what_each_may_see(alice, bob, carol):
    """The one-statement read against the ORM's definition of what a user may see."""
    dave = User.objects.create_user("dave")
    group_join(user=alice, name="A")
    group_join(user=bob, name="A")
    group_join(user=bob, name="B")
    group_join(user=carol, name="B")
    rng = random.Random(5)
    audiences = [TO_ALL, to_user("alice"), to_user("bob"), to_user("carol"), to_group("A")]
    audiences.append(to_group("B"))
    senders = {"alice": alice, "bob": bob, "carol": carol}
    for n in range(60):
        to = rng.choice(audiences)
        members = {"A": ["alice", "bob"], "B": ["bob", "carol"]}.get(to.name, list(senders))
        sender = senders[rng.choice(members if to.kind == "group" else list(senders))]
        message_send(sender=sender, to=to, body=f"m{n}")
    users = [alice, bob, carol, dave, bob]

    got = last_visible_ids([u.pk for u in users])

    for user in users:
        expected = Message.objects.visible_to(user.pk).aggregate(last=Max("id"))["last"] or 0
        assert got[user.pk] == expected, user
    assert got[dave.pk] == Message.objects.filter(kind="all").aggregate(last=Max("id"))["last"]
    assert last_visible_ids([]) == {}


def test_last_visible_ids_are_zero_before_any_message(alice, bob):
    assert last_visible_ids([alice.pk, bob.pk]) == {alice.pk: 0, bob.pk: 0}


# -- sync --------------------------------------------------------------------


def test_sync_returns_only_messages_after_since_oldest_first(alice, bob):
    ids = [message_send(sender=alice, to=TO_ALL, body=f"m{n}").id for n in range(4)]

    messages, more = message_sync(user=bob, since=ids[1])

    assert [m["id"] for m in messages] == ids[2:]
    assert more is False


def test_sync_mixes_every_audience_the_user_may_see(alice, bob, carol):
    group_join(user=alice, name="A")
    group_join(user=bob, name="A")
    visible = [
        message_send(sender=alice, to=to_user("bob"), body="direct").id,
        message_send(sender=alice, to=to_group("A"), body="group").id,
        message_send(sender=carol, to=TO_ALL, body="all").id,
    ]
    message_send(sender=alice, to=to_user("carol"), body="not for bob")

    assert synced_ids(bob) == visible
    assert last_visible_id(user=bob) == visible[-1]


def test_sync_stops_at_500_and_says_more(alice, bob):
    now = datetime.now(UTC)
    Message.objects.bulk_create(
        Message(kind=Message.Kind.ALL, sender=alice, body=f"m{n}", created_at=now)
        for n in range(SYNC_MAX_MESSAGES + 1)
    )
    all_ids = list(Message.objects.order_by("id").values_list("id", flat=True))

    first, more = message_sync(user=bob, since=0)
    assert [m["id"] for m in first] == all_ids[:SYNC_MAX_MESSAGES]
    assert more is True

    rest, more = message_sync(user=bob, since=first[-1]["id"])
    assert [m["id"] for m in rest] == all_ids[SYNC_MAX_MESSAGES:]
    assert more is False


def test_sync_of_exactly_500_messages_says_no_more(alice, bob):
    now = datetime.now(UTC)
    Message.objects.bulk_create(
        Message(kind=Message.Kind.ALL, sender=alice, body=f"m{n}", created_at=now)
        for n in range(SYNC_MAX_MESSAGES)
    )

    messages, more = message_sync(user=bob, since=0)

    assert len(messages) == SYNC_MAX_MESSAGES
    assert more is False


# -- the ordering guarantee under concurrent writers -------------------------

WRITERS = 4
MESSAGES_PER_WRITER = 25


@pytest.fixture
def slow_commits():
    """Hold each writer's transaction open a moment after its insert.

    Without this the window between allocating an id and committing it is a
    few microseconds and an ordering bug would rarely show; a slow transaction
    is exactly the case that `sync` must survive. PostgreSQL inserts in one
    statement, so there a trigger lingers inside it, after the ids are taken.
    """
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(_LINGER_FUNCTION)
            cursor.execute(_LINGER_TRIGGER)
        try:
            yield
        finally:
            with connection.cursor() as cursor:
                cursor.execute("DROP TRIGGER chat_test_linger ON chat_message")
                cursor.execute("DROP FUNCTION chat_test_linger()")
        return

    def linger_in_writers() -> None:
        if threading.current_thread().name.startswith("writer-"):
            threading.Event().wait(random.uniform(0, 0.003))

    def linger(sender, instance, created, **kwargs):
        if created:
            linger_in_writers()

    bulk_create = Message.objects.bulk_create

    def bulk_create_and_linger(*args, **kwargs):
        created = bulk_create(*args, **kwargs)
        linger_in_writers()
        return created

    post_save.connect(linger, sender=Message, dispatch_uid="test-slow-commits")
    with mock.patch.object(Message.objects, "bulk_create", bulk_create_and_linger):
        yield
    post_save.disconnect(sender=Message, dispatch_uid="test-slow-commits")


_LINGER_FUNCTION = """
CREATE FUNCTION chat_test_linger() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_sleep(random() * 0.003);
  RETURN NULL;
END $$
"""
_LINGER_TRIGGER = """
CREATE TRIGGER chat_test_linger AFTER INSERT ON chat_message
FOR EACH STATEMENT EXECUTE FUNCTION chat_test_linger()
"""


@pytest.mark.parametrize("batch", [1, 5], ids=["one-by-one", "in-batches"])
def test_sync_from_highest_seen_id_skips_nothing_under_concurrent_writers(
    alice, bob, carol, slow_commits, batch
):
    stored: list[int] = []
    stored_lock = threading.Lock()
    errors: list[BaseException] = []
    writers_done = threading.Event()

    def write(sender) -> None:
        try:
            for first in range(0, MESSAGES_PER_WRITER, batch):
                if batch == 1:
                    messages = [message_send(sender=sender, to=TO_ALL, body=f"{sender} {first}")]
                else:
                    results = message_send_many(
                        [SendRequest(sender, TO_ALL, f"{sender} {first + n}") for n in range(batch)]
                    )
                    messages = [r for r in results if isinstance(r, StoredMessage)]
                    assert len(messages) == batch, results
                with stored_lock:
                    stored.extend(message.id for message in messages)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    seen: set[int] = set()
    reader_rounds = 0

    def read() -> None:
        nonlocal reader_rounds
        highest = 0
        try:
            while True:
                finished = writers_done.is_set()
                messages, more = message_sync(user=carol, since=highest)
                seen.update(m["id"] for m in messages)
                highest = max([highest, *(m["id"] for m in messages)])
                reader_rounds += 1
                if finished and not more:
                    return
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [
        threading.Thread(target=write, args=(user,), name=f"writer-{n}")
        for n, user in enumerate([alice, bob, alice, bob][:WRITERS])
    ]
    reader = threading.Thread(target=read, name="reader")
    reader.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    writers_done.set()
    reader.join(timeout=60)

    assert not reader.is_alive() and not any(t.is_alive() for t in threads), "threads hung"
    assert not errors, errors
    assert len(stored) == WRITERS * MESSAGES_PER_WRITER
    assert reader_rounds > 1, "the reader never synced while writers were writing"
    missed = sorted(set(stored) - seen)
    assert not missed, f"sync from the highest seen id skipped {missed}"
    stamps = list(Message.objects.order_by("id").values_list("created_at", flat=True))
    assert stamps == sorted(stamps), "a timestamp went back as ids went up"
