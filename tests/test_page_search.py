"""Searching messages on the page, in a real Chromium: `/` opens the search box,
results come with their matched words highlighted, and a click opens the
conversation at that message (`history.around`), far back in a long one.
"""

from __future__ import annotations

from django.contrib.auth import get_user_model
from playwright.sync_api import expect

from chat.messaging import message_send
from chat.protocol import Address
from tests.browser import screenshot


def test_search_and_jump_to_an_old_result(chat_user):
    alice = chat_user("alice")
    bob = get_user_model().objects.create_user(username="bob", password="pw-bob")
    to_alice = Address("user", "alice")
    message_send(sender=bob, to=to_alice, body="the Квартальный отчёт is attached")
    needle = message_send(sender=bob, to=to_alice, body="where is the blue umbrella?").id
    # More than the page's history pages before the newest, which shows first.
    for n in range(130):
        message_send(sender=bob, to=to_alice, body=f"filler {n}")
    page = alice.page

    # Ctrl-K from anywhere, the composer included; "/" from outside a text field.
    page.locator("#body").press("Control+k")
    expect(page.locator("#search-box")).to_be_focused()
    page.locator("#messages").focus()
    page.keyboard.press("/")
    expect(page.locator("#search-box")).to_be_focused()
    page.keyboard.type("umbre")

    results = page.locator("#search-results li")
    expect(results).to_have_count(1)
    expect(results.locator("mark")).to_have_text("umbrella")
    expect(results.locator(".search-conv")).to_have_text("@ bob")
    page.locator("#search-box").fill("КВАРТАЛЬНЫЙ")
    expect(results.locator("mark")).to_have_text("Квартальный")
    page.locator("#search-box").fill("umbrella")
    expect(results.locator("mark")).to_have_text("umbrella")
    screenshot(page, "search-results")

    results.first.locator("button").click()

    expect(page.locator("#conv-title")).to_have_text("bob")
    target = page.locator(f'#message-list li.message[data-id="{needle}"]')
    expect(target).to_be_in_viewport()
    expect(page.locator("#search-panel")).to_be_hidden()
    # The newest are not loaded meanwhile: a way back to them.
    expect(page.locator("#message-list li.message", has_text="filler 129")).to_have_count(0)
    screenshot(page, "search-jumped")
    page.locator("#show-newest").click()
    expect(page.locator("#message-list li.message", has_text="filler 129")).to_be_visible()
