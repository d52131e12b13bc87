"""What a newcomer tripped on (issue 25), in a real Chromium against a real daphne:
receipts under one's own messages and after a reload, the URL that keeps the
open conversation, landing at the first unread message, the reconnect
countdown, the people picker, leaving, the member panel, the phone's top bar,
the unsent bubble, the favicon.
"""

from __future__ import annotations

import re
import time

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import Page, expect

from chat.conversations import ReadRequest, read_positions_move
from chat.messaging import message_send
from chat.protocol import Address
from tests.browser import (
    TIMEOUT,
    ChatUser,
    browser_worker_env,
    open_direct,
    screenshot,
    send,
    wait_connected,
)
from tests.servers import Worker

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

DESKTOP_1280 = {"width": 1280, "height": 800}
PHONE_390 = {"width": 390, "height": 844}


@pytest.fixture
def chat_server_env() -> dict[str, str]:
    """The page server, with room in a user's command budget for reloads in a row.

    Every page open spends several tokens (the handshake, conversations,
    history, members, changes); these tests reload and open links several
    times a second, which the default budget (`CHAT_RATE_BURST` 20) refuses
    for a few seconds (4429 "rate_limited", then refused reads asked again),
    longer than these tests wait. The budget's own tests are elsewhere
    (tests/test_consumers.py, tests/test_limits.py, and a refused page in
    tests/test_page.py).
    """
    return browser_worker_env(CHAT_RATE_BURST="200")


def message_li(page: Page, body: str):
    return page.locator("#message-list li.message", has_text=body)


def receipt_under(page: Page) -> str:
    """The text of the message the receipt line sits under, and whose it is."""
    return page.evaluate(
        "() => { const m = document.querySelector('#message-list li.seen').previousElementSibling;"
        " return (m.classList.contains('own') ? 'own: ' : 'theirs: ')"
        " + m.querySelector('.body').textContent; }"
    )


def join_group(user: ChatUser, name: str) -> None:
    user.page.locator("#join-name").fill(name)
    user.page.get_by_role("button", name="Join", exact=True).click()
    expect(user.page.locator("#conv-title")).to_have_text(f"# {name}")


# -- 1, 2: receipts ----------------------------------------------------------------


def test_seen_sits_under_ones_own_direct_message_and_comes_back_after_a_reload(chat_user):
    alice = chat_user("alice", viewport=DESKTOP_1280)
    bob = chat_user("bob", viewport=PHONE_390)
    open_direct(alice, "bob")
    open_direct(bob, "alice")

    send(alice.page, "are we on for friday?")
    expect(alice.page.locator("#message-list li.seen")).to_have_text("Seen")
    send(bob.page, "yes, at eight")
    expect(message_li(alice.page, "yes, at eight")).to_be_visible()
    # bob's reply is the newest message: "Seen" stays under alice's own one.
    expect(alice.page.locator("#message-list > li").last).to_contain_text("yes, at eight")
    assert receipt_under(alice.page) == "own: are we on for friday?"
    expect(bob.page.locator("#message-list li.seen")).to_have_text("Seen")
    assert receipt_under(bob.page) == "own: yes, at eight"
    screenshot(alice.page, "h25-desktop-seen-direct")
    screenshot(bob.page, "h25-phone-seen-direct")

    alice.page.reload()
    wait_connected(alice.page)
    expect(alice.page.locator("#conv-title")).to_have_text("bob")
    expect(alice.page.locator("#message-list li.seen")).to_have_text("Seen")
    assert receipt_under(alice.page) == "own: are we on for friday?"


def test_seen_by_in_a_group_sits_under_ones_own_message_with_names_and_after_a_reload(
    chat_user,
):
    alice = chat_user("alice", viewport=DESKTOP_1280)
    bob = chat_user("bob", viewport=DESKTOP_1280)
    carol = chat_user("carol", viewport=PHONE_390)
    for user in (alice, bob, carol):
        join_group(user, "Team")
    send(alice.page, "standup in five")
    for reader in (bob, carol):
        expect(message_li(reader.page, "standup in five")).to_be_visible()
    seen = alice.page.locator("#message-list li.seen")
    expect(seen).to_have_text("Seen by 2")
    expect(seen).to_have_attribute("title", "Seen by bob, carol")
    send(carol.page, "on my way")
    expect(message_li(alice.page, "on my way")).to_be_visible()
    assert receipt_under(alice.page) == "own: standup in five"
    # bob wrote nothing: no receipt on his page (it was once under others' messages).
    expect(message_li(bob.page, "on my way")).to_be_visible()
    expect(bob.page.locator("#message-list li.seen")).to_have_count(0)
    screenshot(alice.page, "h25-desktop-seen-group")
    screenshot(carol.page, "h25-phone-seen-group")

    alice.page.reload()
    wait_connected(alice.page)
    expect(alice.page.locator("#conv-title")).to_have_text("# Team")
    expect(seen).to_have_text("Seen by 2")
    assert receipt_under(alice.page) == "own: standup in five"


