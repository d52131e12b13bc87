"""The page's protocol 1.1 features in a real Chromium against a real daphne:
conversations from the server, unread across tabs and reloads, typing,
receipts, unsent messages kept with retry, group names ignoring case.
"""

from __future__ import annotations

import itertools
import re

import pytest
from django.contrib.auth.models import User
from django.utils import timezone
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Page, WebSocketRoute, expect

from chat.models import Message
from tests.browser import (
    TIMEOUT,
    ChatUser,
    browser_worker_env,
    open_direct,
    screenshot,
    send,
    wait_for,
    wait_until_true,
)
from tests.servers import Worker
from tests.stalls import message_table_locked

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def send_over_socket(page: Page, to: dict, body: str) -> None:
    """Send through the page's client (to someone offline, before a picker exists)."""
    reply = page.evaluate(
        "([to, body]) => window.chatPage.client.request({type: 'send', to, body})", [to, body]
    )
    assert reply["type"] == "ack", reply


def person(page: Page, name: str):
    return page.locator(f"#conversation-list li[data-user='{name}']")


def test_an_offline_direct_message_shows_after_login_with_its_badge(chat_user):
    alice = chat_user("alice")
    bob = chat_user("bob")
    alice.page.close()
    expect(person(bob.page, "alice")).to_have_count(0, timeout=TIMEOUT * 1000)

    send_over_socket(bob.page, {"user": "alice"}, "while you were out")
    send_over_socket(bob.page, {"user": "alice"}, "call me http://example.com/x?y=1")

    page = alice.open_page()
    entry = person(page, "bob")
    expect(entry.locator(".badge")).to_have_text("2")
    expect(entry.locator(".conv-preview")).to_contain_text("call me")
    expect(page).to_have_title("(2) Chat")
    screenshot(page, "desktop-offline-dm-badge")
    open_direct(ChatUser("alice", alice.context, page), "bob")
    link = page.locator("#message-list .body a")
    expect(link).to_have_attribute("href", "http://example.com/x?y=1")
    expect(link).to_have_attribute("rel", "noopener noreferrer")
    expect(page.locator("#new-divider")).to_be_visible()
    expect(entry.locator(".badge")).to_have_count(0)


def test_unread_survives_a_reload_and_agrees_between_two_tabs(chat_user):
    alice = chat_user("alice")
    bob = chat_user("bob")
    second_tab = alice.open_page()
    expect(second_tab.locator("#connection")).to_have_attribute("data-state", "online")

    send_over_socket(bob.page, {"user": "alice"}, "hello twice")
    for page in (alice.page, second_tab):
        expect(person(page, "bob").locator(".badge")).to_have_text("1")
    second_tab.reload()
    expect(person(second_tab, "bob").locator(".badge")).to_have_text("1")

    open_direct(alice, "bob")
    expect(person(second_tab, "bob").locator(".badge")).to_have_count(0)
    second_tab.reload()
    expect(person(second_tab, "bob")).to_be_visible()
    expect(person(second_tab, "bob").locator(".badge")).to_have_count(0)
    expect(second_tab).to_have_title("Chat")


def test_typing_shows_and_clears_and_seen_appears(chat_user):
    alice = chat_user("alice")
    bob = chat_user("bob")
    open_direct(alice, "bob")
    open_direct(bob, "alice")

    bob.page.locator("#body").fill("I am writ")
    expect(alice.page.locator("#typing")).to_have_text("bob is typing…")
    expect(person(alice.page, "bob").locator(".typing-note")).to_have_count(0)  # open here
    screenshot(alice.page, "desktop-typing")
    bob.page.locator("#body").press("Enter")
    expect(
        alice.page.locator("#message-list li.message .body", has_text="I am writ")
    ).to_be_visible()
    expect(alice.page.locator("#typing")).to_have_text("")

    send(alice.page, "did you see this?")
    expect(alice.page.locator("#message-list li.seen")).to_have_text("Seen")
    screenshot(alice.page, "desktop-seen")


