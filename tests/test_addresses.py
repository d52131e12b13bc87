"""chat.addresses: the client address is the peer's unless a trusted proxy says otherwise."""

from __future__ import annotations

import pytest
from django.test import RequestFactory

from chat.addresses import client_address, client_address_of_request, client_address_of_scope


def test_without_trusted_proxies_the_peer_is_the_client_whatever_it_claims(settings):
    settings.CHAT_TRUSTED_PROXIES = []

    assert client_address("203.0.113.7", ["198.51.100.1"]) == "203.0.113.7"


@pytest.mark.parametrize(
    ("forwarded", "expected"),
    [
        (["198.51.100.1"], "198.51.100.1"),
        # The client wrote the left part itself; the proxy appended the right.
        (["6.6.6.6, 198.51.100.1"], "198.51.100.1"),
        (["6.6.6.6", "198.51.100.1"], "198.51.100.1"),
        # A chain of trusted proxies is walked back to the first untrusted hop.
        (["198.51.100.1, 10.0.0.5"], "198.51.100.1"),
        ([], "127.0.0.1"),
        (["not-an-address"], "127.0.0.1"),
    ],
)
def test_a_trusted_proxy_names_the_client(settings, forwarded, expected):
    settings.CHAT_TRUSTED_PROXIES = ["127.0.0.1", "10.0.0.0/8"]

    assert client_address("127.0.0.1", forwarded) == expected


def test_an_untrusted_peer_cannot_pass_through_a_trusted_looking_header(settings):
    settings.CHAT_TRUSTED_PROXIES = ["10.0.0.0/8"]

    assert client_address("203.0.113.7", ["10.0.0.1"]) == "203.0.113.7"


def test_requests_and_sockets_are_read_the_same_way(settings):
    settings.CHAT_TRUSTED_PROXIES = ["127.0.0.1"]
    request = RequestFactory().get(
        "/", REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="6.6.6.6, 198.51.100.1"
    )
    scope = {
        "client": ("127.0.0.1", 5000),
        "headers": [(b"x-forwarded-for", b"6.6.6.6, 198.51.100.1")],
    }

    assert client_address_of_request(request) == client_address_of_scope(scope) == "198.51.100.1"


def test_axes_gets_an_ip_or_none(settings):
    from chat.addresses import client_ip_of_request

    settings.CHAT_TRUSTED_PROXIES = []
    with_peer = RequestFactory().get("/", REMOTE_ADDR="203.0.113.7")
    without_peer = RequestFactory().get("/")
    without_peer.META.pop("REMOTE_ADDR", None)

    assert client_ip_of_request(with_peer) == "203.0.113.7"
    assert client_ip_of_request(without_peer) is None


# -- IPv6 clients are counted by network ---------------------------------------


@pytest.mark.parametrize(
    ("prefix", "address", "expected"),
    [
        (64, "2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        (64, "2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
        (48, "2001:db8:1:2::1", "2001:db8:1::/48"),
        (128, "2001:db8:1:2::1", "2001:db8:1:2::1"),
        (64, "::ffff:203.0.113.7", "203.0.113.7"),  # an IPv4 client on a dual-stack socket
        (64, "203.0.113.7", "203.0.113.7"),
    ],
)
def test_an_ipv6_client_is_its_network(settings, prefix, address, expected):
    settings.CHAT_IPV6_PREFIX = prefix
    settings.CHAT_TRUSTED_PROXIES = []
    request = RequestFactory().get("/", REMOTE_ADDR=address)

    assert client_address_of_scope({"client": (address, 5000)}) == expected
    assert client_address_of_request(request) == expected


def test_addresses_of_one_network_behind_a_trusted_proxy_are_one_client(settings):
    settings.CHAT_TRUSTED_PROXIES = ["::1"]
    scopes = [
        {"client": ("::1", 5000), "headers": [(b"x-forwarded-for", f"2001:db8::{n:x}".encode())]}
        for n in range(1, 31)
    ]

    assert {client_address_of_scope(scope) for scope in scopes} == {"2001:db8::/64"}


def test_axes_gets_the_first_address_of_an_ipv6_network(settings):
    from chat.addresses import client_ip_of_request

    settings.CHAT_TRUSTED_PROXIES = []
    request = RequestFactory().get("/", REMOTE_ADDR="2001:db8:1:2:3:4:5:6")

    assert client_ip_of_request(request) == "2001:db8:1:2::"
