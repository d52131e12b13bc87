"""Static files from the server itself: DEBUG off, a bare daphne, no proxy.

`collectstatic` into a STATIC_ROOT of the test's own, then the page in a real
browser: styled and connected means its CSS and scripts came from daphne.
"""

from __future__ import annotations

import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser

from tests.browser import browser_worker_env, sign_up, wait_connected
from tests.servers import ROOT, Worker

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

YEAR = 365 * 24 * 3600


@pytest.fixture
def production_server(transactional_db, tmp_path: Path) -> Iterator[Worker]:
    """daphne with DEBUG off serving a fresh `collectstatic` (over plain HTTP)."""
    env = browser_worker_env(
        DEBUG="false", STATIC_ROOT=str(tmp_path / "static"), ALLOWED_HOSTS="127.0.0.1,localhost"
    )
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "-v", "0"],
        cwd=ROOT,
        env=env,
        check=True,
        timeout=120,
    )
    worker = Worker(env, name="static-server").start()
    try:
        yield worker
    finally:
        worker.stop()
        print(f"----- log of {worker.name} -----\n{worker.log()}")


def fetch(url: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()


def test_the_page_works_with_debug_off_under_a_bare_daphne(browser: Browser, production_server):
    base_url = production_server.base_url
    context = browser.new_context()
    try:
        page = context.new_page()
        static_responses: dict[str, int] = {}
        page.on(
            "response",
            lambda r: (
                static_responses.__setitem__(r.url, r.status) if "/static/" in r.url else None
            ),
        )
        sign_up(page, base_url, "alice", "a-Long-passw0rd!")
        wait_connected(page)  # chat-client.js and chat-page.js ran
        # chat.css applied: the page's layout is a grid, not the browser's default.
        display = page.evaluate(
            "getComputedStyle(document.querySelector('.app') || document.body).display"
        )
        assert display in ("grid", "flex"), display
        assert static_responses and all(s == 200 for s in static_responses.values()), (
            static_responses
        )
        stylesheet = page.locator("link[rel=stylesheet]").get_attribute("href")
    finally:
        context.close()

    # Hashed names, cached for good; gzip variants for clients that take them.
    assert stylesheet and re.fullmatch(r"/static/chat/chat\.[0-9a-f]{12}\.css", stylesheet)
    status, headers, _ = fetch(base_url + stylesheet)
    assert status == 200
    max_age = int(re.search(r"max-age=(\d+)", headers["cache-control"]).group(1))
    assert max_age >= YEAR and "immutable" in headers["cache-control"]
    status, headers, body = fetch(base_url + stylesheet, **{"Accept-Encoding": "gzip"})
    assert headers.get("content-encoding") == "gzip" and body[:2] == b"\x1f\x8b"
