"""The admin as an operator's browser renders it (Chromium against a real daphne)."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from playwright.sync_api import Browser

from chat.messaging import message_send
from chat.protocol import Address
from tests.servers import Worker

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_message_list_keeps_bodies_on_wide_lines_at_1280_px(browser: Browser, chat_server: Worker):
    get_user_model().objects.create_superuser("root", "root@example.com", "pw-root-admin-1")
    sender = get_user_model().objects.create_user("a-rather-long-user-name", password="pw-x-1")
    body = "the body of a message that an operator wants to read on one or two lines " * 2
    for _ in range(3):
        message_send(sender=sender, to=Address("all"), body=body)
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        page = context.new_page()
        page.goto(chat_server.base_url + "/admin/login/?next=/admin/chat/message/")
        page.fill("#id_username", "root")
        page.fill("#id_password", "pw-root-admin-1")
        page.click("input[type=submit]")
        page.wait_for_url("**/admin/chat/message/")
        cell = page.locator("td.field-short_body").first
        box = cell.bounding_box()
        assert box is not None
        line_height = float(cell.evaluate("c => parseFloat(getComputedStyle(c).lineHeight) || 16"))
        # Before the fix: 74 px wide and eleven lines tall for an 80-character body.
        assert box["width"] >= 250, box
        assert box["height"] <= 3 * line_height + 16, (box, line_height)
    finally:
        context.close()
