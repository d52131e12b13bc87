"""Who a request or a socket comes from: the client address that limits are counted by.

The address is the TCP peer's. Only when the peer is a proxy listed in
`CHAT_TRUSTED_PROXIES` does `X-Forwarded-For` count, and then its entries
are read from the right (the one the trusted proxy appended) past every
other trusted proxy: anything further left was written by the client and
proves nothing. A client talking to daphne directly cannot choose its
address with a header.

An IPv6 client is counted by its network of `CHAT_IPV6_PREFIX` bits (a
/64 by default): one subscriber is commonly given a whole /64, so counting
single IPv6 addresses would give each client 2**64 allowances.
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


def limit_key(address: str) -> str:
    """What per-address limits count `address` as: an IPv4 address itself,
    an IPv6 one as its `CHAT_IPV6_PREFIX` network (`2001:db8:1:2::/64`).
    Anything that is no IP address is its own key."""
    parsed = _parsed(address)
    if not isinstance(parsed, ipaddress.IPv6Address):
        return str(parsed) if parsed is not None else address
    prefix = settings.CHAT_IPV6_PREFIX
    if prefix >= 128:
        return str(parsed)
    return str(ipaddress.IPv6Network((parsed, prefix), strict=False))


def client_address_of_request(request: HttpRequest) -> str:
    """`limit_key` of the client address of a Django request."""
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR")
    peer = request.META.get("REMOTE_ADDR")
    return limit_key(client_address(peer, [forwarded] if forwarded else []))


def client_ip_of_request(request: HttpRequest, *args: Any, **kwargs: Any) -> str | None:
    """django-axes' client IP lookup: an IP standing for `client_address_of_request`,
    or None if that is no IP.

    Axes stores it in an IP address column, which PostgreSQL checks, so an
    IPv6 network is given as its first address; a peer that is not an IP
    (a Unix socket, a test client) is recorded as none.
    """
    key = client_address_of_request(request)
    address = _parsed(key.partition("/")[0])
    return str(address) if address is not None else None


def client_address_of_scope(scope: Any) -> str:
    """`limit_key` of the client address of an ASGI connection scope."""
    client = scope.get("client")
    peer = client[0] if client else None
    forwarded = [
        value.decode("latin1")
        for name, value in scope.get("headers", ())
        if name == b"x-forwarded-for"
    ]
    return limit_key(client_address(peer, forwarded))


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
