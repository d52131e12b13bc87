"""chat.search_query: the `q` of `search`, parsed without a database."""

from __future__ import annotations

from datetime import date

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chat.search import spans_of
from chat.search_query import (
    MAX_QUERY_CHARS,
    MAX_TERMS,
    InTarget,
    QueryError,
    fold,
    parse_query,
    words_of,
)


def test_words_all_must_match_and_the_last_is_also_a_prefix():
    query = parse_query("Deploy  friday")
    assert [t.words for t in query.terms] == [("deploy",), ("friday",)]
    assert [t.prefix for t in query.terms] == [False, True]
    assert not query.excluded and not query.has_operators


def test_a_phrase_keeps_its_words_in_order_and_is_no_prefix():
    query = parse_query('"release notes" draft')
    assert query.terms[0].phrase and query.terms[0].words == ("release", "notes")
    assert query.terms[0].text == "release notes"
    assert not query.terms[0].prefix and query.terms[1].prefix
    # A phrase last: no word is a prefix (the quote closed it).
    assert not parse_query('draft "release notes"').terms[-1].prefix


def test_exclusions_and_operators():
    query = parse_query(
        "lunch -pizza from:@Bob in:team has:link has:FILE before:2026-03-01 after:2026-01-31"
    )
    assert [t.words for t in query.terms] == [("lunch",)]
    assert query.terms[0].prefix
    assert [t.words for t in query.excluded] == [("pizza",)]
    assert query.sender == "Bob"
    assert query.within == InTarget("group", "team")
    assert query.has_link and query.has_file
    assert query.before == date(2026, 3, 1) and query.after == date(2026, 1, 31)


@pytest.mark.parametrize(
    ("q", "target"),
    [
        ("in:@ann", InTarget("user", "ann")),
        ("in:everyone", InTarget("all")),
        ("in:Everyone", InTarget("all")),
        ('in:"Design Team"', InTarget("group", "Design Team")),
        ("in:Δέλτα", InTarget("group", "Δέλτα")),
    ],
)
def test_in_names_a_group_a_person_or_everyone(q, target):
    query = parse_query(q)
    assert query.within == target and not query.terms


def test_operators_alone_are_a_query():
    assert parse_query("from:bob").sender == "bob"
    assert parse_query("has:link").has_link


def test_a_colon_that_is_no_operator_is_part_of_a_word():
    query = parse_query("meet at 10:30")
    assert [t.words for t in query.terms] == [("meet",), ("at",), ("10", "30")]
    assert query.terms[-1].phrase and query.terms[-1].prefix
    assert parse_query('"from:bob"').terms[0].words == ("from", "bob")


@pytest.mark.parametrize(
    ("q", "says"),
    [
        ("", "nothing to search for"),
        ("   ", "nothing to search for"),
        ("!!! ...", "nothing to search for"),
        ("-pizza", "besides exclusions"),
        ('"unclosed phrase', "not closed"),
        ('""', "no words"),
        ("from:", "needs a value"),
        ("in:@", "needs a user name"),
        ("from:@", "needs a user name"),
        ("has:picture", "link or file"),
        ("before:2026-13-01", "YYYY-MM-DD"),
        ("after:yesterday", "YYYY-MM-DD"),
        ("after:2026-1-1", "YYYY-MM-DD"),
        ("from:a from:b", "given twice"),
        ("-from:bob cats", "cannot be excluded"),
        ("x" * (MAX_QUERY_CHARS + 1), "longer than"),
        (" ".join(f"w{n}" for n in range(MAX_TERMS + 1)), "more than"),
    ],
)
def test_what_cannot_be_parsed_says_why(q, says):
    with pytest.raises(QueryError, match=says):
        parse_query(q)


def test_words_of_any_script_with_their_marks():
    text = "Привет, мир! Καλημέρα 東京タワー नमस्ते e\u0301te"
    assert [text[s:e] for s, e in words_of(text)] == [
        "Привет",
        "мир",
        "Καλημέρα",
        "東京タワー",
        "नमस्ते",
        "e\u0301te",
    ]


def test_fold_ignores_case_and_accents():
    assert fold("Café") == fold("CAFE") == fold("cafe\u0301") == "cafe"
    assert fold("ПРИВЕТ") == "привет"
    assert fold("Καλημέρα") == "καλημερα"
    assert fold("\uff34\uff25\uff21\uff2d") == "team"  # fullwidth TEAM


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=120))
def test_any_text_parses_or_says_why(q):
    try:
        query = parse_query(q)
    except QueryError as error:
        assert str(error)
        return
    assert query.terms or query.has_operators
    assert all(term.words for term in (*query.terms, *query.excluded))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80), st.text(min_size=1, max_size=20))
def test_spans_lie_within_the_body_in_order(body, q):
    try:
        query = parse_query(q)
    except QueryError:
        return
    spans = spans_of(body, query.terms)
    assert all(0 <= start < end <= len(body) for start, end in spans)
    assert spans == sorted(spans)