def test_a_rate_limited_message_stays_with_a_working_retry_and_discard(chat_user):
    # One token opens the page's socket, one sends "first".
    strict = Worker(
        browser_worker_env(CHAT_RATE_BURST="2", CHAT_RATE_PER_SECOND="0.5"), name="strict"
    ).start()
    try:
        alice = chat_user("alice", server=strict)
        page = alice.page
        send(page, "first")
        send(page, "second, too soon")
        unsent = page.locator("#message-list li.unsent", has_text="second, too soon")
        expect(unsent).to_be_visible()
        expect(unsent.locator(".unsent-note")).to_contain_text("Not sent")
        expect(page.locator("#body")).to_have_value("")
        screenshot(page, "desktop-unsent")
        sent = page.locator("#message-list li.message:not(.unsent) .body", has_text="second")
        for _ in range(10):
            page.locator("#message-list li.unsent").first.get_by_role(
                "button", name="Retry"
            ).click()
            try:
                expect(sent).to_be_visible(timeout=2500)
                break
            except AssertionError:
                continue
        expect(sent).to_be_visible()
        expect(page.locator("#message-list li.unsent")).to_have_count(0)

        send(page, "third, discarded")
        send(page, "fourth, discarded")
        discarded = page.locator("#message-list li.unsent")
        expect(discarded.first).to_be_visible()
        while discarded.count():
            try:
                discarded.first.get_by_role("button", name="Discard").click(timeout=2000)
            except PlaywrightError:
                break
        expect(page.locator("#message-list li.unsent")).to_have_count(0)
    finally:
        strict.stop()


def test_groups_differing_only_in_case_are_one_group(chat_user):
    alice = chat_user("alice")
    bob = chat_user("bob")
    alice.page.locator("#join-name").fill("Design Team")
    alice.page.get_by_role("button", name="Join", exact=True).click()
    expect(alice.page.locator("#join-note")).to_have_text("Created # Design Team.")

    bob.page.locator("#join-name").fill("design team")
    bob.page.get_by_role("button", name="Join", exact=True).click()
    expect(bob.page.locator("#conv-title")).to_have_text("# Design Team")
    expect(bob.page.locator("#join-note")).to_have_text("Joined # Design Team.")
    send(bob.page, "one group")
    expect(
        alice.page.locator("#message-list li.message .body", has_text="one group")
    ).to_be_visible()
    expect(alice.page.locator("#conversation-list li[data-group]")).to_have_count(1)
    expect(bob.page.locator("#conversation-list li[data-group]")).to_have_text(
        re.compile("Design Team")
    )
    screenshot(bob.page, "desktop-group-case")


def test_the_picker_finds_offline_people_with_last_seen_and_browse_finds_groups(chat_user):
    alice = chat_user("alice")
    carol = chat_user("carol")
    carol.page.locator("#join-name").fill("Readers")
    carol.page.get_by_role("button", name="Join", exact=True).click()
    expect(carol.page.locator("#conv-title")).to_have_text("# Readers")
    carol.page.close()
    expect(person(alice.page, "carol")).to_have_count(0)

    alice.page.locator("#people-search").fill("CA")
    found = alice.page.locator("#people-results li[data-user='carol']")
    expect(found).to_contain_text(re.compile("last seen"))
    screenshot(alice.page, "desktop-people-picker")
    found.get_by_role("button").click()
    expect(alice.page.locator("#conv-title")).to_have_text("carol")

    alice.page.locator("#join-name").fill("rea")
    group = alice.page.locator("#group-results li[data-group='Readers']")
    # Alice is no member: how many of its members are online is not hers to know.
    expect(group.locator(".conv-preview")).to_have_text("1 member")
    group.get_by_role("button").click()
    expect(alice.page.locator("#conv-title")).to_have_text("# Readers")
    expect(alice.page.locator("#join-note")).to_have_text("Joined # Readers.")


def test_seen_by_counts_the_group_members_who_read(chat_user):
    alice, bob, carol = chat_user("alice"), chat_user("bob"), chat_user("carol")
    for user in (alice, bob, carol):
        user.page.locator("#join-name").fill("Crew")
        user.page.get_by_role("button", name="Join", exact=True).click()
        expect(user.page.locator("#conv-title")).to_have_text("# Crew")
    send(alice.page, "standup in 5")
    for reader in (bob, carol):
        expect(
            reader.page.locator("#message-list li.message .body", has_text="standup")
        ).to_be_visible()
    expect(alice.page.locator("#message-list li.seen")).to_have_text("Seen by 2")
    expect(alice.page.locator("#conversation-list li[data-group] .conv-time")).to_be_visible()
    screenshot(alice.page, "desktop-seen-by")


def test_an_error_banner_clears_after_reconnecting(chat_user):
    alice = chat_user("alice")
    page = alice.page
    page.locator("#join-name").fill("bad/name")
    page.get_by_role("button", name="Join", exact=True).click()
    expect(page.locator("#join-error")).to_be_visible()

    # The socket drops; the page reconnects, and the old banner goes with the new hello.
    page.evaluate("window.chatPage.client.socket.close()")

    expect(page.locator("#join-error")).to_be_hidden()
    expect(page.locator("#connection")).to_have_attribute("data-state", "online")


