"""Content-Security-Policy on every page, and user text isolated on both pages.

Browser tests: any CSP violation in a page's console fails them
(`tests.browser.csp_violations_fail_the_test`), so each page here is shown
working under the policy: chat, classic, login, sign-up and the admin.
"""

from __future__ import annotations

import re
import urllib.request

import pytest
from django.contrib.auth import get_user_model
from playwright.sync_api import expect

from tests.browser import open_direct, send
from tests.test_classic_page import classic_connect, classic_send

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

RLO = "\u202e"  # RIGHT-TO-LEFT OVERRIDE


def policy_of(url: str) -> dict[str, str]:
    with urllib.request.urlopen(url, timeout=10) as response:
        header = response.headers["Content-Security-Policy"]
    assert header, f"{url} has no Content-Security-Policy"
    return {
        part.split()[0]: " ".join(part.split()[1:])
        for part in (p.strip() for p in header.split(";"))
        if part
    }


def test_pages_are_served_with_a_strict_policy(chat_server):
    base = chat_server.base_url
    for path in ("/accounts/login/", "/accounts/signup/", "/classic/", "/admin/login/"):
        policy = policy_of(base + path)
        assert policy["default-src"] == "'none'"
        assert policy["script-src"] == "'self'" and policy["style-src"] == "'self'"
        assert policy["frame-ancestors"] == "'none'"
        host = base.removeprefix("http://")
        assert policy["connect-src"].split() == ["'self'", f"ws://{host}"]
        assert "unsafe-inline" not in " ".join(policy.values())


def test_chat_and_classic_pages_work_under_the_policy_and_isolate_user_text(chat_user, chat_server):
    bob = chat_user("bob")
    alice = chat_user("alice")
    open_direct(alice, "bob")
    # A right-to-left override in a body must not reorder what follows it.
    send(alice.page, f"{RLO}evil text")
    body = alice.page.locator("#message-list li.message .body", has_text="evil text")
    expect(body).to_have_attribute("dir", "auto")
    assert body.evaluate("node => getComputedStyle(node).unicodeBidi") == "isolate"
    sender = bob.page
    open_direct(bob, "alice")
    name = sender.locator("#message-list li.message .from").last
    expect(name).to_have_text("alice")
    assert name.evaluate("node => node.tagName") == "BDI"

    # The classic page: a line break inside a frame stays inside its entry.
    page = alice.page
    page.goto(chat_server.base_url + "/classic/")
    classic_connect(page)
    expect(page.locator("#state")).to_have_attribute("data-state", "open")
    # Bob sends from the chat page, whose composer keeps line breaks.
    bob.page.locator("#conversation-list li[data-key='all'] button").click()
    send(bob.page, "hello\n用户(carol=>all):please send me your password")
    entries = page.locator("#log li", has_text="please send me your password")
    expect(entries).to_have_count(1)
    entry = entries.first
    expect(entry).to_have_attribute("dir", "auto")
    style = entry.evaluate(
        "node => { const s = getComputedStyle(node);"
        " return [s.unicodeBidi, s.borderTopWidth, s.borderBottomWidth, s.whiteSpace]; }"
    )
    assert style[0] == "isolate" and style[1] != "0px" and style[2] != "0px", style
    # Both lines of the frame are in the one box.
    assert entry.evaluate("node => node.getBoundingClientRect().height") > 1.5 * float(
        entry.evaluate("node => parseFloat(getComputedStyle(node).lineHeight) || 20")
    )
    classic_send(page, "Send to all", f"{RLO}reversed?")
    expect(page.locator("#log li", has_text="reversed?")).to_have_attribute("dir", "auto")


def test_the_admin_works_under_the_policy(browser, chat_server):
    get_user_model().objects.create_superuser("root", "root@example.com", "pw-root-long-1")
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(chat_server.base_url + "/admin/")
        page.get_by_label("Username").fill("root")
        page.get_by_label("Password").fill("pw-root-long-1")
        page.get_by_role("button", name=re.compile("Log in", re.I)).click()
        expect(page.locator("#site-name")).to_be_visible()
        for path in ("/admin/chat/message/", "/admin/auth/user/", "/admin/auth/user/add/"):
            page.goto(chat_server.base_url + path)
            expect(page.locator("#content")).to_be_visible()
        # The admin's own scripts ran (the sidebar toggle is added by nav_sidebar.js).
        page.goto(chat_server.base_url + "/admin/chat/message/")
        expect(page.locator("#toggle-nav-sidebar")).to_be_visible()
    finally:
        context.close()
