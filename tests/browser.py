"""Browser fixtures: Debian's Chromium driven by Playwright against a real daphne.

Registered in tests/conftest.py, so any test module can use them:

- `browser`: a headless Chromium (one per test module). Missing
  /usr/bin/chromium fails the test with the command that installs it.
- `chat_server`: a `tests.servers.Worker` (daphne, in-memory layer) sharing the
  test database, started for the test and stopped after it.
- `chat_user`: a factory; `chat_user()` signs a new person up through the real
  sign-up page (or `chat_user(guest=True)` through "Continue as guest") in a
  browser context of their own and returns a `ChatUser` whose page shows the
  chat, connected. Every context is closed at the end of the test.

Browser tests are plain (sync) functions marked `@pytest.mark.browser` and
`@pytest.mark.django_db(transaction=True)`. Playwright's sync API marks its
event loop as running between calls, which Django would otherwise take for
async code touching the database; `browser` allows that while it is open.
Waits use Playwright's `expect`/`wait_for` with timeouts, never sleeps.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Page,
    expect,
    sync_playwright,
)

from tests.chatclient import session_cookie_for
from tests.servers import ROOT, Worker, worker_env
from tests.users import _make_user

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = ROOT / "artifacts" / "screenshots"
DESKTOP = {"width": 1440, "height": 900}
PHONE = {"width": 375, "height": 740}
# Seconds a page may take to show what a test waits for.
TIMEOUT = 10.0

_names = itertools.count(1)
# The password of every user `chat_user` makes (`ServerSession.login` and others use it too).
PASSWORD = "a-Long-passw0rd!"


def require_chromium() -> str:
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"The browser tests need Debian's Chromium at {CHROMIUM}. "
            "Install it with `apt-get install chromium` (never `playwright install`).",
            pytrace=False,
        )
    return CHROMIUM


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """A headless Chromium for the tests of one module."""
    executable = require_chromium()
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    playwright = sync_playwright().start()
    try:
        chromium = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        report_csp_violations(chromium)
        expect.set_options(timeout=TIMEOUT * 1000)
        yield chromium
        chromium.close()
    finally:
        playwright.stop()
        # Sync Playwright leaves its loop marked as running in this thread.
        asyncio._set_running_loop(None)
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


# Content-Security-Policy violations reported in any page's console since the
# current test began; `csp_violations_fail_the_test` fails the test on any.
CSP_VIOLATIONS: list[str] = []


def report_csp_violations(chromium: Browser) -> None:
    """Record every CSP violation of every page of every context `chromium` opens."""
    new_context = chromium.new_context

    def new_context_reporting(*args: Any, **kwargs: Any) -> BrowserContext:
        context = new_context(*args, **kwargs)

        def on_console(message: ConsoleMessage) -> None:
            if "Content Security Policy" in message.text:
                CSP_VIOLATIONS.append(f"{message.location.get('url')}: {message.text}")

        context.on("console", on_console)
        return context

    chromium.new_context = new_context_reporting  # type: ignore[method-assign]


@pytest.fixture(autouse=True)
def csp_violations_fail_the_test() -> Iterator[None]:
    CSP_VIOLATIONS.clear()
    yield
    violations = list(CSP_VIOLATIONS)
    CSP_VIOLATIONS.clear()
    assert not violations, "Content-Security-Policy violations:\n" + "\n".join(violations)


def browser_worker_env(**extra: str) -> dict[str, str]:
    """`worker_env()` for a server that browsers talk to."""
    env = worker_env(**extra)
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)  # the server keeps Django's safety check
    return env


@pytest.fixture
def chat_server_env() -> dict[str, str]:
    """The page server's environment: a test module overrides it to give room in
    a limit that its tests do not test."""
    return browser_worker_env()


@pytest.fixture
def chat_server(transactional_db, chat_server_env: dict[str, str]) -> Iterator[Worker]:
    """A daphne process serving the whole site (pages, static files, socket)."""
    worker = Worker(chat_server_env, name="page-server").start()
    try:
        yield worker
    finally:
        worker.stop()
        print(f"----- log of {worker.name} (port {worker.port}) -----\n{worker.log()}")


@dataclass
class ChatUser:
    """One person in a browser context of their own, on the chat page."""

    username: str
    context: BrowserContext
    page: Page

    def open_page(self, base_url: str | None = None) -> Page:
        """Another tab of the same person (same session), connected."""
        page = self.context.new_page()
        page.goto((base_url or self.context_base_url) + "/")
        wait_connected(page)
        return page

    @property
    def context_base_url(self) -> str:
        return re.match(r"https?://[^/]+", self.page.url).group(0)  # type: ignore[union-attr]

    def session_cookie(self) -> str:
        for cookie in self.context.cookies():
            if cookie["name"] == "sessionid":
                return cookie["value"]
        raise AssertionError(f"{self.username} has no session cookie")


def wait_connected(page: Page, timeout: float | None = None) -> None:
    """Wait until the page's connection indicator says it is connected (`timeout` in s)."""
    expect(page.locator("#connection")).to_have_attribute(
        "data-state", "online", timeout=None if timeout is None else timeout * 1000
    )