# Stands in for the browser's notification permission and tab visibility, which a
# headless Chromium cannot grant or change: records each notification shown and lets
# the test hide and show the tab.
FAKE_NOTIFICATIONS_AND_VISIBILITY = """
window.shownNotifications = [];
window.Notification = class {
  static permission = "granted";
  static requestPermission() { return Promise.resolve("granted"); }
  constructor(title, options) { window.shownNotifications.push({title, body: options.body}); }
  close() {}
};
let hidden = false;
Object.defineProperty(document, "hidden", {get: () => hidden});
window.setTabHidden = (value) => {
  hidden = value;
  document.dispatchEvent(new Event("visibilitychange"));
};
"""


def shown_notifications(page: Page) -> list[dict]:
    return page.evaluate("window.shownNotifications")


def test_a_direct_message_to_a_hidden_tab_notifies_once_opted_in_and_badges_the_title(chat_user):
    alice = chat_user("alice")
    bob = chat_user("bob")
    alice.context.add_init_script(FAKE_NOTIFICATIONS_AND_VISIBILITY)
    page = alice.open_page()
    open_direct(ChatUser("alice", alice.context, page), "bob")

    # Not opted in: a hidden tab gets the title badge but no notification.
    page.evaluate("window.setTabHidden(true)")
    send_over_socket(bob.page, {"user": "alice"}, "first, unannounced")
    expect(page).to_have_title("(1) Chat")
    assert shown_notifications(page) == []

    page.evaluate("window.setTabHidden(false)")
    expect(page).to_have_title("Chat")
    page.locator("#notify-toggle").click()
    expect(page.locator("#notify-toggle")).to_have_attribute("aria-pressed", "true")

    page.evaluate("window.setTabHidden(true)")
    send_over_socket(bob.page, {"user": "alice"}, "second, announced")
    expect(page).to_have_title("(1) Chat")
    wait_until_true(page, "window.shownNotifications.length === 1")
    assert shown_notifications(page) == [{"title": "bob", "body": "second, announced"}]

    # Back on the tab with the conversation open: read, badge gone, nothing more shown.
    page.evaluate("window.setTabHidden(false)")
    expect(page).to_have_title("Chat")
    expect(person(bob.page, "alice")).to_be_visible()
    assert len(shown_notifications(page)) == 1


def test_a_message_written_while_the_server_is_down_stays_and_is_sent_by_retry(chat_user):
    env = browser_worker_env()
    server = Worker(env, name="restarting").start()
    restarted = None
    try:
        alice = chat_user("alice", server=server)
        page = alice.page
        send(page, "before the outage")
        # Its ack in first: a send cut off before the ack is kept as unsent, rightly so.
        wait_until_true(page, "window.chatPage.client.pending.size === 0")
        server.stop()
        expect(page.locator("#connection")).not_to_have_attribute("data-state", "online")

        page.locator("#body").fill("written during the outage")
        page.locator("#body").press("Enter")
        unsent = page.locator("#message-list li.unsent", has_text="written during the outage")
        expect(unsent.locator(".unsent-note")).to_contain_text("Not sent")
        screenshot(page, "desktop-unsent-offline")

        restarted = Worker(env, name="restarted", port=server.port).start()
        expect(page.locator("#connection")).to_have_attribute(
            "data-state", "online", timeout=3 * TIMEOUT * 1000
        )
        expect(unsent).to_be_visible()  # a reconnect does not drop it
        unsent.get_by_role("button", name="Retry").click()
        expect(
            page.locator(
                "#message-list li.message:not(.unsent) .body", has_text="during the outage"
            )
        ).to_be_visible()
        expect(page.locator("#message-list li.unsent")).to_have_count(0)
    finally:
        server.stop()
        if restarted:
            restarted.stop()


def test_the_jump_to_new_messages_shows_only_while_they_are_out_of_sight(chat_user):
    alice = chat_user("alice")
    bob = chat_user("bob")
    alice.page.close()
    expect(person(bob.page, "alice")).to_have_count(0, timeout=TIMEOUT * 1000)
    for n in range(3):  # tall messages, few enough for the send budget
        send_over_socket(bob.page, {"user": "alice"}, "\n".join(f"part {n}.{i}" for i in range(30)))
    page = alice.open_page()
    expect(person(page, "bob").locator(".badge")).to_have_text("3")
    open_direct(ChatUser("alice", alice.context, page), "bob")
    jump = page.locator("#jump-unread")
    # It opens at the first unread message, under the divider (issue 25).
    expect(page.locator("#new-divider")).to_be_in_viewport()
    expect(page.locator("#message-list li.message").last).not_to_be_in_viewport()
    expect(jump).to_be_hidden()
    page.locator("#messages").evaluate("box => { box.scrollTop = box.scrollHeight; }")
    expect(jump).to_be_visible()
    jump.click()
    expect(page.locator("#new-divider")).to_be_in_viewport()
    expect(jump).to_be_hidden()


