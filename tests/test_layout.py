"""README's "Layout" table names the code as it is: every module is covered, every entry exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def layout_entries() -> list[str]:
    """The backticked paths in the first column of README's Layout table."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    entries: list[str] = []
    for line in section.splitlines():
        if line.startswith("| `"):
            first_column = line.split("|")[1]
            entries.extend(re.findall(r"`([^`]+)`", first_column))
    return entries


def chat_modules() -> list[str]:
    """Every Python module of `chat/` but migrations and package `__init__` files."""
    return sorted(
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / "chat").rglob("*.py")
        if "migrations" not in path.parts and path.name != "__init__.py"
    )


def test_the_layout_table_is_found():
    assert len(layout_entries()) > 20


def test_every_entry_of_the_layout_exists():
    missing = [entry for entry in layout_entries() if not (ROOT / entry).exists()]
    assert missing == [], f"README's Layout names paths that do not exist: {missing}"


def test_every_chat_module_is_in_the_layout():
    entries = layout_entries()
    folders = [entry for entry in entries if entry.endswith("/")]
    uncovered = [
        module
        for module in chat_modules()
        if module not in entries and not any(module.startswith(folder) for folder in folders)
    ]
    assert uncovered == [], f"add these to README's Layout table: {uncovered}"


def test_every_chat_package_is_in_the_layout():
    entries = layout_entries()
    packages = sorted(
        path.parent.relative_to(ROOT).as_posix() + "/"
        for path in (ROOT / "chat").rglob("__init__.py")
        if "migrations" not in path.parts and path.parent != ROOT / "chat"
    )
    unnamed = [
        package
        for package in packages
        if not any(entry == package or entry.startswith(package) for entry in entries)
    ]
    assert unnamed == [], f"add these packages to README's Layout table: {unnamed}"
