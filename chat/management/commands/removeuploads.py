"""`manage.py removeuploads`: remove uploads that no message carried within 24 hours.

Run it hourly or daily (cron or a systemd timer; README, "Limits and
abuse"): a file uploaded and never sent would otherwise take its uploader's
quota and the disk for good (`chat.uploads.remove_unsent`).
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from chat.uploads import remove_unsent


class Command(BaseCommand):
    help = "Remove uploaded files never sent in a message within 24 hours."

    def handle(self, *args: Any, **options: Any) -> None:
        removed = remove_unsent()
        self.stdout.write(f"removed {removed} upload(s) not sent within 24 hours")
