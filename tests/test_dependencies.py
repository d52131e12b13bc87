"""The lock files: every package pinned with hashes, the runtime lean, inputs and locks agreeing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LOCKS = {
    "requirements.txt": "requirements.in",
    "requirements-dev.txt": "requirements-dev.in",
    "bench/requirements.txt": "bench/requirements.in",
}
DEV_TOOLS = {"pytest", "playwright", "mypy", "ruff", "hypothesis", "django-stubs", "pip-audit"}
BENCH_TOOLS = {"uvloop", "py-spy", "uvicorn"}


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked(lock: str) -> dict[str, tuple[str, int]]:
    """name -> (version, number of hashes) of every requirement in a lock file."""
    text = (ROOT / lock).read_text()
    entries: dict[str, tuple[str, int]] = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        first = block.split("\n", 1)[0]
        match = re.match(r"([A-Za-z0-9_.\-\[\]]+)==([^\s;\\]+)", first)
        if not match:
            continue
        name = normalize(match.group(1).split("[")[0])
        entries[name] = (match.group(2), block.count("--hash=sha256:"))
    return entries


def direct(inputs: str) -> dict[str, str]:
    pins = {}
    for line in (ROOT / inputs).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            name, version = line.split("==")
            pins[normalize(name.split("[")[0])] = version
    return pins


@pytest.mark.parametrize("lock", LOCKS)
def test_every_locked_package_is_pinned_with_hashes(lock):
    entries = locked(lock)
    assert entries
    unhashed = [name for name, (_version, hashes) in entries.items() if hashes == 0]
    assert not unhashed, unhashed
    lines = [
        line
        for line in (ROOT / lock).read_text().splitlines()
        if re.match(r"[A-Za-z0-9]", line) and not line.startswith("#")
    ]
    assert all("==" in line for line in lines), lines


@pytest.mark.parametrize(("lock", "inputs"), LOCKS.items())
def test_each_direct_dependency_is_locked_at_its_pinned_version(lock, inputs):
    entries = locked(lock)
    for name, version in direct(inputs).items():
        assert name in entries, f"{name} of {inputs} is missing from {lock}: run make lock"
        assert entries[name][0] == version, f"{name}: {inputs} {version}, {lock} {entries[name][0]}"


def test_the_runtime_holds_no_test_lint_or_benchmark_tools():
    runtime = set(locked("requirements.txt"))
    assert not runtime & (DEV_TOOLS | BENCH_TOOLS)


def test_make_run_installs_the_runtime_only_and_make_test_both():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^run: install$", makefile, re.M)
    assert re.search(r"^test: install-dev$", makefile, re.M)
    runtime_recipe = makefile.split("$(VENV)/.installed-runtime: ", 1)[1].split("\n\n", 1)[0]
    assert "--require-hashes" in makefile and "requirements-dev" not in runtime_recipe
