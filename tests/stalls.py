"""A database that stops answering, as a stuck transaction elsewhere makes it.

Shared by the tests of the server's time limits (tests/test_limits.py) and of
what the page shows when a command meets one (tests/test_page_conversations.py).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from django.db import connection

from chat.models import Message
from tests import servers


@contextlib.contextmanager
def message_table_locked() -> Iterator[None]:
    """Another connection holds the message table as a stuck transaction would.

    PostgreSQL: an ACCESS EXCLUSIVE lock, so reads and writes of it wait.
    SQLite: the database's write lock (readers still read).
    """
    table = Message._meta.db_table
    if connection.vendor == "postgresql":
        import psycopg

        with psycopg.connect(servers.test_database_url()) as holder:
            holder.execute(f'LOCK TABLE "{table}" IN ACCESS EXCLUSIVE MODE')
            try:
                yield
            finally:
                holder.rollback()
        return
    holder = sqlite3.connect(Path(connection.settings_dict["NAME"]), isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        yield
        holder.execute("ROLLBACK")
    finally:
        holder.close()
