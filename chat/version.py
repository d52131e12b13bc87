"""The release this code is, read from pyproject.toml: its one source.

Shown per worker in the admin's Workers view (`chat.workers`), so an operator
sees a rolling upgrade's progress. The server runs from its source tree (the
README's install), where pyproject.toml sits beside `chat/`; installed as a
distribution instead, its metadata holds the same version.
"""

from __future__ import annotations

import importlib.metadata
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def project_version(pyproject: Path = PYPROJECT) -> str:
    """`[project] version` of `pyproject`; else the installed distribution's; else "unknown"."""
    try:
        with pyproject.open("rb") as file:
            project = tomllib.load(file)["project"]
        return str(project["version"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        pass
    try:
        return importlib.metadata.version("chatsite")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


VERSION = project_version()
