"""The chat page in a real Chromium against a real daphne: what people see and do."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import re
import threading
import urllib.request
from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, expect

from tests.browser import (
    DESKTOP,
    PHONE,
    TIMEOUT,
    ChatUser,
    browser_worker_env,
    open_direct,
    screenshot,
    send,
    wait_connected,
    wait_for,
    wait_until_true,
)
from tests.chatclient import open_real_socket
from tests.servers import Worker

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def messages(page: Page):
    return page.locator("#message-list li.message")


def message_with(page: Page, body: str):
    return page.locator("#message-list li.message .body", has_text=body)


def test_two_people_exchange_direct_messages(chat_user):
    alice = chat_user("alice")
    bob = chat_user("bob")
    open_direct(alice, "bob")
    send(alice.page, "hi bob,\nhow are you?")
    # Bob sees an unread count on the conversation with alice, then reads it.
    alice_in_bobs_list = bob.page.locator("#conversation-list li[data-user='alice']")
    expect(alice_in_bobs_list.locator(".badge")).to_have_text("1")
    open_direct(bob, "alice")
    received = bob.page.locator("#message-list li.message").last
    expect(received.locator(".body")).to_have_text("hi bob,\nhow are you?")
    expect(received.locator(".from")).to_have_text("alice")
    expect(received).not_to_have_class(re.compile(r"\bown\b"))
    expect(alice_in_bobs_list.locator(".badge")).to_have_count(0)
    send(bob.page, "fine, thanks")
    reply = alice.page.locator("#message-list li.message").last
    expect(reply.locator(".body")).to_have_text("fine, thanks")
    # Alice's own message is set apart from bob's.
    expect(alice.page.locator("#message-list li.message.own .body")).to_have_text(
        "hi bob,\nhow are you?"
    )
    expect(alice.page.locator("#body")).to_have_value("")
    screenshot(alice.page, "desktop-chat-direct")


def join_group(user: ChatUser, name: str) -> None:
    user.page.locator("#join-name").fill(name)
    user.page.get_by_role("button", name="Join", exact=True).click()
    expect(user.page.locator("#conv-title")).to_have_text(f"# {name}")


def test_group_join_send_members_and_leave(chat_user):
    alice = chat_user("alice")
    bob = chat_user("bob")
    join_group(alice, "Book club")
    expect(alice.page.locator("#member-list li[data-user='alice']")).to_have_class("online")
    join_group(bob, "Book club")
    # Alice's member list follows bob joining, with his online dot.
    bob_in_alices_members = alice.page.locator("#member-list li[data-user='bob']")
    expect(bob_in_alices_members).to_have_class("online")
    expect(bob_in_alices_members.locator(".presence.on")).to_have_count(1)
    send(alice.page, "Chapter 3 tonight?")
    expect(message_with(bob.page, "Chapter 3 tonight?")).to_be_visible()
    send(bob.page, "Yes!")
    expect(message_with(alice.page, "Yes!")).to_be_visible()
    screenshot(alice.page, "desktop-group-members")

    # Leaving asks first; Cancel keeps the membership.
    bob.page.get_by_role("button", name="Leave group").click()
    expect(bob.page.locator("#leave-question")).to_have_text("Leave # Book club?")
    bob.page.get_by_role("button", name="Cancel").click()
    expect(bob.page.locator("#leave-confirm")).to_be_hidden()
    expect(bob.page.locator("#conv-title")).to_have_text("# Book club")
    bob.page.get_by_role("button", name="Leave group").click()
    bob.page.get_by_role("button", name="Leave", exact=True).click()
    expect(bob.page.locator("#conv-title")).to_have_text("Everyone")
    expect(bob.page.locator("#conversation-list li[data-group]")).to_have_count(0)
    expect(bob.page.locator("#join-note")).to_be_hidden()  # no "Joined # Book club." left over
    expect(bob_in_alices_members).to_have_count(0)
    # Joins and leaves are a quiet line in the conversation, after the messages before them.
    notices = alice.page.locator("#message-list li.notice")
    expect(notices).to_have_count(2)
    expect(notices.nth(0)).to_contain_text("bob joined")
    expect(notices.nth(1)).to_contain_text("bob left")
    expect(alice.page.locator("#message-list > li").last).to_contain_text("bob left")
    # Alice's messages no longer reach bob.
    send(alice.page, "after bob left")
    expect(message_with(alice.page, "after bob left")).to_be_visible()
    expect(bob.page.locator("#conversation-list li[data-group]")).to_have_count(0)
    expect(bob.page.locator("#conversation-list li[data-key='all'] .badge")).to_have_count(0)


def test_broadcast_reaches_everyone_online(chat_user):
    alice = chat_user("alice")
    bob = chat_user("bob")
    carol = chat_user("carol")
    open_direct(carol, "alice")  # carol is elsewhere: the broadcast counts as unread
    expect(alice.page.locator("#conv-title")).to_have_text("Everyone")
    send(alice.page, "Lunch is served")
    expect(message_with(bob.page, "Lunch is served")).to_be_visible()
    expect(carol.page.locator("#conversation-list li[data-key='all'] .badge")).to_have_text("1")
    carol.page.locator("#conversation-list li[data-key='all'] button").click()
    expect(message_with(carol.page, "Lunch is served")).to_be_visible()
    expect(carol.page.locator("#conversation-list li[data-key='all'] .badge")).to_have_count(0)


def test_presence_follows_pages_opening_and_closing(chat_user):
    alice = chat_user("alice")
    bob_in_list = alice.page.locator("#conversation-list li[data-user='bob']")
    expect(bob_in_list).to_have_count(0)
    bob = chat_user("bob")
    expect(bob_in_list).to_have_class(re.compile(r"\bonline\b"))
    expect(alice.page.locator("#online-count")).to_have_text("1 online")
    bob.page.close()
    expect(bob_in_list).to_have_count(0)
    expect(alice.page.locator("#people-empty")).to_be_visible()


def test_user_content_is_shown_as_text(chat_user):
    alice = chat_user("alice")
    bob = chat_user("bob")
    dialogs: list[str] = []
    bob.page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    attack = "<img src=x onerror=alert(1)>"
    send(alice.page, attack)
    expect(message_with(bob.page, attack)).to_have_text(attack)
    join_group(alice, "Safety")
    send(alice.page, "<script>alert(2)</script> & <b>bold</b>")
    join_group(bob, "Safety")  # the group's history, rendered on opening
    expect(message_with(bob.page, "<script>")).to_have_text(
        "<script>alert(2)</script> & <b>bold</b>"
    )
    expect(
        bob.page.locator("#message-list img, #message-list b, #message-list script")
    ).to_have_count(0)
    assert dialogs == []


def test_server_errors_are_shown_in_place(chat_user):
    alice = chat_user("alice")
    dialogs: list[str] = []
    alice.page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    too_long = "x" * 4001
    alice.page.locator("#body").fill(too_long)
    expect(alice.page.locator("#char-count")).to_have_text(re.compile("over the limit"))
    alice.page.locator("#body").press("Enter")
    error = alice.page.locator("#send-error")
    expect(error).to_be_visible()
    expect(error).to_have_text(re.compile("too long"))
    expect(alice.page.locator("#body")).to_have_value(too_long)  # nothing typed is lost
    screenshot(alice.page, "desktop-error")
    alice.page.locator("#join-name").fill("bad/name")
    alice.page.get_by_role("button", name="Join", exact=True).click()
    expect(alice.page.locator("#join-error")).to_have_text(re.compile("Group names are"))
    alice.page.locator("#join-name").fill("Team")
    alice.page.get_by_role("button", name="Join", exact=True).click()
    expect(alice.page.locator("#conv-title")).to_have_text("# Team")
    alice.page.locator("#join-name").fill("T\u0435am")  # with a Cyrillic ie
    alice.page.get_by_role("button", name="Join", exact=True).click()
    expect(alice.page.locator("#join-error")).to_have_text(
        re.compile("looks like the existing group 'Team'")
    )
    assert dialogs == []


def test_rate_limit_is_explained_and_the_message_kept_in_place(chat_user):
    # One token opens the page's socket, one sends "first".
    strict = Worker(
        browser_worker_env(CHAT_RATE_BURST="2", CHAT_RATE_PER_SECOND="0.01"), name="strict"
    ).start()
    try:
        alice = chat_user("alice", server=strict)
        send(alice.page, "first")
        expect(message_with(alice.page, "first")).to_be_visible()
        send(alice.page, "second, too soon")
        unsent = alice.page.locator("#message-list li.unsent", has_text="second, too soon")
        expect(unsent.locator(".unsent-note")).to_have_text(re.compile("Not sent: .*too fast"))
        expect(alice.page.locator("#message-list li.message:not(.unsent)")).to_have_count(1)
    finally:
        strict.stop()


def refused_commands(server: Worker) -> dict[str, float]:
    """`chat_rate_limited_commands_total` by command, from the server's /metrics."""
    request = urllib.request.Request(
        server.base_url + "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}
    )
    with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
        text = response.read().decode()
    return {
        command: float(count)
        for command, count in re.findall(
            r'^chat_rate_limited_commands_total\{command="([^"]+)"\} (\S+)$', text, re.MULTILINE
        )
    }


