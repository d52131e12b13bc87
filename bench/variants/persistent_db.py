"""chatsite.settings with persistent database connections (CONN_MAX_AGE).

chatsite.settings parses DATABASE_URL with conn_max_age=0, so every
`database_sync_to_async` call (one per message sent) opens and closes a
PostgreSQL connection. This variant keeps the connection of the executor
thread open, with Django's health check before reuse.
"""

from chatsite.settings import *  # noqa: F403
from chatsite.settings import DATABASES

DATABASES["default"]["CONN_MAX_AGE"] = None
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