# -- 3: the URL and the first unread message ---------------------------------------


def test_the_url_keeps_the_open_conversation_for_reloads_links_and_the_back_button(chat_user):
    alice = chat_user("alice", viewport=DESKTOP_1280)
    chat_user("bob", viewport=DESKTOP_1280)
    join_group(alice, "Design Team")
    expect(alice.page).to_have_url(re.compile(r"/#group/Design%20Team$"))
    open_direct(alice, "bob")
    expect(alice.page).to_have_url(re.compile(r"/#user/bob$"))

    alice.page.reload()
    wait_connected(alice.page)
    expect(alice.page.locator("#conv-title")).to_have_text("bob")
    alice.page.go_back()
    expect(alice.page.locator("#conv-title")).to_have_text("# Design Team")
    alice.page.go_forward()
    expect(alice.page.locator("#conv-title")).to_have_text("bob")

    # A link in another tab, in any case; a group one is not in opens everyone instead.
    link = alice.context.new_page()
    link.goto(alice.context_base_url + "/#group/design%20team")
    wait_connected(link)
    expect(link.locator("#conv-title")).to_have_text("# Design Team")
    link.goto(alice.context_base_url + "/#group/Elsewhere")
    link.reload()
    wait_connected(link)
    expect(link.locator("#conv-title")).to_have_text("Everyone")
    expect(link).to_have_url(re.compile(r"/#all$"))


def test_a_conversation_with_unread_messages_opens_at_the_first_one_under_the_divider(
    chat_user,
):
    alice = chat_user("alice", viewport=DESKTOP_1280)
    chat_user("bob", viewport=DESKTOP_1280)
    alice.page.close()
    alice_user, bob_user = (User.objects.get(username=n) for n in ("alice", "bob"))
    to_alice = Address("user", "alice")
    read = [message_send(sender=bob_user, to=to_alice, body=f"old {n}").id for n in range(60)]
    read_positions_move([ReadRequest(alice_user, Address("user", "bob"), read[-1])])
    for n in range(70):  # more than one page of history
        message_send(sender=bob_user, to=to_alice, body=f"new {n}")

    page = alice.context.new_page()
    page.goto(alice.context_base_url + "/#user/bob")
    wait_connected(page)
    expect(page.locator("#conv-title")).to_have_text("bob")
    divider = page.locator("#new-divider")
    expect(divider).to_be_in_viewport()
    first_unread = page.locator("#new-divider + li.message .body")
    expect(first_unread).to_have_text("new 0")
    expect(first_unread).to_be_in_viewport()
    expect(message_li(page, "new 69")).not_to_be_in_viewport()
    expect(page.locator("#jump-unread")).to_be_hidden()
    screenshot(page, "h25-desktop-landed-at-unread")
    # Read now, everywhere: the server has the position (reads are written coalesced).
    unread = (
        "() => window.chatPage.client.request({type: 'conversations'})"
        ".then(r => r.items.find(i => i.of.user === 'bob').unread)"
    )
    deadline = time.monotonic() + TIMEOUT
    while (left := page.evaluate(unread)) != 0:
        assert time.monotonic() < deadline, f"still {left} unread on the server"
        page.wait_for_timeout(100)


# -- 4: reconnecting --------------------------------------------------------------


