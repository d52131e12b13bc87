"""The Content-Security-Policy of every response (django-csp), with the site's socket.

The policy itself is in settings (`CONTENT_SECURITY_POLICY`): scripts, styles
and connections from the site only, no inline script or style, no framing.
A page's socket is on the site too, but `connect-src 'self'` names it only in
browsers that apply CSP 3's rule for ws/wss; the handshake's own host, with
the page's scheme, is added to every policy so that all of them allow it.
"""

from __future__ import annotations

from typing import Any

from csp.middleware import CSPMiddleware, PolicyParts
from django.core.exceptions import DisallowedHost
from django.http import HttpRequest, HttpResponseBase


class SiteCSPMiddleware(CSPMiddleware):
    def get_policy_parts(
        self, request: HttpRequest, response: HttpResponseBase, report_only: bool = False
    ) -> PolicyParts:
        parts = super().get_policy_parts(request, response, report_only)
        try:
            host = request.get_host()
        except DisallowedHost:
            return parts
        socket = f"{'wss' if request.is_secure() else 'ws'}://{host}"
        update: dict[str, Any] = dict(parts.update or {})
        update["connect-src"] = [*update.get("connect-src", ()), socket]
        parts.update = update
        return parts