def test_typing_clears_on_its_own_once_the_typist_stops(chat_user):
    alice = chat_user("alice")
    bob = chat_user("bob")
    open_direct(alice, "bob")
    open_direct(bob, "alice")
    bob.page.locator("#body").fill("half a thought")
    expect(alice.page.locator("#typing")).to_have_text("bob is typing…")
    # Nothing more typed: the notice drops after 6 s without a message arriving.
    expect(alice.page.locator("#typing")).to_have_text("", timeout=(6 + TIMEOUT) * 1000)
    expect(bob.page.locator("#body")).to_have_value("half a thought")


def sidebar_keys(page: Page) -> list[str]:
    return page.locator("#conversation-list > li").evaluate_all(
        "items => items.map((item) => item.dataset.key)"
    )


def expect_sidebar(page: Page, keys: list[str]) -> None:
    """Wait until the sidebar lists exactly `keys`, in that order."""
    wait_for(
        page,
        lambda: sidebar_keys(page) == keys,
        lambda: f"the sidebar shows {sidebar_keys(page)}, not {keys}",
    )


def test_the_sidebar_is_one_list_with_the_newest_activity_first(chat_user):
    alice, bob, carol = chat_user("alice"), chat_user("bob"), chat_user("carol")
    alice.page.locator("#join-name").fill("Crew")
    alice.page.get_by_role("button", name="Join", exact=True).click()
    expect(alice.page.locator("#conv-title")).to_have_text("# Crew")
    send(alice.page, "crew first")
    first = alice.page.locator("#message-list li.message .body", has_text="crew first")
    expect(first).to_be_visible()
    send_over_socket(bob.page, {"user": "alice"}, "then bob")

    # Conversations with messages by their newest one, then the rest:
    # everyone, groups, people.
    expect_sidebar(alice.page, ["user:bob", "group:crew", "all", "user:carol"])
    send_over_socket(carol.page, {"all": True}, "carol to all")
    expect_sidebar(alice.page, ["all", "user:bob", "group:crew", "user:carol"])
    send(alice.page, "crew again")
    expect_sidebar(alice.page, ["group:crew", "all", "user:bob", "user:carol"])
    screenshot(alice.page, "desktop-sidebar-by-activity")
    # A reload builds the same list from the server's `conversations`.
    alice.page.reload()
    expect_sidebar(alice.page, ["group:crew", "all", "user:bob", "user:carol"])


def test_a_send_the_store_cannot_take_stays_with_a_working_retry(chat_user):
    # A short time limit: the stalled store answers `unavailable` within a second.
    server = Worker(browser_worker_env(CHAT_DATABASE_TIMEOUT="1"), name="stalling").start()
    try:
        alice = chat_user("alice", server=server)
        page = alice.page
        with message_table_locked():
            send(page, "while the store stalls")
            unsent = page.locator("#message-list li.unsent", has_text="while the store stalls")
            expect(unsent.locator(".unsent-note")).to_contain_text(
                "Not sent: The server could not store that right now."
            )
        expect(page.locator("#empty-conversation")).to_be_hidden()
        screenshot(page, "desktop-unsent-unavailable")
        unsent.get_by_role("button", name="Retry").click()
        sent = page.locator(
            "#message-list li.message:not(.unsent) .body", has_text="while the store stalls"
        )
        expect(sent).to_have_count(1)
        expect(page.locator("#message-list li.unsent")).to_have_count(0)
    finally:
        server.stop()
    assert Message.objects.filter(body="while the store stalls").count() == 1


