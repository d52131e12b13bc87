"""`manage.py removeguests`: remove guests that have not connected for a while.

Run it daily (cron or a systemd timer; README, "Limits and abuse"). The
retention is CHAT_GUEST_RETENTION_DAYS; messages the guests sent or received
stay in everyone else's history (`chat.accounts.guests_remove_inactive`).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from chat.accounts import guests_remove_inactive


class Command(BaseCommand):
    help = "Remove guest users that have not connected for CHAT_GUEST_RETENTION_DAYS."

    def handle(self, *args: Any, **options: Any) -> None:
        result = guests_remove_inactive()
        self.stdout.write(
            f"removed {result.removed} guest(s) not connected for "
            f"{settings.CHAT_GUEST_RETENTION_DAYS} days or more"
        )
        if result.failed:
            # Non-zero exit, so that cron reports it; the next run tries them again.
            raise CommandError(
                f"could not remove {len(result.failed)} guest(s), left for the next run: "
                + ", ".join(result.failed[:20])
            )
