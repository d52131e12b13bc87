"""Which origins may open a websocket: Django's CSRF rule, applied to the handshake.

A browser sends the session cookie with any socket a page opens, whichever
site the page came from; the Origin header is what tells them apart. The
Origin must be the site's own origin (scheme, host and port, as the
handshake's Host and scheme give it) or one listed in CSRF_TRUSTED_ORIGINS,
exactly as `CsrfViewMiddleware` decides for a form. Every refusal is an HTTP
403, a malformed Origin or Host included.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.http.request import split_domain_port, validate_host
from django.utils.http import is_same_domain


def header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def handshake_is_secure(scope: dict[str, Any]) -> bool:
    """Whether the page was served over HTTPS: wss, or a trusted proxy says so."""
    if scope.get("scheme") == "wss":
        return True
    proxy_header = settings.SECURE_PROXY_SSL_HEADER
    if proxy_header:
        name, secure_value = proxy_header
        meta_name = name.removeprefix("HTTP_").lower().replace("_", "-").encode()
        value = header(scope, meta_name)
        if value is not None:
            return value.split(",", 1)[0].strip() == secure_value
    return False


def site_origin(scope: dict[str, Any]) -> str | None:
    """`scheme://host[:port]` of the site as the handshake names it, if the host is allowed."""
    host = header(scope, b"host")
    if host is None:
        return None
    domain, _port = split_domain_port(host)
    if not domain or not validate_host(domain, settings.ALLOWED_HOSTS):
        return None
    return f"{'https' if handshake_is_secure(scope) else 'http'}://{host}"


def origin_allowed(scope: dict[str, Any]) -> bool:
    origin = header(scope, b"origin")
    if origin is None:
        return False
    own = site_origin(scope)
    if own is not None and origin.lower() == own.lower():
        return True
    trusted = settings.CSRF_TRUSTED_ORIGINS
    if origin in trusted:
        return True
    try:
        parsed = urlsplit(origin)
    except ValueError:
        return False
    return any(
        parsed.scheme == pattern.scheme
        and is_same_domain(parsed.netloc, pattern.netloc.lstrip("*"))
        for pattern in (urlsplit(entry) for entry in trusted if "*" in entry)
    )


class SiteOriginValidator:
    """ASGI middleware: a websocket from another origin gets HTTP 403, never the app."""

    def __init__(self, application: Any) -> None:
        self.application = application

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope["type"] == "websocket" and not origin_allowed(scope):
            # Closing before accepting is answered with HTTP 403.
            message = await receive()
            if message["type"] == "websocket.connect":
                await send({"type": "websocket.close"})
            return None
        return await self.application(scope, receive, send)


MALFORMED_ORIGIN = "HTTP Origin header invalid"


def answer_malformed_origins_with_403() -> None:
    """Have daphne refuse an Origin that autobahn cannot parse with 403, as any other.

    autobahn parses the Origin before the application sees the handshake and
    fails it with 400 when it is malformed (a port that is no number).
    """
    from daphne.ws_protocol import WebSocketProtocol

    original = WebSocketProtocol.failHandshake
    if getattr(original, "answers_malformed_origins_with_403", False):
        return

    def failHandshake(
        self: Any,
        reason: str,
        code: int = 400,
        responseHeaders: Any = None,
    ) -> None:
        if reason.startswith(MALFORMED_ORIGIN):
            code = 403
        original(self, reason, code, responseHeaders)

    failHandshake.answers_malformed_origins_with_403 = True  # type: ignore[attr-defined]
    WebSocketProtocol.failHandshake = failHandshake
