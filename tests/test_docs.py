"""The Markdown documents render: each table is one block of rows under its header."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = ["README.md", "docs/protocol.md"]


def cells(row: str) -> int:
    """Columns of a table row, `|` inside code spans and escaped ones not counting."""
    row = re.sub(r"`[^`]*`", "", row.strip()).replace("\\|", "")
    return row.strip("|").count("|") + 1


def tables(text: str) -> list[tuple[int, list[str]]]:
    """(line number, rows) of each run of table lines outside code blocks."""
    found: list[tuple[int, list[str]]] = []
    fenced = False
    run: list[str] = []
    start = 0
    for number, line in enumerate([*text.splitlines(), ""], 1):
        if line.startswith("```"):
            fenced = not fenced
        is_row = not fenced and line.startswith("|")
        if is_row and not run:
            start = number
        if is_row:
            run.append(line)
        elif run:
            found.append((start, run))
            run = []
    return found


@pytest.mark.parametrize("document", DOCUMENTS)
def test_every_table_has_a_header_and_rows_of_its_width(document):
    for line, rows in tables((ROOT / document).read_text()):
        assert len(rows) >= 3, f"{document}:{line}: a table of {len(rows)} line(s)"
        assert re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", rows[1].strip()), (
            f"{document}:{line}: no separator under the header (a table split in two?)"
        )
        widths = {cells(row) for row in rows}
        assert widths == {cells(rows[0])}, f"{document}:{line}: rows of {sorted(widths)} columns"