def test_the_reconnect_label_counts_down_and_a_returning_browser_retries_at_once(chat_user):
    server = Worker(browser_worker_env(), name="restarting").start()
    port = server.port
    try:
        alice = chat_user("alice", server=server, viewport=DESKTOP_1280)
        chat_user("bob", server=server)
        open_direct(alice, "bob")
        page = alice.page
        expect(page.locator("#conv-subtitle")).to_have_text("Online")
        label = page.locator("#connection .label")
        for wake in ("online", "visibilitychange"):
            # A long wait ahead (the backoff at its ceiling), so only the wake can end it early.
            page.evaluate("() => { window.chatPage.client.attempt = 8; Math.random = () => 0.99; }")
            server.stop()
            expect(label).to_have_text(re.compile(r"^Offline · retrying in (2\d|30) s$"))
            first = int(re.search(r"(\d+) s", label.inner_text()).group(1))
            expect(label).to_have_text(f"Offline · retrying in {first - 1} s", timeout=2500)
            expect(page.locator("#conv-subtitle")).to_have_text("")  # not "Online"
            screenshot(page, f"h25-desktop-offline-{wake}")

            server = Worker(browser_worker_env(), name="restarting", port=port).start()
            target = "window" if wake == "online" else "document"
            page.evaluate(f"() => {target}.dispatchEvent(new Event('{wake}'))")
            # Well before the countdown (20 s and more) would have run out.
            expect(page.locator("#connection")).to_have_attribute(
                "data-state", "online", timeout=5000
            )
            expect(page.locator("#conv-subtitle")).to_have_text(re.compile("^(Online|Offline)$"))
    finally:
        server.stop()


# -- 5: smaller things --------------------------------------------------------------


def test_the_people_picker_says_nobody_found_and_lists_people_apart_once(chat_user):
    alice = chat_user("alice", viewport=DESKTOP_1280)
    chat_user("bob", viewport=DESKTOP_1280)
    sidebar = alice.page.locator("#sidebar")
    expect(sidebar.locator("li[data-user='bob']")).to_have_count(1)

    alice.page.locator("#people-search").fill("zzz")
    expect(alice.page.locator("#people-found-title")).to_have_text("Nobody found")
    expect(alice.page.locator("#conversation-list")).to_be_hidden()

    alice.page.locator("#people-search").fill("b")
    expect(alice.page.locator("#people-found-title")).to_have_text("People")
    expect(alice.page.locator("#people-results li[data-user='bob']")).to_have_count(1)
    expect(sidebar.locator("li[data-user='bob']:visible")).to_have_count(1)
    screenshot(alice.page, "h25-desktop-people-search")
    alice.page.locator("#people-search").press("Escape")
    expect(alice.page.locator("#people-found")).to_be_hidden()
    expect(alice.page.locator("#conversation-list li[data-user='bob']")).to_be_visible()


def test_you_is_not_cut_off_in_the_member_panel_at_1280_px(chat_user):
    name = "alexandrina-vandersloot-2"
    alice = chat_user(name, viewport=DESKTOP_1280)
    join_group(alice, "Reading room")
    you = alice.page.locator(f"#member-list li[data-user='{name}'] .member-you")
    expect(you).to_have_text("(you)")
    inside = you.evaluate(
        "node => { const box = node.getBoundingClientRect();"
        " const panel = document.getElementById('members-panel').getBoundingClientRect();"
        " return box.width > 0 && box.right <= panel.right && box.left >= panel.left; }"
    )
    assert inside, "(you) is outside the member panel"
    screenshot(alice.page, "h25-desktop-1280-members")


# The connection drops before the server confirms a send (the page's client, driven in it).
SEND_DROPPED = """() => {
  const client = window.chatPage.client;
  const request = client.request.bind(client);
  client.request = (command) => {
    if (command.type !== "send") return request(command);
    client.request = request;
    const error = Object.assign(new Error("the connection closed"), {code: "disconnected"});
    return Promise.reject(error);
  };
}"""


def test_a_phone_has_notify_me_and_an_unsent_message_fits_in_plain_words(chat_user):
    alice = chat_user("alice", viewport=PHONE_390)
    page = alice.page
    expect(page.get_by_role("button", name="Notify me")).to_be_visible()
    screenshot(page, "h25-phone-list")
    page.locator("#conversation-list li[data-key='all'] button").click()
    expect(page.get_by_role("button", name="Notify me")).to_be_visible()
    page.evaluate(SEND_DROPPED)
    send(page, "a-rather-long-unbroken-word-" * 6 + " and more words after it")
    unsent = page.locator("#message-list li.unsent")
    expect(unsent.locator(".unsent-note")).to_contain_text(
        "Not sent: The connection dropped before the server confirmed it. "
        "Retry is safe: it will not be sent twice."
    )
    fits = unsent.evaluate(
        "item => { const box = document.getElementById('messages').getBoundingClientRect();"
        " return [...item.querySelectorAll('*')].every((n) => {"
        " const r = n.getBoundingClientRect(); return r.left >= box.left - 0.5"
        " && r.right <= box.right + 0.5; }); }"
    )
    assert fits, "the unsent message overflows its column"
    screenshot(page, "h25-phone-unsent")
    unsent.get_by_role("button", name="Retry").click()
    sent = page.locator("#message-list li.message:not(.unsent)", has_text="more words after it")
    expect(sent).to_have_count(1)
    expect(unsent).to_have_count(0)


