"""chat.search without a socket: what is found, in which order, with which spans.

The same cases run on SQLite (FTS5) and PostgreSQL (the GIN index), with
`DATABASE_URL` choosing which: words, phrases, prefixes, exclusions,
operators, non-Latin scripts, membership, edits and deletes.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.db import connection

from chat.groups import group_join, group_leave
from chat.message_changes import message_delete, message_edit
from chat.messaging import message_history_around, message_send
from chat.models import Message, Upload
from chat.protocol import NOT_MEMBER, Address, ChatError
from chat.search import FTS_TABLE, VECTOR_COLUMN, message_search, spans_of
from chat.search_query import parse_query

pytestmark = pytest.mark.django_db(transaction=True)

ALL = Address("all")


def found(user, q: str, **kwargs) -> list[str]:
    """The bodies `q` finds for the user, newest first."""
    results, _ = message_search(user=user, query=parse_query(q), limit=50, **kwargs)
    return [result["message"]["body"] for result in results]


def send(user, body: str, to: Address = ALL) -> int:
    return message_send(sender=user, to=to, body=body).id


def test_words_match_in_any_order_ignoring_case_and_accents(alice, bob):
    send(alice, "The café opens at nine")
    send(alice, "Nine cats sleep")
    send(bob, "nothing here")

    assert found(bob, "CAFE nine") == ["The café opens at nine"]
    assert found(bob, "nine café") == ["The café opens at nine"]
    assert found(bob, "nine") == ["Nine cats sleep", "The café opens at nine"]
    assert found(bob, "dogs") == []


def test_the_last_word_is_also_a_prefix(alice, bob):
    send(alice, "deployment finished")
    send(alice, "deploy now")

    assert found(bob, "deplo") == ["deploy now", "deployment finished"]
    # Only the last word: an earlier one must be whole.
    assert found(bob, "deplo now") == []
    assert found(bob, "now deplo") == ["deploy now"]


def test_a_phrase_matches_its_words_in_order(alice, bob):
    send(alice, "release notes are ready")
    send(alice, "notes about the release")

    assert found(bob, '"release notes"') == ["release notes are ready"]
    assert found(bob, '"notes release"') == []


def test_an_excluded_word_removes_its_messages(alice, bob):
    send(alice, "lunch with pizza")
    send(alice, "lunch with salad")

    assert found(bob, "lunch -pizza") == ["lunch with salad"]
    assert found(bob, 'lunch -"with salad"') == ["lunch with pizza"]


@pytest.mark.parametrize(
    ("body", "q"),
    [
        ("Привет, как дела?", "ПРИВЕТ"),
        ("Привет, как дела?", "как привет"),
        ("Καλημέρα σε όλους", "καλημερα"),
        ("Καλημέρα σε όλους", "ΟΛΟΥΣ"),
        ("会议 明天 开始", "明天"),
        ("東京タワー に 行く", "東京タワー"),
        ("東京タワー に 行く", "東京"),
        ("مرحبا بالعالم", "مرحبا"),
        ("नमस्ते दुनिया", "नमस्ते"),
    ],
)
def test_non_latin_scripts_are_found_as_words(alice, bob, body, q):
    send(alice, body)
    send(alice, "something else")

    assert found(bob, q) == [body]


def test_spans_are_the_matched_words_as_code_point_offsets(alice, bob):
    body = "😀 Café: the CAFE opens, caféteria too"
    send(alice, body)

    [result], _ = message_search(user=bob, query=parse_query("cafe"), limit=5)

    spans = result["spans"]
    assert [body[start:end] for start, end in spans] == ["Café", "CAFE", "caféteria"]
    assert spans[0] == [2, 6]


def test_spans_of_a_phrase_mark_only_its_words_in_order():
    body = "notes then release notes"
    query = parse_query('"release notes"')
    assert spans_of(body, query.terms) == [[11, 18], [19, 24]]


def test_from_in_and_of_narrow_the_search(alice, bob, carol):
    group_join(user=alice, name="Team")
    group_join(user=bob, name="Team")
    send(alice, "plan in team", Address("group", "Team"))
    send(bob, "plan from bob", ALL)
    send(carol, "plan direct", Address("user", "bob"))

    assert found(bob, "plan from:alice") == ["plan in team"]
    assert found(bob, "from:BOB") == ["plan from bob"]
    assert found(bob, "from:nobody") == []
    assert found(bob, "plan in:team") == ["plan in team"]
    assert found(bob, "plan in:@carol") == ["plan direct"]
    assert found(bob, "plan in:everyone") == ["plan from bob"]
    assert found(bob, "plan", of=Address("user", "carol")) == ["plan direct"]
    assert found(bob, "plan in:team", of=ALL) == []
    with pytest.raises(ChatError) as refused:
        found(carol, "plan in:team")
    assert refused.value.code == NOT_MEMBER


def test_has_link_has_file_and_dates(alice, bob):
    send(alice, "see https://example.com/notes")
    with_file = send(alice, "the report attached")
    old = send(alice, "an old report")
    Upload.objects.create(
        uploader=alice,
        storage_name="x",
        name="report.pdf",
        size=1,
        content_type="application/pdf",
        created=datetime.now(UTC),
        message_id=with_file,
    )
    Message.objects.filter(id=old).update(created_at=datetime(2020, 5, 2, 12, tzinfo=UTC))

    assert found(bob, "has:link") == ["see https://example.com/notes"]
    assert found(bob, "has:file") == ["the report attached"]
    assert found(bob, "report before:2020-05-03") == ["an old report"]
    assert found(bob, "report before:2020-05-02") == []
    assert found(bob, "report after:2020-05-02") == ["the report attached"]
    assert found(bob, "report after:2020-05-01") == ["an old report", "the report attached"]
    # The ends of the calendar find nothing, and are no server error.
    assert found(bob, "report after:9999-12-31") == []
    assert found(bob, "report before:0001-01-01") == []


def test_only_what_the_user_may_read_now_is_found(alice, bob, carol):
    group_join(user=alice, name="Secret")
    group_join(user=bob, name="Secret")
    send(alice, "codeword in the group", Address("group", "Secret"))
    send(alice, "codeword to bob", Address("user", "bob"))

    assert found(bob, "codeword") == ["codeword to bob", "codeword in the group"]
    assert found(carol, "codeword") == []

    group_leave(user=bob, name="Secret")

    assert found(bob, "codeword") == ["codeword to bob"]


def test_an_edited_message_is_found_by_its_current_text_only(alice, bob):
    sent = send(alice, "meeting on tuesday")
    message_edit(user=alice, message_id=sent, body="meeting on wednesday")

    assert found(bob, "tuesday") == []
    assert found(bob, "wednesday") == ["meeting on wednesday"]


def test_a_deleted_message_is_never_found_and_leaves_no_words_in_the_index(alice, bob):
    kept = send(alice, "zebra kept")
    gone = send(alice, "zebra gone")
    message_edit(user=alice, message_id=gone, body="zebra gone for good")

    message_delete(user=alice, message_id=gone)

    assert found(bob, "zebra") == ["zebra kept"]
    assert found(bob, "gone") == []
    assert _indexed("gone") == [] and _indexed("zebra") == [kept]
    if connection.vendor == "sqlite":
        # FTS5's own pages: no trace of the words, not even as a deleted entry.
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT block FROM {FTS_TABLE}_data")
            pages = b"".join(bytes(row[0]) for row in cursor.fetchall() if row[0])
        assert b"gone" not in pages and b"good" not in pages and b"zebra" in pages


def _indexed(word: str) -> list[int]:
    """Ids the database's own index finds for a word, bypassing every other filter."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                f"SELECT id FROM chat_message WHERE NOT deleted AND {VECTOR_COLUMN}"
                " @@ plainto_tsquery('chat_search'::regconfig, %s)",
                [word],
            )
        else:
            cursor.execute(f"SELECT rowid FROM {FTS_TABLE} WHERE {FTS_TABLE} MATCH %s", [word])
        return [row[0] for row in cursor.fetchall()]


