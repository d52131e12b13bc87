"""Finding people by name (`users`): indexes for PostgreSQL.

A GIN index over each display name's words, split and folded by message
search's `chat_search` configuration (migration 0014), for "a word of the
name starts with q" (`chat.profiles.name_has_words`). And a btree index over
the upper-cased username with `text_pattern_ops`, for the username prefix
(Django's `istartswith`: `UPPER(username::text) LIKE UPPER('q%')`), which
the user table has none for. `users` unions both, so each is an index scan.
SQLite (small installations) scans; nothing to do.
"""

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import migrations

NAME_INDEX = "chat_profile_name_words"
USERNAME_INDEX = "chat_username_upper_prefix"


def forwards(apps, schema_editor):
    connection = schema_editor.connection
    if connection.vendor != "postgresql":
        return
    user_model = apps.get_model(settings.AUTH_USER_MODEL)
    quote = connection.ops.quote_name
    # Historical models carry no USERNAME_FIELD; the current one names the field.
    field = get_user_model().USERNAME_FIELD
    username = quote(user_model._meta.get_field(field).column)
    with connection.cursor() as cursor:
        cursor.execute(
            f"CREATE INDEX {NAME_INDEX} ON chat_profile"
            " USING gin (to_tsvector('chat_search'::regconfig, translate(name, 'ς', 'σ')))"
        )
        cursor.execute(
            f"CREATE INDEX {USERNAME_INDEX} ON {quote(user_model._meta.db_table)}"
            f" (UPPER({username}::text) text_pattern_ops)"
        )


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(f"DROP INDEX IF EXISTS {NAME_INDEX}")
        cursor.execute(f"DROP INDEX IF EXISTS {USERNAME_INDEX}")


class Migration(migrations.Migration):
    dependencies = [
        ("chat", "0017_message_search_fastupdate_off"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [migrations.RunPython(forwards, backwards, elidable=False)]
