"""`daphne bench.peers.tutorial.asgi:application`."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.peers.tutorial.settings")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.urls import path  # noqa: E402

from bench.peers.tutorial.consumers import RoomConsumer  # noqa: E402


async def healthz(scope, receive, send):  # type: ignore[no-untyped-def]
    """Answers any HTTP request with 200 (the harness waits for it)."""
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b'{"ok": true}'})


application = ProtocolTypeRouter(
    {
        "http": healthz,
        "websocket": AllowedHostsOriginValidator(
            URLRouter([path("ws/chat/", RoomConsumer.as_asgi())])
        ),
    }
)