METRICS_TOKEN = "metrics-token-of-the-page-tests"


def test_a_page_refused_by_the_budget_is_back_within_seconds(chat_user):
    """Reloads in a row, or tabs restored together, spend the user's command
    budget: each page open spends its handshake and its opening reads. A page
    whose socket the budget refuses (4429 "rate_limited") must be back as
    soon as the budget allows, with its conversation list and history asked
    again, not after the 15-30 s that a socket cap's 4429 asks for."""
    from django.contrib.auth.models import User

    from chat.messaging import message_send
    from chat.protocol import Address

    env = browser_worker_env(
        CHAT_METRICS_TOKEN=METRICS_TOKEN,
        CHAT_RATE_BURST="12",
        CHAT_RATE_PER_SECOND="1",
        CHAT_MAX_ERRORS_PER_MINUTE="100000",  # the spender below is refused many times
    )
    server = Worker(env, name="budget").start()
    try:
        alice = chat_user("alice", server=server)
        bob = User.objects.create_user("bob", password="a-Long-passw0rd!")
        message_send(sender=bob, to=Address("user", "alice"), body="are you there?")
        alice.page.close()
        with spending_the_budget(server, alice.session_cookie(), "alice"):
            tab = alice.context.new_page()
            tab.goto(server.base_url + "/#user/bob")
            wait_for(
                tab,
                lambda: refused_commands(server).get("connect", 0) >= 1,
                lambda: f"no refused handshake: {refused_commands(server)}",
            )
        wait_connected(tab, timeout=8)  # 2 s and a backoff step
        # Its reads are refused at first too, and asked again.
        expect(tab.locator("#conversation-list li[data-user='bob']")).to_contain_text(
            "are you there?", timeout=20_000
        )
        expect(message_with(tab, "are you there?")).to_be_visible(timeout=20_000)
        refused = refused_commands(server)
        assert refused.get("conversations", 0) >= 1, f"the list was never refused: {refused}"
    finally:
        server.stop()


