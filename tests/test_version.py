"""The version the Workers view shows is pyproject.toml's, with no copy to keep in step."""

from __future__ import annotations

import importlib.metadata
import re

from chat.version import PYPROJECT, VERSION, project_version


def test_the_version_is_pyprojects():
    declared = re.search(r'^version = "([^"]+)"$', PYPROJECT.read_text(), re.MULTILINE)
    assert declared is not None
    assert declared.group(1) == VERSION


def test_another_pyproject_gives_its_version(tmp_path):
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\nname = "chatsite"\nversion = "9.8.7"\n')

    assert project_version(pyproject) == "9.8.7"


def test_without_a_pyproject_the_installed_distribution_says(tmp_path, monkeypatch):
    monkeypatch.setattr(importlib.metadata, "version", lambda name: {"chatsite": "1.2.3"}[name])

    assert project_version(tmp_path / "missing.toml") == "1.2.3"


def test_with_neither_the_version_is_unknown_never_a_crash(tmp_path, monkeypatch):
    def not_installed(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)

    assert project_version(tmp_path / "missing.toml") == "unknown"
