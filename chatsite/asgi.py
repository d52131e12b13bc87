"""ASGI entry point: `daphne chatsite.asgi:application`.

HTTP goes to Django; websockets must come from the site's own origin
(`chat.sockets.origins`: Django's CSRF rule), get their Django session and user from
`chat.sockets.auth` (one layer where Channels' `AuthMiddlewareStack` has three), then
are routed to the chat sockets by `chat.sockets.routing` (no scope copy or frame of
its own, unlike Channels' URLRouter).
"""

import os

from django.conf import settings

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")
# The server's statements get a time limit before any connection is made;
# `manage.py` commands (migrate) keep none.
from chat.database import limit_statements

limit_statements(settings.DATABASES, settings.CHAT_DATABASE_TIMEOUT)

from django.core.asgi import get_asgi_application  # noqa: E402

# Build Django's app (which sets Django up) before importing anything that
# touches models.
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter  # noqa: E402

from chat.checks import report_fast_paths  # noqa: E402
from chat.collector import freeze_startup_objects  # noqa: E402
from chat.logs import every_line_through_logging  # noqa: E402
from chat.sockets.auth import SessionAuthMiddleware  # noqa: E402
from chat.sockets.origins import SiteOriginValidator, answer_malformed_origins_with_403  # noqa: E402
from chat.sockets.routing import websocket_router  # noqa: E402
from chat.sockets.transport import defer_autobahn_debug_formatting  # noqa: E402
from chat.upload_views import limit_upload_bodies  # noqa: E402
from chat.worker import start_with_the_server  # noqa: E402

if settings.CHAT_LOG_FORMAT == "json":
    every_line_through_logging()
# Daphne runs no system checks: say which fast paths are on, and why any is off.
report_fast_paths()
# Under daphne: autobahn's per-connection debug line is formatted only if written.
defer_autobahn_debug_formatting()
# Under daphne: an Origin autobahn cannot parse is refused with 403 too.
answer_malformed_origins_with_403()
# Under daphne: the hub starts with the server (heartbeat, stale rows cleared).
start_with_the_server()

application = ProtocolTypeRouter(
    {
        # A too-large upload is refused while it streams in, not after.
        "http": limit_upload_bodies(django_asgi_app),
        "websocket": SiteOriginValidator(SessionAuthMiddleware(websocket_router)),
    }
)
# Last: everything built so far lives as long as the process.
freeze_startup_objects()