@contextlib.contextmanager
def spending_the_budget(server: Worker, cookie: str, username: str) -> Iterator[None]:
    """A socket of the user's takes every token of the budget as it comes, until the
    block ends; the block begins once the budget has refused it."""
    spent = threading.Event()
    stop = threading.Event()

    async def spend() -> None:
        client = await open_real_socket(server.base_url, cookie, username)
        try:
            while not stop.is_set():
                reply = await client.request(type="ping")
                if reply["type"] == "error":
                    assert reply["code"] == "rate_limited", reply
                    spent.set()
                    await asyncio.sleep(0.01)
        finally:
            await client.close()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        spending = pool.submit(asyncio.run, spend())
        try:
            wait_for(None, lambda: spent.is_set() or spending.done(), lambda: "no refused ping")
            if spending.done():
                spending.result()
            yield
        finally:
            stop.set()
        spending.result(timeout=TIMEOUT)


def seed_broadcasts(username: str, count: int) -> None:
    """Store `count` broadcasts from `username` straight through the domain layer."""
    from django.contrib.auth import get_user_model

    from chat.messaging import message_send
    from chat.protocol import Address

    sender = get_user_model().objects.get(username=username)
    for number in range(1, count + 1):
        message_send(sender=sender, to=Address("all"), body=f"old message {number}")


