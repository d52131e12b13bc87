"""Display names on the page, in a real Chromium: messages and members show the
name with the username in a tooltip, the profile panel changes one's name, and
a change made elsewhere reaches open pages (the `profile` event).
"""

from __future__ import annotations

import re

from playwright.sync_api import expect

from tests.browser import PHONE, open_direct, screenshot, send


def test_a_new_name_from_the_profile_panel_shows_on_every_open_page(chat_user):
    alice = chat_user("alice")
    bob = chat_user("bob")
    open_direct(alice, "bob")
    open_direct(bob, "alice")
    send(alice.page, "hello from alice")
    seen = bob.page.locator("#message-list li.message", has_text="hello from alice")
    expect(seen.locator(".from")).to_have_text("alice")

    alice.page.locator("#profile-toggle").click()
    expect(alice.page.locator("#profile-name")).to_have_value("alice")
    # A bidirectional override is refused, and the server's reason is shown.
    alice.page.locator("#profile-name").fill("evil\u202etxt")
    alice.page.get_by_role("button", name="Save").click()
    expect(alice.page.locator("#profile-error")).to_contain_text("U+202E")
    alice.page.locator("#profile-name").fill("  Alice Liddell ")
    screenshot(alice.page, "profile-panel-desktop")
    alice.page.get_by_role("button", name="Save").click()

    expect(alice.page.locator("#profile-form")).to_be_hidden()
    expect(alice.page.locator("#me")).to_have_text("Alice Liddell")
    expect(seen.locator(".from")).to_have_text("Alice Liddell")
    expect(seen.locator(".from")).to_have_attribute("title", "@alice")

    # A page opened later learns the name from the server (hello and from_name).
    bob.page.reload()
    expect(seen.locator(".from")).to_have_text("Alice Liddell")


def test_a_guest_enters_with_a_suggested_name_and_the_username_in_the_tooltip(chat_user):
    guest = chat_user(guest=True, viewport=PHONE)
    me = guest.page.locator("#me")
    expect(me).to_have_attribute("title", re.compile(r"^@guest-[0-9a-f]{8}$"))
    expect(me).not_to_have_text(re.compile(r"guest-"))
    guest.page.locator("#profile-toggle").click()
    screenshot(guest.page, "profile-panel-phone")
    guest.page.locator("#profile-name").fill("Zoë")
    guest.page.get_by_role("button", name="Save").click()
    expect(me).to_have_text("Zoë")
