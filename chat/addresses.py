"""Who a request or a socket comes from: the client address that limits are counted by.

The address is the TCP peer's. Only when the peer is a proxy listed in
`CHAT_TRUSTED_PROXIES` does `X-Forwarded-For` count, and then its entries
are read from the right (the one the trusted proxy appended) past every
other trusted proxy: anything further left was written by the client and
proves nothing. A client talking to daphne directly cannot choose its
address with a header.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.http import HttpRequest

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network

UNKNOWN = "unknown"


def client_address(peer: str | None, forwarded_for: Iterable[str] = ()) -> str:
    """The client's address, given the peer's and the `X-Forwarded-For` headers in order."""
    address = _parsed(peer)
    if address is None:
        return peer or UNKNOWN
    hops = [hop.strip() for header in forwarded_for for hop in header.split(",")]
    while _is_trusted(address) and hops:
        forwarded = _parsed(hops.pop())
        if forwarded is None:
            break  # garbage from a proxy we trust: keep the last good address
        address = forwarded
    return str(address)


def client_address_of_request(request: HttpRequest) -> str:
    """`client_address` of a Django request."""
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR")
    return client_address(request.META.get("REMOTE_ADDR"), [forwarded] if forwarded else [])


def client_ip_of_request(request: HttpRequest, *args: Any, **kwargs: Any) -> str | None:
    """django-axes' client IP lookup: `client_address_of_request`, or None if it is no IP.

    Axes stores it in an IP address column, which PostgreSQL checks; a peer
    that is not an IP (a Unix socket, a test client) is recorded as none.
    """
    address = _parsed(client_address_of_request(request))
    return str(address) if address is not None else None


def client_address_of_scope(scope: Any) -> str:
    """`client_address` of an ASGI connection scope."""
    client = scope.get("client")
    peer = client[0] if client else None
    forwarded = [
        value.decode("latin1")
        for name, value in scope.get("headers", ())
        if name == b"x-forwarded-for"
    ]
    return client_address(peer, forwarded)


def _parsed(text: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not text:
        return None
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _is_trusted(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return any(
        address in network for network in _trusted_networks(tuple(settings.CHAT_TRUSTED_PROXIES))
    )


@functools.cache
def _trusted_networks(proxies: tuple[str, ...]) -> tuple[_Network, ...]:
    return tuple(ipaddress.ip_network(proxy, strict=False) for proxy in proxies)
