"""Failed logins are throttled per username and per client address (django-axes).

Against a real worker started with CHAT_LOGIN_FAILURES, behind a "proxy"
(CHAT_TRUSTED_PROXIES=127.0.0.1) so that each request can come from a client
address of its own, on /accounts/login/ and /admin/login/ alike.
"""

from __future__ import annotations

import pytest

from tests.servers import HttpSession, running_workers, worker_env

pytestmark = [pytest.mark.processes, pytest.mark.django_db(transaction=True)]

PASSWORD = "a-Long-passw0rd!"


@pytest.fixture(scope="module")
def worker(django_db_setup, django_db_blocker):
    env = worker_env(CHAT_LOGIN_FAILURES="3", CHAT_TRUSTED_PROXIES="127.0.0.1")
    with django_db_blocker.unblock(), running_workers(1, env) as (worker,):
        yield worker


def client_from(worker, address: str) -> HttpSession:
    return HttpSession(worker.base_url, headers={"X-Forwarded-For": address})


def login(worker, address: str, username: str, password: str, path="/accounts/login/") -> int:
    status, _ = client_from(worker, address).post(
        path, {"username": username, "password": password, "next": "/"}
    )
    return status


def test_a_username_is_locked_after_its_failures_from_any_addresses(worker):
    client_from(worker, "198.51.100.1").signup("alice")
    failures = [login(worker, f"198.51.100.{n}", "alice", "wrong-guess") for n in (11, 12, 13)]

    # The form again with its error, until the third failure locks the name.
    assert failures == [200, 200, 429]
    assert login(worker, "198.51.100.14", "alice", PASSWORD) == 429


def test_an_address_is_locked_after_its_failures_on_any_usernames(worker):
    client_from(worker, "198.51.100.2").signup("bob")
    failures = [login(worker, "203.0.113.20", name, "wrong") for name in ("cy", "dee", "eve")]

    assert failures == [200, 200, 429]
    assert login(worker, "203.0.113.20", "bob", PASSWORD) == 429
    assert login(worker, "203.0.113.21", "bob", PASSWORD) == 200  # logged in, at "/"


def test_the_admin_login_is_throttled_the_same_way(worker):
    failures = [
        login(worker, f"203.0.113.{n}", "root", "wrong", "/admin/login/") for n in (31, 32, 33)
    ]

    assert failures == [200, 200, 429]
    assert login(worker, "203.0.113.34", "root", "wrong-guess", "/admin/login/") == 429
