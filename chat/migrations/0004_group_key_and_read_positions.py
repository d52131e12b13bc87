"""Group names unique ignoring case, and read positions.

Existing groups whose names differ only in case are merged into the oldest
of them (its spelling is kept): the others' members become its members and
their messages move into it, then they are deleted.
"""

from django.conf import settings
from django.db import migrations, models


def merge_groups_by_key(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        # Foreign keys are checked at once, so that no trigger events are left
        # pending for the ALTER TABLE that follows in this transaction.
        schema_editor.execute("SET CONSTRAINTS ALL IMMEDIATE")
    ChatGroup = apps.get_model("chat", "ChatGroup")
    Membership = apps.get_model("chat", "Membership")
    Message = apps.get_model("chat", "Message")
    kept: dict[str, int] = {}
    for group in ChatGroup.objects.order_by("created_at", "id"):
        key = group.name.casefold()
        first = kept.get(key)
        if first is None:
            kept[key] = group.pk
            group.key = key
            group.save(update_fields=["key"])
            continue
        members = set(Membership.objects.filter(group_id=first).values_list("user_id", flat=True))
        for membership in Membership.objects.filter(group_id=group.pk):
            if membership.user_id not in members:
                Membership.objects.create(group_id=first, user_id=membership.user_id)
        Message.objects.filter(group_id=group.pk).update(group_id=first)
        group.delete()


class Migration(migrations.Migration):
    dependencies = [
        ("chat", "0003_name_skeleton"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddField(
            model_name="chatgroup",
            name="key",
            field=models.CharField(max_length=192, null=True),
        ),
        migrations.RunPython(merge_groups_by_key, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="chatgroup",
            name="key",
            field=models.CharField(max_length=192, unique=True),
        ),
        migrations.CreateModel(
            name="ReadPosition",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("conversation", models.CharField(max_length=40)),
                ("message_id", models.BigIntegerField(default=0)),
                (
                    "user",
                    models.ForeignKey(
                        on_delete=models.deletion.CASCADE,
                        related_name="chat_read_positions",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
            ],
            options={"verbose_name": "read position"},
        ),
        migrations.AddConstraint(
            model_name="readposition",
            constraint=models.UniqueConstraint(
                fields=("user", "conversation"), name="unique_read_position"
            ),
        ),
    ]