def wait_for(page: Page | None, condition: Callable[[], bool], failure: Callable[[], str]) -> None:
    """Let Playwright deliver its events (on `page`, if the condition is about one)
    until `condition` holds; after TIMEOUT, fail with `failure()` (what is seen then)."""
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, failure()
        if page is None:
            time.sleep(0.05)
        else:
            page.wait_for_timeout(50)


def wait_until_true(page: Page, expression: str) -> None:
    """Poll a page expression. Not `page.wait_for_function`: once it has to poll, it
    evaluates its predicate with `eval`, which the page's CSP forbids."""
    wait_for(
        page,
        lambda: bool(page.evaluate(expression)),
        lambda: f"still false after {TIMEOUT} s: {expression}",
    )


def sign_up(page: Page, base_url: str, username: str, password: str) -> None:
    page.goto(base_url + "/accounts/signup/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_label("Password confirmation").fill(password)
    page.get_by_role("button", name="Sign up").click()
    page.wait_for_url(base_url + "/")


def continue_as_guest(page: Page, base_url: str) -> None:
    page.goto(base_url + "/accounts/login/")
    page.get_by_role("button", name="Continue as guest").click()
    page.wait_for_url(base_url + "/")


@pytest.fixture
def chat_user(browser: Browser, chat_server: Worker) -> Iterator[Callable[..., ChatUser]]:
    """`chat_user(name=None, *, guest=False, viewport=DESKTOP, server=None)`."""
    contexts: list[BrowserContext] = []

    def _chat_user(
        name: str | None = None,
        *,
        guest: bool = False,
        viewport: dict[str, int] = DESKTOP,
        server: Worker | None = None,
    ) -> ChatUser:
        base_url = (server or chat_server).base_url
        context = browser.new_context(viewport=viewport)  # type: ignore[arg-type]
        contexts.append(context)
        page = context.new_page()
        if guest:
            continue_as_guest(page, base_url)
        else:
            # Made and logged in as the sign-up page would (its own tests sign
            # up through it), without the page's password hash on the server.
            name = name or f"user{next(_names)}"
            cookie = session_cookie_for(_make_user(name, PASSWORD))
            context.add_cookies([{"name": "sessionid", "value": cookie, "url": base_url}])
            page.goto(base_url + "/")
        wait_connected(page)
        # `#me` shows the display name (a guest's is a suggestion); the config has the username.
        username = page.evaluate(
            "JSON.parse(document.getElementById('chat-config').textContent).user"
        )
        return ChatUser(username=username, context=context, page=page)

    yield _chat_user
    for context in contexts:
        context.close()


def open_direct(user: ChatUser, other: str) -> None:
    """Open the direct conversation with `other` from the people list."""
    user.page.locator(f"#conversation-list li[data-user='{other}'] button").click()
    expect(user.page.locator("#conv-title")).to_have_text(other)


def send(page: Page, body: str) -> None:
    """Type a message in the composer and press Enter."""
    box = page.locator("#body")
    box.fill(body)
    box.press("Enter")


def screenshot(page: Page, name: str) -> Path:
    """Save a screenshot under artifacts/screenshots/ and return its path."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path))
    return path
