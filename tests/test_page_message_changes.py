"""Protocol 1.2 on the page, in a real Chromium: edits, deletes and reactions made
elsewhere are shown live, and those made while the page was offline appear after
it reconnects (`changes`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
from datetime import timedelta
from typing import Any

from django.contrib.auth.models import User
from django.utils import timezone
from playwright.sync_api import Page, expect

from chat.conversations import ReadRequest, read_positions_move
from chat.messaging import message_send
from chat.models import Message
from chat.protocol import Address
from tests.browser import PHONE, TIMEOUT, open_direct, screenshot, send, wait_connected
from tests.chatclient import open_real_socket
from tests.servers import Worker


def message_item(page: Page, body: str):
    return page.locator("#message-list li.message", has_text=body)


def _over_protocol(base_url: str, cookie: str, username: str, commands: list[dict]) -> list[dict]:
    """Commands from a socket of `username` (the page's own socket is not used)."""

    async def run() -> list[dict[str, Any]]:
        client = await open_real_socket(base_url, cookie, username)
        try:
            return [await client.request(**command) for command in commands]
        finally:
            await client.close()

    # Playwright's sync API owns this thread's event loop; the socket gets its own thread.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, run()).result(timeout=TIMEOUT * 2)


def _id_of(page: Page, body: str) -> int:
    return int(message_item(page, body).get_attribute("data-id") or 0)


def test_changes_made_live_and_while_offline_show_on_the_page(chat_user, chat_server):
    alice = chat_user("alice")
    bob = chat_user("bob")
    open_direct(alice, "bob")
    open_direct(bob, "alice")
    for body in ("live edit", "offline edit", "offline delete", "offline like"):
        send(bob.page, body)
        expect(message_item(alice.page, body)).to_be_visible()
    ids = {body: _id_of(alice.page, body) for body in ("live edit", "offline edit")}
    ids["offline delete"] = _id_of(alice.page, "offline delete")
    ids["offline like"] = _id_of(alice.page, "offline like")
    bob_cookie = bob.session_cookie()

    # Live: an edit and a reaction reach the open page.
    replies = _over_protocol(
        chat_server.base_url,
        bob_cookie,
        "bob",
        [
            {"type": "edit", "id": ids["live edit"], "body": "live edit, fixed"},
            {"type": "react", "id": ids["live edit"], "emoji": "🎉"},
        ],
    )
    assert [r["type"] for r in replies] == ["edited", "reaction"], replies
    edited = message_item(alice.page, "live edit, fixed")
    expect(edited.locator(".edited")).to_have_text("(edited)")
    expect(edited.locator(".reaction")).to_have_text("🎉 1")
    bob.context.close()

    # Offline: the server restarts while the page is away; changes made meanwhile.
    chat_server.stop()
    expect(alice.page.locator("#connection")).to_have_attribute("data-state", "offline")
    restarted = Worker(chat_server.env, name="page-server-restarted", port=chat_server.port)
    try:
        restarted.start()
        replies = _over_protocol(
            restarted.base_url,
            bob_cookie,
            "bob",
            [
                {"type": "edit", "id": ids["offline edit"], "body": "offline edit, fixed"},
                {"type": "delete", "id": ids["offline delete"]},
                {"type": "react", "id": ids["offline like"], "emoji": "👍"},
            ],
        )
        assert [r["type"] for r in replies] == ["edited", "deleted", "reaction"], replies
        wait_connected(alice.page)

        fixed = message_item(alice.page, "offline edit, fixed")
        expect(fixed.locator(".edited")).to_have_text("(edited)")
        deleted = alice.page.locator(f'#message-list li.message[data-id="{ids["offline delete"]}"]')
        expect(deleted.locator(".body")).to_have_text("This message was deleted")
        expect(message_item(alice.page, "offline delete")).to_have_count(0)
        expect(message_item(alice.page, "offline like").locator(".reaction")).to_have_text("👍 1")
        assert alice.page.evaluate("window.chatPage.client.changeRounds") >= 1
        screenshot(alice.page, "desktop-message-changes")
    finally:
        restarted.stop()
        print(f"----- log of {restarted.name} -----\n{restarted.log()}")


def test_reply_edit_react_and_delete_from_the_message_menu(chat_user):
    alice = chat_user("alice")
    bob = chat_user("bob")
    open_direct(alice, "bob")
    open_direct(bob, "alice")
    send(bob.page, "original question")
    expect(message_item(alice.page, "original question")).to_be_visible()
    # By id: the reply's quote holds the same words.
    question_id = _id_of(alice.page, "original question")
    question = alice.page.locator(f'#message-list li.message[data-id="{question_id}"]')

    # Reply: a quote above the input, then in the sent message; clicking it jumps back.
    question.hover()
    question.get_by_role("button", name="Reply").click()
    expect(alice.page.locator("#reply-bar")).to_contain_text("original question")
    send(alice.page, "my answer")
    expect(alice.page.locator("#reply-bar")).to_be_hidden()
    answer = message_item(alice.page, "my answer")
    expect(answer.locator(".reply-quote")).to_contain_text("original question")
    expect(message_item(bob.page, "my answer").locator(".reply-quote")).to_contain_text(
        "original question"
    )
    answer.locator(".reply-quote").click()
    expect(question).to_have_class(re.compile(r"\bjumped\b"))

    # Edit in place: Escape cancels, Enter saves; both see "(edited)".
    answer.hover()
    answer.get_by_role("button", name="Edit").click()
    box = alice.page.get_by_role("textbox", name="Edit message")
    box.fill("discarded")
    box.press("Escape")
    expect(message_item(alice.page, "discarded")).to_have_count(0)
    answer.hover()
    answer.get_by_role("button", name="Edit").click()
    box.fill("my better answer")
    box.press("Enter")
    better = message_item(alice.page, "my better answer")
    expect(better.locator(".edited")).to_have_text("(edited)")
    expect(message_item(bob.page, "my better answer").locator(".edited")).to_have_text("(edited)")

    # React from bob's page, then take it back by clicking the chip.
    on_bob = message_item(bob.page, "my better answer")
    on_bob.hover()
    on_bob.get_by_role("button", name="React").click()
    on_bob.get_by_role("button", name="👍").click()
    expect(on_bob.locator(".reaction")).to_have_text("👍 1")
    expect(better.locator(".reaction")).to_have_text("👍 1")
    screenshot(alice.page, "desktop-message-menu")
    on_bob.locator(".reaction").click()
    expect(better.locator(".reaction")).to_have_count(0)

    # Delete asks first; everyone sees the tombstone.
    better.hover()
    alice.page.once("dialog", lambda dialog: dialog.accept())
    better.get_by_role("button", name="Delete").click()
    for page in (alice.page, bob.page):
        expect(message_item(page, "my better answer")).to_have_count(0)
        expect(page.locator("#message-list li.message.deleted .body")).to_have_text(
            "This message was deleted"
        )


def test_a_reply_jumps_to_an_original_older_than_the_loaded_history_and_old_ones_lose_edit(
    chat_user,
):
    alice = chat_user("alice")
    chat_user("bob")
    alice.page.close()
    alice_user, bob_user = (User.objects.get(username=n) for n in ("alice", "bob"))
    to_alice = Address("user", "alice")
    original = message_send(sender=bob_user, to=to_alice, body="the original question")
    for n in range(60):  # more than a page of history between them
        message_send(sender=bob_user, to=to_alice, body=f"filler {n}")
    answer = message_send(
        sender=bob_user, to=to_alice, body="as I asked above", reply_to=original.id
    )
    # One's own message past the server's edit window (hello's `edit_window`).
    old_note = message_send(sender=alice_user, to=Address("user", "bob"), body="my old note")
    Message.objects.filter(id=old_note.id).update(created_at=timezone.now() - timedelta(hours=2))
    read_positions_move([ReadRequest(alice_user, Address("user", "bob"), old_note.id)])

    page = alice.context.new_page()
    page.goto(alice.context_base_url + "/#user/bob")
    wait_connected(page)
    quote = page.locator(f'#message-list li.message[data-id="{answer.id}"] .reply-quote')
    expect(quote).to_contain_text("the original question")
    target = page.locator(f'#message-list li.message[data-id="{original.id}"]')
    expect(target).to_have_count(0)

    quote.click()
    expect(target).to_have_class(re.compile(r"\bjumped\b"))
    expect(target).to_be_in_viewport()

    note = message_item(page, "my old note")
    note.hover()
    expect(note.get_by_role("button", name="Delete")).to_be_visible()
    expect(note.get_by_role("button", name="Edit")).to_have_count(0)


def test_typing_at_offers_people_and_a_mention_gets_its_badge(chat_user):
    alice = chat_user("alice")
    bob = chat_user("bob")
    open_direct(bob, "alice")
    everyone = '#conversation-list li[data-key="all"] button'
    alice.page.locator(everyone).click()
    expect(alice.page.locator("#conv-title")).to_have_text("Everyone")

    alice.page.locator("#body").press_sequentially("hi @bo")
    offered = alice.page.locator("#mention-list").get_by_role("option", name="@bob")
    expect(offered).to_be_visible()
    offered.click()
    expect(alice.page.locator("#body")).to_have_value("hi @bob ")
    alice.page.locator("#body").press_sequentially("look")
    alice.page.locator("#body").press("Enter")

    expect(message_item(alice.page, "hi @bob look").locator(".mention")).to_have_text("@bob")
    badge = bob.page.locator(f"{everyone} .mention-badge")
    expect(badge).to_be_visible()
    screenshot(bob.page, "desktop-mention-badge")
    bob.page.locator(everyone).click()
    expect(message_item(bob.page, "hi @bob look").locator(".mention.me")).to_have_text("@bob")
    expect(badge).to_have_count(0)


def test_a_long_press_opens_the_menu_on_a_phone(chat_user):
    friend = chat_user("dana")
    phone = chat_user("sam", viewport=PHONE)
    send(friend.page, "react to this on a phone")
    phone.page.locator("#conversation-list li[data-key='all'] button").click()
    item = message_item(phone.page, "react to this on a phone")
    expect(item).to_be_visible()
    menu = item.locator(".message-menu")

    # A long press shows as the context menu event; the page opens its own menu instead.
    item.locator(".body").dispatch_event("contextmenu")
    expect(menu).to_be_visible()
    item.get_by_role("button", name="React").click()
    # The picker's search filters the emoji by name; Enter takes the first found.
    search = item.get_by_role("searchbox", name="Search emoji")
    search.fill("no such emoji")
    expect(item.locator(".emoji-none")).to_have_text("No emoji found")
    search.fill("party")
    expect(item.locator(".emoji-choices button")).to_have_text(["🎉", "🥳"])
    screenshot(phone.page, "phone-emoji-search")
    search.press("Enter")
    expect(item.locator(".reaction")).to_have_text("🎉 1")
    expect(message_item(friend.page, "react to this on a phone").locator(".reaction")).to_have_text(
        "🎉 1"
    )
    assert phone.page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    screenshot(phone.page, "phone-message-menu")
