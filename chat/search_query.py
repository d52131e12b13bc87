"""The `q` of `search` (protocol 1.2), parsed: words, phrases, exclusions, operators.

Pure: no database, no Django. `parse_query` turns the text a person typed
into a `SearchQuery`, or raises `QueryError` saying what was wrong (the
action answers it `bad_command`). `words_of` and `fold` are the one
tokenisation the spans (chat.search) and SQLite's FTS5 query use, so that
what is highlighted is what was matched:

- a word is a run of letters, digits and combining marks (any script); a run
  of CJK characters without spaces is one word;
- words compare case- and accent-insensitively (`fold`).
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from datetime import date
from typing import Literal

# Bounds that keep one query's cost small whatever a client sends.
MAX_QUERY_CHARS = 500
MAX_TERMS = 20

# PostgreSQL lowers a capital sigma to a sigma only: the final form is made one
# on both sides (the stored vectors, migrations 0015 and 0018, and the queries).
FINAL_SIGMA, SIGMA = "\u03c2", "\u03c3"

OPERATORS = ("from", "in", "has", "before", "after")
HAS_VALUES = ("link", "file")


class QueryError(ValueError):
    """A `q` that cannot be parsed; the message says what was wrong, for people."""


@dataclass(frozen=True, slots=True)
class Term:
    """Words that must appear one after the other (one word, or a quoted phrase).

    `text` is what was typed (PostgreSQL parses it with its own parser);
    `words` its folded words. `prefix`: the last word also matches as the
    start of a longer word (the query's last plain word only).
    """

    text: str
    words: tuple[str, ...]
    prefix: bool = False
    phrase: bool = False


@dataclass(frozen=True, slots=True)
class InTarget:
    """`in:NAME` (a group), `in:@NAME` (a direct conversation) or `in:everyone`."""

    kind: Literal["group", "user", "all"]
    name: str = ""


@dataclass(frozen=True, slots=True)
class SearchQuery:
    terms: tuple[Term, ...] = ()
    excluded: tuple[Term, ...] = ()
    sender: str | None = None
    within: InTarget | None = None
    has_link: bool = False
    has_file: bool = False
    before: date | None = None
    after: date | None = None

    @property
    def has_operators(self) -> bool:
        return any(
            (
                self.sender is not None,
                self.within is not None,
                self.has_link,
                self.has_file,
                self.before is not None,
                self.after is not None,
            )
        )


def is_word_char(char: str) -> bool:
    """Letters and digits of any script, and combining marks (Devanagari, Thai need them)."""
    return char.isalnum() or unicodedata.category(char)[0] == "M"


def words_of(text: str) -> list[tuple[int, int]]:
    """The (start, end) code-point offsets of every word in `text`."""
    found: list[tuple[int, int]] = []
    start = -1
    for index, char in enumerate(text):
        if is_word_char(char):
            if start < 0:
                start = index
        elif start >= 0:
            found.append((start, index))
            start = -1
    if start >= 0:
        found.append((start, len(text)))
    return found


def fold(word: str) -> str:
    """A word as search compares it: compatibility-decomposed, without accents, lower case."""
    decomposed = unicodedata.normalize("NFKD", word)
    bare = "".join(char for char in decomposed if unicodedata.category(char)[0] != "M")
    # A word of marks only (rare) keeps them rather than vanish.
    return unicodedata.normalize("NFC", bare or decomposed).casefold()


def folded_words(text: str) -> tuple[str, ...]:
    return tuple(fold(text[start:end]) for start, end in words_of(text))


def tsquery_prefix(text: str) -> str:
    """`text` as one PostgreSQL `to_tsquery` operand, its last word a prefix.

    Quoted, so that tsquery syntax in what a person typed (`&`, `!`, `:`) is
    only text; a final sigma made a sigma, as the stored vectors have it.
    Message search and the `users` name search both build theirs here.
    """
    quoted = text.replace(FINAL_SIGMA, SIGMA).replace("\\", "\\\\").replace("'", "''")
    return f"'{quoted}':*"


def _parse_date(value: str, operator: str) -> date:
    try:
        if len(value) != 10:
            raise ValueError
        return date.fromisoformat(value)
    except ValueError:
        raise QueryError(f"{operator}: takes a date as YYYY-MM-DD, not {value[:20]!r}") from None


def _tokens(q: str) -> list[tuple[str, bool]]:
    """Split on spaces, keeping a quoted stretch (after `"` or `op:"`) as one token.

    Each token comes with whether it held a quoted part.
    """
    tokens: list[tuple[str, bool]] = []
    index, length = 0, len(q)
    while index < length:
        if q[index].isspace():
            index += 1
            continue
        start, quoted = index, False
        while index < length and not q[index].isspace():
            if q[index] == '"':
                end = q.find('"', index + 1)
                if end < 0:
                    raise QueryError('a quote (") is not closed')
                quoted = True
                index = end + 1
            else:
                index += 1
        tokens.append((q[start:index], quoted))
    return tokens


def _unquote(text: str) -> str:
    return text.replace('"', "")


def parse_query(q: str) -> SearchQuery:
    """`q` as a `SearchQuery`; `QueryError` if it cannot be parsed or asks for nothing."""
    if len(q) > MAX_QUERY_CHARS:
        raise QueryError(f"q is longer than {MAX_QUERY_CHARS} characters")
    q = unicodedata.normalize("NFC", q)
    terms: list[Term] = []
    excluded: list[Term] = []
    found: dict[str, object] = {}
    last_plain = -1
    for token, quoted in _tokens(q):
        negated = token.startswith("-") and len(token) > 1
        body = token[1:] if negated else token
        name, colon, value = body.partition(":")
        if colon and not quoted_before(body) and name.casefold() in OPERATORS:
            if negated:
                raise QueryError(f"-{name}: is not supported: operators cannot be excluded")
            _operator(name.casefold(), _unquote(value), found)
            continue
        words = folded_words(_unquote(body))
        if not words:
            if quoted:
                raise QueryError("a quoted phrase has no words in it")
            # Punctuation alone ("-", "!!") asks for nothing: ignored.
            continue
        phrase = quoted or len(words) > 1
        term = Term(_unquote(body), words, phrase=phrase)
        if negated:
            excluded.append(term)
        else:
            if not quoted:
                last_plain = len(terms)
            terms.append(term)
    if len(terms) + len(excluded) > MAX_TERMS:
        raise QueryError(f"q has more than {MAX_TERMS} words and phrases")
    # The last word typed is also a prefix ("hel" finds "hello"), unless it
    # was followed by a phrase or closed by a quote.
    if terms and last_plain == len(terms) - 1:
        last = terms[-1]
        terms[-1] = Term(last.text, last.words, prefix=True, phrase=last.phrase)
    query = SearchQuery(
        terms=tuple(terms),
        excluded=tuple(excluded),
        sender=found.get("from"),  # type: ignore[arg-type]
        within=found.get("in"),  # type: ignore[arg-type]
        has_link=bool(found.get("has:link")),
        has_file=bool(found.get("has:file")),
        before=found.get("before"),  # type: ignore[arg-type]
        after=found.get("after"),  # type: ignore[arg-type]
    )
    if not query.terms and not query.has_operators:
        if query.excluded:
            raise QueryError("q needs a word, a phrase or an operator besides exclusions")
        raise QueryError("q has nothing to search for")
    return query


def quoted_before(body: str) -> bool:
    """Whether a quote comes before the first colon (`"a:b"` is a phrase, not an operator)."""
    quote = body.find('"')
    return 0 <= quote < body.find(":")


def _operator(name: str, value: str, found: dict[str, object]) -> None:
    if not value:
        raise QueryError(f"{name}: needs a value after the colon")
    key = f"has:{value.casefold()}" if name == "has" else name
    if key in found:
        raise QueryError(f"{name}:{value if name == 'has' else ''} is given twice")
    if value == "@" and name in ("from", "in"):
        raise QueryError(f"{name}:@ needs a user name")
    if name == "from":
        found[key] = value.removeprefix("@")
    elif name == "in":
        if value.startswith("@"):
            found[key] = InTarget("user", value[1:])
        elif value.casefold() == "everyone":
            found[key] = InTarget("all")
        else:
            found[key] = InTarget("group", value)
    elif name == "has":
        if value.casefold() not in HAS_VALUES:
            raise QueryError(f"has: takes link or file, not {value[:20]!r}")
        found[key] = True
    else:
        found[key] = _parse_date(value, name)
