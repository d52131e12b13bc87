"""The page's private groups and roles (issue 27): create one private, invite,
change a role, remove; the removed member's page follows at once."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.browser import screenshot

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_a_private_group_invite_role_and_remove(chat_user):
    alice, bob, carol = chat_user("alice"), chat_user("bob"), chat_user("carol")
    page = alice.page
    page.locator("#join-name").fill("Studio")
    page.locator("#join-private").check()
    page.get_by_role("button", name="Create", exact=True).click()
    expect(page.locator("#conv-title")).to_have_text("# Studio")
    expect(page.locator("#conv-lock")).to_be_visible()
    studio = "#conversation-list li[data-group='Studio']"
    expect(page.locator(f"{studio} .conv-icon.private")).to_have_count(1)

    for name in ("bob", "carol"):
        page.locator("#invite-name").fill(name)
        page.get_by_role("button", name="Invite", exact=True).click()
        expect(page.locator(f"#member-list li[data-user='{name}']")).to_be_visible()
    # The invited see the group arrive, locked, and who added them.
    expect(bob.page.locator("#join-note")).to_have_text("alice added you to # Studio.")
    expect(bob.page.locator(f"{studio} .conv-icon.private")).to_have_count(1)

    page.get_by_label("Role of bob").select_option("admin")
    expect(page.locator("#message-list li.notice").last).to_contain_text("You made bob an admin")
    bob.page.locator(f"{studio} button").click()
    expect(bob.page.locator("#member-list li[data-user='alice'] .role-badge")).to_have_text("owner")
    expect(bob.page.locator("#member-list li[data-user='bob'] .role-badge")).to_have_text("admin")
    # An admin may remove a member, not the owner.
    expect(bob.page.get_by_role("button", name="Remove carol from the group")).to_be_visible()
    expect(bob.page.get_by_role("button", name="Remove alice from the group")).to_have_count(0)
    expect(page.get_by_label("Role of carol")).to_have_value("member")
    screenshot(page, "desktop-group-roles")

    carol.page.locator(f"{studio} button").click()
    expect(carol.page.locator("#conv-title")).to_have_text("# Studio")
    bob.page.get_by_role("button", name="Remove carol from the group").click()
    # Carol's page: the group leaves her sidebar, and she is told who removed her.
    expect(carol.page.locator(f"{studio}")).to_have_count(0)
    expect(carol.page.locator("#conv-title")).to_have_text("Everyone")
    expect(carol.page.locator("#join-note")).to_have_text("bob removed you from # Studio.")
    expect(page.locator("#member-list li[data-user='carol']")).to_have_count(0)
    expect(page.locator("#message-list li.notice").last).to_contain_text("bob removed carol")