def test_results_come_newest_first_in_pages(alice, bob):
    ids = [send(alice, f"page item {n}") for n in range(5)]

    first, more = message_search(user=bob, query=parse_query("item"), limit=2)
    assert [r["message"]["id"] for r in first] == ids[:-3:-1] and more
    rest, more = message_search(
        user=bob, query=parse_query("item"), limit=10, before=first[-1]["message"]["id"]
    )
    assert [r["message"]["id"] for r in rest] == ids[-3::-1] and not more


def test_a_reply_bound_cuts_the_page_and_says_more(alice, bob):
    for n in range(4):
        send(alice, f"long {n} " + "x" * 2000)

    results, more = message_search(user=bob, query=parse_query("long"), limit=4, max_bytes=3000)

    assert len(results) == 1 and more


def test_history_around_a_message_lists_both_sides(alice, bob):
    ids = [send(alice, f"m{n}") for n in range(10)]

    messages, more, newer = message_history_around(user=bob, of=ALL, around=ids[5], limit=4)

    assert [m["id"] for m in messages] == ids[3:7]
    assert more and newer
    messages, more, newer = message_history_around(user=bob, of=ALL, around=ids[9], limit=6)
    assert [m["id"] for m in messages] == ids[6:10]
    assert more and not newer


def test_sending_stays_one_insert_statement_with_the_index(alice, bob):
    """The index is kept by the database (triggers, an index expression): no extra trip."""
    from django.test.utils import CaptureQueriesContext

    send(alice, "warm up")
    with CaptureQueriesContext(connection) as queries:
        send(alice, "one more", Address("user", "bob"))
    assert not any(
        FTS_TABLE in q["sql"] or "tsvector" in q["sql"] for q in queries.captured_queries
    )
    assert _indexed("more")


@pytest.mark.parametrize(
    ("q", "finds"),
    [
        ("it's", True),
        ("back\\slash", True),
        ("a:*", True),
        ("x & y | !z", True),
        ("<-> (a) 'b'", True),
        ('"NEAR(a b)" AND OR NOT', False),
        ("trailing\\", False),
        ("a - -- -x", False),
    ],
)
def test_query_syntax_of_either_database_is_only_text(alice, bob, q, finds):
    """Quotes, backslashes and operators of tsquery or FTS5 in `q` are searched as words."""
    send(alice, "it's a back slash: x y z, near a and b, full")

    results, _ = message_search(user=bob, query=parse_query(q), limit=5)

    assert len(results) == (1 if finds else 0)
