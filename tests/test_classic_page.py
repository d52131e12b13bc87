"""The classic page (`/classic/`, plain-text frames on `/socket`) in a real Chromium,
chatting with people on the JSON chat page."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from tests.browser import open_direct, screenshot, send

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def classic_connect(page: Page, user_id: str = "") -> None:
    page.get_by_label("User id").fill(user_id)
    page.get_by_role("button", name="Connect").click()


def classic_send(page: Page, button: str, message: str, *, to: str = "") -> None:
    page.get_by_label("To user").fill(to)
    page.get_by_label("Message").fill(message)
    page.get_by_role("button", name=button).click()


def frame(page: Page, text: str):
    """The log line showing exactly this received frame."""
    return page.locator("#log li.frame").filter(has_text=re.compile(f"^{re.escape(text)}$"))


def message_with(page: Page, body: str):
    return page.locator("#message-list li.message .body", has_text=body)


def test_classic_page_chats_with_the_chat_page(chat_user, chat_server):
    bob = chat_user("bob")
    alice = chat_user("alice")
    page = alice.page
    page.goto(chat_server.base_url + "/classic/")
    expect(page.locator("#me")).to_have_text("alice")
    classic_connect(page, "123")  # ignored: alice is signed in
    expect(page.locator("#state")).to_have_attribute("data-state", "open")

    # Direct, both ways; commas stay in the text.
    classic_send(page, "Send to user", "hi bob, from the classic page", to="bob")
    expect(frame(page, "用户(alice=>bob):hi bob, from the classic page")).to_be_visible()
    open_direct(bob, "alice")
    expect(message_with(bob.page, "hi bob, from the classic page")).to_be_visible()
    send(bob.page, "hello, <b>classic</b> alice & co")
    expect(frame(page, "用户(bob=>alice):hello, <b>classic</b> alice & co")).to_be_visible()
    expect(page.locator("#log b")).to_have_count(0)  # shown as text, never as markup

    # Broadcast.
    classic_send(page, "Send to all", "to everyone")
    expect(frame(page, "用户(alice=>all):to everyone")).to_be_visible()
    bob.page.locator("#conversation-list li[data-key='all'] button").click()
    expect(message_with(bob.page, "to everyone")).to_be_visible()

    # Group A: the classic page joins it by sending, bob reads and answers there.
    bob.page.locator("#join-name").fill("A")
    bob.page.get_by_role("button", name="Join", exact=True).click()
    expect(bob.page.locator("#conv-title")).to_have_text("# A")
    classic_send(page, "Send to group A", "hi group A")
    expect(frame(page, "用户(alice=>A):hi group A")).to_be_visible()
    expect(message_with(bob.page, "hi group A")).to_be_visible()
    expect(bob.page.locator("#member-list li[data-user='alice']")).to_have_count(1)
    send(bob.page, "welcome to A")
    expect(frame(page, "用户(bob=>A):welcome to A")).to_be_visible()
    screenshot(page, "classic-page")

    # Errors are frames too, and the socket stays open.
    classic_send(page, "Send to user", "hello?", to="nobody")
    expect(page.locator("#log li.frame", has_text="错误(no_such_user):")).to_be_visible()
    expect(page.locator("#state")).to_have_attribute("data-state", "open")

    page.get_by_role("button", name="Close").click()
    expect(page.locator("#state")).to_have_attribute("data-state", "closed")
    alice_for_bob = bob.page.locator("#conversation-list li[data-user='alice']")
    expect(alice_for_bob).not_to_have_class(re.compile(r"\bonline\b"))


def test_classic_page_user_id_makes_a_guest(browser, chat_user, chat_server):
    bob = chat_user("bob")
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(chat_server.base_url + "/classic/")
        classic_connect(page, "4242")
        expect(page.locator("#state")).to_have_attribute("data-state", "open")
        expect(bob.page.locator("#conversation-list li[data-user='guest-4242']")).to_have_count(1)
        classic_send(page, "Send to user", "hi, I am a guest", to="bob")
        expect(frame(page, "用户(guest-4242=>bob):hi, I am a guest")).to_be_visible()
        open_direct(bob, "guest-4242")
        expect(message_with(bob.page, "hi, I am a guest")).to_be_visible()
        send(bob.page, "welcome, guest")
        expect(frame(page, "用户(bob=>guest-4242):welcome, guest")).to_be_visible()

        # The same id again is someone else's name now: refused.
        other = context.new_page()
        other.goto(chat_server.base_url + "/classic/")
        classic_connect(other, "4242")
        expect(other.locator("#log li.note", has_text="refused")).to_be_visible()
        expect(other.locator("#state")).to_have_attribute("data-state", "closed")
    finally:
        context.close()
