"""chatsite.settings with persistent database connections (CONN_MAX_AGE).

Until commit 0058045 chatsite.settings parsed DATABASE_URL with
conn_max_age=0, so every `database_sync_to_async` call (one per message sent)
opened and closed a PostgreSQL connection; the what-if runs in
bench/RESULTS.md measured this variant against that. Since then the default
keeps connections for DATABASE_CONN_MAX_AGE (600 s), so the variant differs
only in keeping them forever.
"""

from chatsite.settings import *  # noqa: F403
from chatsite.settings import DATABASES

DATABASES["default"]["CONN_MAX_AGE"] = None
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