def test_history_loads_on_open_and_older_pages_on_scrolling_up(chat_user):
    bob = chat_user("bob")
    alice = chat_user("alice")
    # Her own: never unread, so the page opens at the newest (unread ones land at the first).
    seed_broadcasts("alice", 120)
    page = alice.page
    page.reload()
    wait_connected(page)
    expect(messages(page)).to_have_count(50)
    expect(messages(page).last.locator(".body")).to_have_text("old message 120")
    page.locator("#messages").evaluate("(box) => { box.scrollTop = 0; }")
    expect(messages(page)).to_have_count(100)
    page.locator("#messages").evaluate("(box) => { box.scrollTop = 0; }")
    expect(messages(page)).to_have_count(120)
    expect(page.locator("#history-status")).to_have_text(re.compile("beginning"))
    expect(page.locator("#message-list li.message .body").first).to_have_text("old message 1")
    # A live message still lands at the bottom, once.
    send(bob.page, "new one")
    expect(messages(page)).to_have_count(121)
    expect(messages(page).last.locator(".body")).to_have_text("new one")


def _send_over_protocol(base_url: str, cookie: str, username: str, to: str, body: str) -> int:
    async def run() -> int:
        client = await open_real_socket(base_url, cookie, username)
        try:
            ack = await client.request(type="send", to={"user": to}, body=body)
            assert ack["type"] == "ack", ack
            return ack["id"]
        finally:
            await client.close()

    # Playwright's sync API owns this thread's event loop; the socket gets its own thread.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, run()).result(timeout=TIMEOUT * 2)


def test_page_reconnects_after_restart_and_shows_what_was_missed(chat_user, chat_server):
    alice = chat_user("alice")
    bob = chat_user("bob")
    open_direct(alice, "bob")
    open_direct(bob, "alice")
    send(alice.page, "before the restart")
    expect(message_with(bob.page, "before the restart")).to_be_visible()
    bob_cookie = bob.session_cookie()
    bob.context.close()

    chat_server.stop()
    expect(alice.page.locator("#connection")).to_have_attribute("data-state", "offline")
    screenshot(alice.page, "desktop-offline")
    restarted = Worker(chat_server.env, name="page-server-restarted", port=chat_server.port)
    try:
        restarted.start()
        _send_over_protocol(restarted.base_url, bob_cookie, "bob", "alice", "while you were away")
        wait_connected(alice.page)
        expect(message_with(alice.page, "while you were away")).to_have_count(1)
        expect(message_with(alice.page, "before the restart")).to_have_count(1)
        # The missed message may show live before the reconnect's sync answers.
        wait_until_true(alice.page, "window.chatPage.client.syncs >= 1")
        # Still a working conversation afterwards.
        send(alice.page, "back again")
        expect(message_with(alice.page, "back again")).to_have_count(1)
    finally:
        restarted.stop()
        print(f"----- log of {restarted.name} -----\n{restarted.log()}")


def test_logging_out_elsewhere_sends_the_page_to_login(chat_user):
    alice = chat_user("alice")
    other_tab = alice.open_page()
    other_tab.get_by_role("button", name="Log out").click()
    other_tab.wait_for_url(re.compile(r"/accounts/login/"))
    alice.page.wait_for_url(re.compile(r"/accounts/login/"), timeout=TIMEOUT * 1000)
    expect(alice.page.get_by_role("button", name="Log in")).to_be_visible()


def test_assets_come_from_the_server_itself(browser, chat_server):
    context = browser.new_context(viewport=DESKTOP)
    try:
        page = context.new_page()
        requested: list[str] = []
        page.on("request", lambda request: requested.append(request.url))
        page.goto(chat_server.base_url + "/accounts/login/")
        page.get_by_role("button", name="Continue as guest").click()
        wait_connected(page)
        origin = chat_server.base_url.replace("http://", "")
        foreign = [url for url in requested if origin not in url]
        assert foreign == [], foreign
        assert any(url.endswith("/static/chat/chat.css") for url in requested)
        # The stylesheet really applies (served by daphne, not only by runserver).
        background = page.locator(".topbar").evaluate("(bar) => getComputedStyle(bar).display")
        assert background == "flex"
    finally:
        context.close()
    with urllib.request.urlopen(chat_server.base_url + "/static/chat/chat-client.js") as response:
        assert response.status == 200
        assert b"class ChatClient" in response.read()


