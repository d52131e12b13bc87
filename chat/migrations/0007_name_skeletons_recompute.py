"""Recomputes every stored name skeleton with the ICU the runtime now ships.

Skeletons come from ICU's confusables data, which changes with ICU's version:
pyicu-wheels brings ICU 77 (Unicode 16), where the system's PyICU build had
whatever ICU the machine had (72 on Debian 12). A skeleton stored by the old
ICU would no longer equal the one sign-up computes for a look-alike name.
"""

from django.conf import settings
from django.db import migrations


def recompute(apps, schema_editor):
    import icu

    checker = icu.SpoofChecker()
    User = apps.get_model(settings.AUTH_USER_MODEL)
    NameSkeleton = apps.get_model("chat", "NameSkeleton")
    NameSkeleton.objects.all().delete()
    rows = []
    for user_id, name in User.objects.values_list("pk", "username").iterator(chunk_size=2000):
        if name.lower().startswith("guest-"):
            continue
        for each in {
            str(checker.getSkeleton(0, name)),
            str(checker.getSkeleton(0, name.casefold())),
        }:
            rows.append(NameSkeleton(user_id=user_id, skeleton=each))
        if len(rows) >= 2000:
            NameSkeleton.objects.bulk_create(rows)
            rows = []
    NameSkeleton.objects.bulk_create(rows)


class Migration(migrations.Migration):
    dependencies = [
        ("chat", "0006_message_cid"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [migrations.RunPython(recompute, migrations.RunPython.noop)]
