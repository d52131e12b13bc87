"""Full-text search of message bodies (issue 27), in the database itself.

PostgreSQL: a GIN index over `to_tsvector('chat_search', body)` for messages
not deleted. `chat_search` is `simple` (no stemming, no stop words: every
script is split and lower-cased alike) with `unaccent` before it, so accents
are ignored. An expression index rather than a stored column: the table
carries no second copy of every body, and a send computes the vector once,
for the index, inside the INSERT it already makes.

Greek's final sigma is made a sigma first on both sides (PostgreSQL lowers
`Σ` to `σ`, never to `ς`), so that case is ignored in Greek too.

SQLite: an FTS5 table kept in step by triggers (the send path makes no extra
statement), holding only messages that are not deleted, each body folded by
`chat_fold` (chat.search_query.fold: compatibility forms, accents of every
script, case), a function chat.search registers on each connection. Its
external content is a view of the folded bodies, so that
`INSERT INTO chat_message_search(chat_message_search) VALUES ('rebuild')`
builds it anew. A tombstone (body "", `deleted`) takes its words out.
"""

from django.db import migrations

POSTGRES_CONFIG = """
DO $$
BEGIN
  CREATE EXTENSION IF NOT EXISTS unaccent;
EXCEPTION WHEN OTHERS THEN
  RAISE WARNING 'the unaccent extension is not available: search will not ignore accents';
END $$;
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_ts_config WHERE cfgname = 'chat_search') THEN
    CREATE TEXT SEARCH CONFIGURATION chat_search (COPY = simple);
    IF EXISTS (SELECT 1 FROM pg_ts_dict WHERE dictname = 'unaccent') THEN
      ALTER TEXT SEARCH CONFIGURATION chat_search
        ALTER MAPPING FOR asciihword, asciiword, hword, hword_asciipart, hword_part, word
        WITH unaccent, simple;
    END IF;
  END IF;
END $$;
"""
POSTGRES_INDEX = """
CREATE INDEX message_search ON chat_message
  USING gin (to_tsvector('chat_search'::regconfig, translate(body, 'ς', 'σ')))
  WHERE NOT deleted;
"""
POSTGRES_UNDO = """
DROP INDEX IF EXISTS message_search;
DROP TEXT SEARCH CONFIGURATION IF EXISTS chat_search;
"""

SQLITE = [
    """CREATE VIEW chat_message_search_source AS
        SELECT id, chat_fold(body) AS body FROM chat_message WHERE NOT deleted""",
    """CREATE VIRTUAL TABLE chat_message_search USING fts5(
        body, content='chat_message_search_source', content_rowid='id',
        tokenize='unicode61 remove_diacritics 0')""",
    """CREATE TRIGGER chat_message_search_insert AFTER INSERT ON chat_message
        WHEN NOT new.deleted BEGIN
        INSERT INTO chat_message_search(rowid, body) VALUES (new.id, chat_fold(new.body));
    END""",
    """CREATE TRIGGER chat_message_search_delete AFTER DELETE ON chat_message
        WHEN NOT old.deleted BEGIN
        INSERT INTO chat_message_search(chat_message_search, rowid, body)
        VALUES ('delete', old.id, chat_fold(old.body));
    END""",
    """CREATE TRIGGER chat_message_search_unindex AFTER UPDATE OF body, deleted ON chat_message
        WHEN NOT old.deleted BEGIN
        INSERT INTO chat_message_search(chat_message_search, rowid, body)
        VALUES ('delete', old.id, chat_fold(old.body));
    END""",
    """CREATE TRIGGER chat_message_search_reindex AFTER UPDATE OF body, deleted ON chat_message
        WHEN NOT new.deleted BEGIN
        INSERT INTO chat_message_search(rowid, body) VALUES (new.id, chat_fold(new.body));
    END""",
    "INSERT INTO chat_message_search(chat_message_search) VALUES ('rebuild')",
]
SQLITE_UNDO = [
    "DROP TRIGGER IF EXISTS chat_message_search_insert",
    "DROP TRIGGER IF EXISTS chat_message_search_delete",
    "DROP TRIGGER IF EXISTS chat_message_search_unindex",
    "DROP TRIGGER IF EXISTS chat_message_search_reindex",
    "DROP TABLE IF EXISTS chat_message_search",
    "DROP VIEW IF EXISTS chat_message_search_source",
]


def _run(schema_editor, statements):
    with schema_editor.connection.cursor() as cursor:
        for statement in statements:
            cursor.execute(statement)


def forwards(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        _run(schema_editor, [POSTGRES_CONFIG, POSTGRES_INDEX])
    elif vendor == "sqlite":
        from chat.search import register_sqlite_functions

        # A connection opened before the app registered it (none, normally).
        register_sqlite_functions(connection=schema_editor.connection)
        _run(schema_editor, SQLITE)
        # SQLite 3.42+: a delete takes the words out of the index at once,
        # instead of leaving a marker until segments are merged.
        with schema_editor.connection.cursor() as cursor:
            cursor.execute("SELECT sqlite_version()")
            version = tuple(int(part) for part in cursor.fetchone()[0].split("."))
        if version >= (3, 42):
            _run(
                schema_editor,
                [
                    "INSERT INTO chat_message_search(chat_message_search, rank)"
                    " VALUES ('secure-delete', 1)"
                ],
            )


def backwards(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        _run(schema_editor, [POSTGRES_UNDO])
    elif vendor == "sqlite":
        _run(schema_editor, SQLITE_UNDO)


class Migration(migrations.Migration):
    dependencies = [
        ("chat", "0013_profile"),
    ]

    operations = [migrations.RunPython(forwards, backwards, elidable=False)]