def test_phone_and_desktop_screens(browser, chat_user, chat_server):
    for label, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
        context = browser.new_context(viewport=viewport)
        try:
            page = context.new_page()
            page.goto(chat_server.base_url + "/accounts/login/")
            expect(page.get_by_role("button", name="Log in")).to_be_visible()
            screenshot(page, f"{label}-login")
            page.goto(chat_server.base_url + "/accounts/signup/")
            screenshot(page, f"{label}-signup")
        finally:
            context.close()

    friend = chat_user("dana")
    phone = chat_user("sam", viewport=PHONE)
    page = phone.page
    # On a phone the list comes first; a conversation opens full screen.
    expect(page.locator("#sidebar")).to_be_visible()
    expect(page.locator("#conversation")).to_be_hidden()
    send_from = friend.page
    send(send_from, "Anyone up for a walk on Saturday? " + "Loooooooong" * 20)
    expect(page.locator("#conversation-list li[data-key='all'] .badge")).to_have_text("1")
    screenshot(page, "phone-list")
    page.locator("#conversation-list li[data-key='all'] button").click()
    expect(page.locator("#sidebar")).to_be_hidden()
    send(page, "Count me in!\nI'll bring snacks.")
    expect(message_with(page, "Count me in!")).to_be_visible()
    # Long words wrap instead of widening the page.
    overflow = page.locator("#messages").evaluate("(box) => box.scrollWidth - box.clientWidth")
    assert overflow <= 0
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    screenshot(page, "phone-chat")
    screenshot(send_from, "desktop-chat")

    join_group(friend, "Hikers")
    page.get_by_role("button", name="Back to conversations").click()
    join_group(phone, "Hikers")
    page.get_by_role("button", name="Members").click()
    expect(page.locator("#member-list li[data-user='dana']")).to_have_class("online")
    screenshot(page, "phone-group-members")
    page.get_by_role("button", name="Members").click()
    page.locator("#body").fill("y" * 4001)
    page.locator("#body").press("Enter")
    expect(page.locator("#send-error")).to_be_visible()
    screenshot(page, "phone-error")


# A reconnect whose sync is cut off by another close, with a live message in
# between: the client's own frames and requests, driven in the page.
SYNC_CUT_OFF = """async () => {
  const client = window.chatPage.client;
  const request = client.request.bind(client);
  const sinces = [];
  let cut = null;
  client.request = (command) => {
    if (command.type !== "sync") return request(command);
    sinces.push(command.since);
    return new Promise((resolve, reject) => { cut = reject; });
  };
  const hello = JSON.stringify({type: "hello", user: "alice", online: [], groups: [], last_id: 0});
  // The message sent to self before this arrives just after its ack.
  for (let waited = 0; client.lastId === 0 && waited < 5000; waited += 10) {
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  const before = client.lastId;
  try {
    client.handleFrame(hello);        // reconnected: a sync from the highest id seen
    client.handleFrame(JSON.stringify({type: "message", id: before + 2, from: "bob",
      to: {user: "alice"}, body: "live, after the hello", ts: new Date().toISOString()}));
    const error = new Error("the connection closed");
    error.code = "disconnected";
    cut(error);                       // closed before the sync's reply
    await new Promise((resolve) => setTimeout(resolve, 0));
    client.handleFrame(hello);        // reconnected again
  } finally {
    client.request = request;
  }
  return {before, sinces};
}"""


def test_a_sync_cut_off_by_a_close_starts_again_where_it_was(chat_user):
    """A live message seen after a reconnect's hello but before its sync's reply does
    not prove the ones stored before it arrived: if that socket closes too, the next
    sync starts where the cut-off one did, or a message in between would be lost."""
    alice = chat_user("alice")
    send_over_socket_to_self = (
        "window.chatPage.client.request({type: 'send', to: {user: 'alice'}, body: 'seen'})"
    )
    alice.page.evaluate(send_over_socket_to_self)

    result = alice.page.evaluate(SYNC_CUT_OFF)

    assert result["before"] > 0
    assert result["sinces"] == [result["before"], result["before"]]
