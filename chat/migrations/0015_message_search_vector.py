"""PostgreSQL: the search vector stored in a generated column, the GIN index over it.

Migration 0014 indexed an expression. For a common word or a short prefix
the planner walks the newest messages backwards and stops at the 20th match,
which is right, but it then computed `to_tsvector` of every body it passed
(figures: bench/RESULTS.md, issue 27). Stored, the vector is read, not
computed, on that walk, and the index covers the rare words as before. A
send computes the vector once, as the index did, inside the INSERT it
already makes; the table grows by the vectors. Adding the column rewrites
the table (a lock for its duration on a large existing one). SQLite is
unchanged (FTS5, migration 0014).
"""

from django.db import migrations

INDEX = "CREATE INDEX message_search ON chat_message USING gin (search_vector) WHERE NOT deleted"
POSTGRES = f"""
DROP INDEX IF EXISTS message_search;
ALTER TABLE chat_message ADD COLUMN search_vector tsvector
  GENERATED ALWAYS AS (to_tsvector('chat_search'::regconfig, translate(body, 'ς', 'σ'))) STORED;
{INDEX};
"""
POSTGRES_UNDO = """
DROP INDEX IF EXISTS message_search;
ALTER TABLE chat_message DROP COLUMN IF EXISTS search_vector;
CREATE INDEX message_search ON chat_message
  USING gin (to_tsvector('chat_search'::regconfig, translate(body, 'ς', 'σ')))
  WHERE NOT deleted;
"""


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        with schema_editor.connection.cursor() as cursor:
            cursor.execute(POSTGRES)


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        with schema_editor.connection.cursor() as cursor:
            cursor.execute(POSTGRES_UNDO)


class Migration(migrations.Migration):
    dependencies = [
        ("chat", "0014_message_search"),
    ]

    operations = [migrations.RunPython(forwards, backwards, elidable=False)]
