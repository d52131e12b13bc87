"""Settings read from the environment: what a deployment gets for its database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
POSTGRES = "postgres://chat@db.example:5432/chat"


def database_settings(**env: str) -> dict:
    """`DATABASES["default"]` as a fresh process with this environment sees it."""
    code = "import json, chatsite.settings as s; print(json.dumps(s.DATABASES['default']))"
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout)


def test_postgres_connections_come_from_a_bounded_pool():
    database = database_settings(DATABASE_URL=POSTGRES, DATABASE_POOL_SIZE="7")

    assert database["OPTIONS"]["pool"]["max_size"] == 7
    # Django refuses persistent connections beside a pool; each use returns
    # its connection to the pool instead.
    assert database["CONN_MAX_AGE"] == 0


def test_a_pool_size_of_zero_keeps_persistent_connections_instead():
    database = database_settings(DATABASE_URL=POSTGRES, DATABASE_POOL_SIZE="0")

    assert "pool" not in database.get("OPTIONS", {})
    assert database["CONN_MAX_AGE"] == 600


def test_sqlite_has_no_pool():
    database = database_settings(DATABASE_URL="sqlite:///chat.sqlite3")

    assert "pool" not in database["OPTIONS"]
    assert database["ENGINE"] == "django.db.backends.sqlite3"
