"""Group names are held to the look-alike rule of user names: each group's skeleton, unique.

Existing groups get theirs here, oldest first. A group that already looks
like an older one keeps its name and members but no skeleton (null): the
older one holds it, so no new look-alike of either can be created.
"""

import unicodedata

from django.db import migrations, models


def backfill(apps, schema_editor):
    import icu

    checker = icu.SpoofChecker()

    def skeleton(text):
        return str(checker.getSkeleton(0, text))

    ChatGroup = apps.get_model("chat", "ChatGroup")
    taken = set()
    changed = []
    for group in ChatGroup.objects.order_by("created_at", "pk").only("pk", "name").iterator(
        chunk_size=2000
    ):
        # chat.lookalikes.group_skeleton, as of this migration.
        each = skeleton(skeleton(unicodedata.normalize("NFKC", group.name)).casefold())
        if each in taken:
            continue
        taken.add(each)
        group.skeleton = each
        changed.append(group)
    ChatGroup.objects.bulk_update(changed, ["skeleton"], batch_size=2000)


class Migration(migrations.Migration):
    dependencies = [
        ("chat", "0009_relayedmessage"),
    ]

    operations = [
        migrations.AddField(
            model_name="chatgroup",
            name="skeleton",
            field=models.CharField(editable=False, max_length=1000, null=True, unique=True),
        ),
        migrations.RunPython(backfill, migrations.RunPython.noop),
    ]