def test_no_page_asks_for_something_that_is_not_there(chat_user):
    alice = chat_user("alice", viewport=DESKTOP_1280)
    missing: list[str] = []
    page = alice.context.new_page()
    page.on("response", lambda r: missing.append(r.url) if r.status == 404 else None)
    for path in ("/", "/classic/", "/admin/login/", "/accounts/login/"):
        page.goto(alice.context_base_url + path)
        page.wait_for_load_state("load")
    page.goto(alice.context_base_url + "/")
    wait_connected(page)
    icon = page.request.get(alice.context_base_url + "/favicon.ico")
    assert icon.ok and "svg" in icon.headers["content-type"], icon.status
    assert not missing, missing
    assert page.locator("link[rel=icon]").count() == 1


def test_leaving_asks_first_on_a_phone_too_and_forgets_the_joined_note(chat_user):
    alice = chat_user("alice", viewport=PHONE_390)
    page = alice.page
    join_group(alice, "Hikers")
    page.get_by_role("button", name="Leave group").click()
    confirm = page.locator("#leave-confirm")
    for name in ("Leave", "Cancel"):
        button = confirm.get_by_role("button", name=name, exact=True)
        expect(button).to_be_in_viewport(ratio=1)
    screenshot(page, "h25-phone-leave-confirm")
    confirm.get_by_role("button", name="Leave", exact=True).click()
    expect(page.locator("#conv-title")).to_have_text("Everyone")
    page.get_by_role("button", name="Back to conversations").click()
    expect(page.locator("#conversation-list li[data-group]")).to_have_count(0)
    expect(page.locator("#join-note")).to_be_hidden()


def test_a_newcomer_to_a_long_conversation_lands_without_loading_all_of_it(chat_user):
    """Everything said before one arrived is unread: the landing loads five pages, not 600."""
    chat_user("bob", viewport=DESKTOP_1280)
    bob_user = User.objects.get(username="bob")
    for n in range(600):
        message_send(sender=bob_user, to=Address("all"), body=f"before you came {n}")
    alice = chat_user("alice", viewport=DESKTOP_1280)
    page = alice.page
    landed = (
        "() => { const conv = window.chatPage.state.conversations.get('all');"
        " const state = window.chatPage.state;"
        " return state.listed && conv && conv.loaded && !conv.landing"
        " ? [conv.messages.size, conv.complete] : null; }"
    )
    deadline = time.monotonic() + TIMEOUT
    while (state := page.evaluate(landed)) is None:
        assert time.monotonic() < deadline, "the page never landed"
        page.wait_for_timeout(50)
    size, complete = state
    assert 250 <= size <= 300 and not complete, state
    expect(page.locator("#new-divider")).to_be_in_viewport()
    expect(page.locator("#history-status")).not_to_have_text(re.compile("beginning"))


def test_on_a_phone_a_reload_stays_in_the_conversation_and_back_returns_to_the_list(chat_user):
    alice = chat_user("alice", viewport=PHONE_390)
    chat_user("bob", viewport=DESKTOP_1280)
    page = alice.page
    open_direct(alice, "bob")
    page.reload()
    wait_connected(page)
    expect(page.locator("#conversation")).to_be_visible()
    expect(page.locator("#conv-title")).to_have_text("bob")
    page.get_by_role("button", name="Back to conversations").click()
    expect(page.locator("#sidebar")).to_be_visible()
    expect(page.locator("#conversation")).to_be_hidden()
    page.go_back()
    expect(page.locator("#conversation")).to_be_visible()
    expect(page.locator("#conv-title")).to_have_text("bob")
    page.go_back()  # before bob: the list, where the page started
    expect(page.locator("#sidebar")).to_be_visible()
