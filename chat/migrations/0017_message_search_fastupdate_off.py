"""PostgreSQL: the search index takes each message at once, without a pending list.

GIN's default (`fastupdate`) appends new entries to a pending list and
merges it into the index when it passes 4 MB (or on vacuum): cheaper per
insert, but the insert that passes the limit merges them all, for far
longer than the few microseconds per insert that going without costs
(figures: bench/RESULTS.md, issue 27). That merge would run inside a send
batch's statement, holding the order lock every send waits for
(chat.messaging): a stall for all. So without.
"""

from django.db import migrations


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        with schema_editor.connection.cursor() as cursor:
            cursor.execute("ALTER INDEX message_search SET (fastupdate = off)")
            # Entries already pending are merged now, not by some later insert.
            cursor.execute("SELECT gin_clean_pending_list('message_search'::regclass)")


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        with schema_editor.connection.cursor() as cursor:
            cursor.execute("ALTER INDEX message_search RESET (fastupdate)")


class Migration(migrations.Migration):
    dependencies = [
        ("chat", "0016_group_roles"),
    ]

    operations = [migrations.RunPython(forwards, backwards, elidable=False)]
