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


def rename(page, name: str) -> None:
    page.locator("#profile-toggle").click()
    page.locator("#profile-name").fill(name)
    page.get_by_role("button", name="Save").click()
    expect(page.locator("#me")).to_have_text(name)


def test_names_show_where_people_appear_and_a_new_name_reaches_other_pages(chat_user):
    alice = chat_user("alice")
    bob = chat_user("bob")
    rename(bob.page, "Robert Lee")
    entry = alice.page.locator("#conversation-list li[data-user='bob'] .conv-name")
    expect(entry).to_have_text("Robert Lee")
    expect(entry).to_have_attribute("title", "@bob")

    entry.click()
    title = alice.page.locator("#conv-title")
    expect(title).to_have_text("Robert Lee")
    expect(title).to_have_attribute("title", "@bob")
    open_direct(bob, "alice")
    bob.page.locator("#body").press_sequentially("are you there")
    expect(alice.page.locator("#typing")).to_have_text("Robert Lee is typing…")
    bob.page.locator("#body").press("Enter")
    question = alice.page.locator("#message-list li.message[data-from='bob']")
    expect(question.locator(".from")).to_have_text("Robert Lee")

    # Replying quotes the name; `@` offers people by a word of their name and writes the username.
    question.hover()
    question.get_by_role("button", name="Reply").click()
    expect(alice.page.locator("#reply-bar .reply-from")).to_have_text("Robert Lee")
    alice.page.locator("#body").press_sequentially("yes @lee")
    offered = alice.page.locator("#mention-list").get_by_role("option", name="Robert Lee @bob")
    expect(offered).to_be_visible()
    offered.click()
    expect(alice.page.locator("#body")).to_have_value("yes @bob ")
    alice.page.locator("#body").press("Enter")
    answer = alice.page.locator("#message-list li.message[data-from='alice']")
    quote = answer.locator(".reply-from")
    expect(quote).to_have_text("Robert Lee")
    expect(quote).to_have_attribute("title", "@bob")
    expect(answer.locator(".mention")).to_have_text("@bob")
    expect(answer.locator(".mention")).to_have_attribute("title", "Robert Lee")

    # The people picker finds them by a word of their name too (the server's `users`).
    alice.page.locator("#people-search").fill("LEE")
    found = alice.page.locator("#people-results li[data-user='bob'] .conv-name")
    expect(found).to_have_text("Robert Lee")
    expect(found).to_have_attribute("title", "@bob")
    alice.page.locator("#people-search").press("Escape")

    # A new name reaches the open page everywhere it shows.
    rename(bob.page, "Bobby")
    for shown in (entry, title, question.locator(".from"), quote):
        expect(shown).to_have_text("Bobby")
    expect(answer.locator(".mention")).to_have_attribute("title", "Bobby")
    screenshot(alice.page, "names-desktop")