def test_a_message_whose_ack_was_lost_with_the_connection_is_shown_once(chat_user):
    """Stored, but the connection died before its ack came: not "not sent".

    Playwright stands between the page and the server, and at the ack drops
    that socket and everything after it. The page reconnects; `sync` brings
    the message with its `cid`, which settles the entry the page kept as
    unsent (the old page kept it, and its Retry stored the message again).
    """
    alice = chat_user("alice")
    page = alice.page
    seen = {"greetings": 0, "lost": 0, "armed": False}

    def lose_the_next_ack(route: WebSocketRoute) -> None:
        server = route.connect_to_server()
        dead = False

        def to_page(message: str | bytes) -> None:
            nonlocal dead
            if dead:
                return
            if isinstance(message, str) and message.startswith('{"type":"hello"'):
                seen["greetings"] += 1
            if seen["armed"] and isinstance(message, str) and '"type":"ack"' in message:
                seen.update(armed=False, lost=seen["lost"] + 1)
                dead = True
                server.close()
                route.close(code=4000, reason="the connection died")
                return
            route.send(message)

        server.on_message(to_page)

    page.route_web_socket(re.compile(r"/ws/chat/"), lose_the_next_ack)
    page.evaluate("window.chatPage.client.socket.close()")  # the next socket goes through it
    wait_for(page, lambda: seen["greetings"] == 1, lambda: "no socket through the route")
    expect(page.locator("#connection")).to_have_attribute("data-state", "online")
    seen["armed"] = True
    send(page, "did it get through?")

    wait_for(page, lambda: seen["greetings"] == 2, lambda: "the page did not reconnect")
    expect(page.locator("#connection")).to_have_attribute("data-state", "online")
    sent = page.locator("#message-list li.message:not(.unsent) .body", has_text="did it get")
    expect(sent).to_have_count(1)
    expect(page.locator("#message-list li.unsent")).to_have_count(0)
    assert seen["lost"] == 1
    assert Message.objects.filter(body="did it get through?").count() == 1


def test_typing_is_repeated_every_3_seconds_while_someone_keeps_typing(chat_user):
    alice = chat_user("alice")
    bob = chat_user("bob")
    open_direct(alice, "bob")
    open_direct(bob, "alice")
    # The 3 s rule is the typist's: timed where the frames leave, not where
    # they arrive (delivery jitter would blur it). Alice counts what arrives.
    bob.page.evaluate(
        """() => {
          const client = window.chatPage.client;
          const send = client.send.bind(client);
          window.typingSent = [];
          client.send = (command) => {
            if (command.type === "typing") window.typingSent.push(Date.now());
            send(command);
          };
        }"""
    )
    alice.page.evaluate(
        "window.typingSeen = 0; window.chatPage.client.on('typing', () => window.typingSeen++)"
    )

    # About 7.5 s of typing, a key every 300 ms: past the receiver's 6 s.
    bob.page.locator("#body").press_sequentially("x" * 25, delay=300)

    expect(alice.page.locator("#typing")).to_have_text("bob is typing…")
    sent = bob.page.evaluate("window.typingSent")
    gaps = [later - earlier for earlier, later in itertools.pairwise(sent)]
    assert len(sent) >= 3, sent  # at 0, 3 and 6 s at least
    assert all(gap >= 3000 for gap in gaps), gaps
    wait_for(
        alice.page,
        lambda: alice.page.evaluate("window.typingSeen") == len(sent),
        lambda: f"alice got {alice.page.evaluate('window.typingSeen')} of {len(sent)} typing",
    )


def test_a_history_page_that_failed_to_load_is_tried_again_on_its_own(chat_user):
    bob = chat_user("bob")
    bob.page.close()
    sender = User.objects.get(username="bob")
    alice_user = chat_user("alice")
    alice_user.page.close()
    # The page's socket takes one token of the five.
    strict = Worker(
        browser_worker_env(CHAT_RATE_BURST="5", CHAT_RATE_PER_SECOND="1"), name="strict"
    ).start()
    try:
        Message.objects.create(
            sender=sender,
            recipient=User.objects.get(username="alice"),
            kind=Message.Kind.DIRECT,
            body="from before",
            created_at=timezone.now(),
        )
        page = alice_user.open_page(strict.base_url)
        expect(person(page, "bob")).to_be_visible()
        # Spend the budget, so that opening the conversation is refused.
        page.evaluate(
            """async () => {
              for (let i = 0; i < 20; i++) {
                try { await window.chatPage.client.request({type: "ping"}); }
                catch (e) { if (e.code === "rate_limited") return; throw e; }
              }
            }"""
        )
        open_direct(ChatUser("alice", alice_user.context, page), "bob")

        status = page.locator("#history-status")
        expect(status).to_contain_text("Trying again in")
        expect(status).to_have_class(re.compile(r"\berror\b"))
        screenshot(page, "desktop-history-retrying")
        loaded = page.locator("#message-list li.message .body", has_text="from before")
        expect(loaded).to_be_visible(timeout=3 * TIMEOUT * 1000)
        expect(status).not_to_have_class(re.compile(r"\berror\b"))
    finally:
        strict.stop()
