"""Files on the page (issue 28), in a real Chromium against a real daphne: attach
(button, paste, drop), progress with cancel, send, thumbnails and the viewer, another
user's download, and refusals said in words with Retry. Screenshots at desktop
and phone width go to artifacts/screenshots/.
"""

from __future__ import annotations

import base64
import contextlib
import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Page, Route, expect

from tests.browser import PHONE, browser_worker_env, open_direct, screenshot
from tests.servers import Worker

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

MAX_BYTES = 1_000_000
QUOTA_BYTES = 1_500_000
PDF = b"%PDF-1.4\n% the plan for the trip\n" + b"0" * 3000


@pytest.fixture
def chat_server(transactional_db, tmp_path) -> Iterator[Worker]:
    """The page's server with its files in a folder of the test's, and small limits."""
    env = browser_worker_env(
        MEDIA_ROOT=str(tmp_path / "media"),
        CHAT_UPLOAD_MAX_BYTES=str(MAX_BYTES),
        CHAT_UPLOAD_QUOTA_BYTES=str(QUOTA_BYTES),
    )
    worker = Worker(env, name="page-server").start()
    try:
        yield worker
    finally:
        worker.stop()
        print(f"----- log of {worker.name} (port {worker.port}) -----\n{worker.log()}")


def photo_png() -> bytes:
    image = Image.new("RGB", (900, 600), (40, 120, 200))
    for x in range(0, 900, 60):
        image.paste((250, 200, 40), (x, 0, x + 30, 600))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def paste_image(page: Page, data: bytes, name: str) -> None:
    """Paste an image into the composer, as a screenshot tool's clipboard holds one."""
    page.locator("#body").focus()
    page.evaluate(
        """([bytes, name]) => {
            const data = new DataTransfer();
            const raw = Uint8Array.from(atob(bytes), (c) => c.charCodeAt(0));
            data.items.add(new File([raw], name, {type: "image/png"}));
            const paste = {clipboardData: data, bubbles: true, cancelable: true};
            document.getElementById("body").dispatchEvent(new ClipboardEvent("paste", paste));
        }""",
        [base64.b64encode(data).decode(), name],
    )


def drop_file(page: Page, data: bytes, name: str, mime: str) -> None:
    """Drop a file onto the conversation, as one dragged from the desktop."""
    page.evaluate(
        """([bytes, name, mime]) => {
            const data = new DataTransfer();
            const raw = Uint8Array.from(atob(bytes), (c) => c.charCodeAt(0));
            data.items.add(new File([raw], name, {type: mime}));
            const target = document.getElementById("messages");
            for (const type of ["dragover", "drop"]) {
                const init = {dataTransfer: data, bubbles: true, cancelable: true};
                target.dispatchEvent(new DragEvent(type, init));
            }
        }""",
        [base64.b64encode(data).decode(), name, mime],
    )


def attach(page: Page, name: str, data: bytes, mime: str) -> None:
    page.locator("#file-input").set_input_files(
        files=[{"name": name, "mimeType": mime, "buffer": data}]
    )


def attachment(page: Page, name: str):
    return page.locator("#attachments li.attachment", has_text=name)


def test_files_go_up_with_progress_and_come_down_to_the_other_user(chat_user):
    alice = chat_user("alice")
    bob = chat_user("bob")
    open_direct(alice, "bob")
    open_direct(bob, "alice")
    page = alice.page

    # Uploads held at the network: the progress bar and Cancel show while one is on its way.
    held: list[Route] = []
    page.route("**/uploads/", lambda route: held.append(route))
    attach(page, "plan.pdf", PDF, "application/pdf")
    paste_image(page, photo_png(), "screenshot.png")
    attach(page, "cancelled.txt", b"never mind", "text/plain")
    for name in ("plan.pdf", "screenshot.png", "cancelled.txt"):
        expect(attachment(page, name).locator("progress")).to_be_visible()
    screenshot(page, "files-uploading-desktop")
    attachment(page, "cancelled.txt").get_by_role(
        "button", name="Cancel uploading cancelled.txt"
    ).click()
    expect(attachment(page, "cancelled.txt")).to_have_count(0)
    page.unroute("**/uploads/")
    for route in held:
        # The cancelled one was aborted by the page: nothing to continue.
        with contextlib.suppress(PlaywrightError):
            route.continue_()
    for name in ("plan.pdf", "screenshot.png"):
        expect(attachment(page, name)).to_have_class("attachment done")
    page.locator("#body").fill("the plan and a map")
    page.locator("#body").press("Enter")
    expect(page.locator("#attachments")).to_be_hidden()

    # Bob: the image as a thumbnail, the PDF as a chip he can download.
    message = bob.page.locator("#message-list li.message", has_text="the plan and a map")
    thumb = message.locator(".file-thumb img")
    expect(thumb).to_be_visible()
    # Not wait_for_function: polling, it evaluates with `eval`, which the CSP forbids.
    expect(thumb).to_have_js_property("complete", True)
    expect(thumb).to_have_js_property("naturalWidth", 480)
    chip = message.locator(".file-chip", has_text="plan.pdf")
    expect(chip).to_contain_text("KB")
    with bob.page.expect_download() as download:
        chip.get_by_role("link", name="Download plan.pdf").click()
    assert download.value.suggested_filename == "plan.pdf"
    assert Path(download.value.path()).read_bytes() == PDF
    expect(bob.page.locator("#conversation-list li.active .conv-preview")).to_contain_text(
        "the plan and a map"
    )
    screenshot(bob.page, "files-message-desktop")

    # The viewer: the whole image, closed with Escape.
    message.locator(".file-thumb").click()
    viewer = bob.page.locator("#viewer")
    expect(viewer).to_be_visible()
    expect(bob.page.locator("#viewer-image")).to_have_js_property("complete", True)
    expect(bob.page.locator("#viewer-image")).to_have_js_property("naturalWidth", 900)
    screenshot(bob.page, "files-viewer-desktop")
    bob.page.keyboard.press("Escape")
    expect(viewer).to_be_hidden()

    # A photo alone: the sidebar says "Photo".
    paste_image(page, photo_png(), "alone.png")
    expect(attachment(page, "alone.png")).to_have_class("attachment done")
    page.locator("#body").press("Enter")
    expect(bob.page.locator("#conversation-list li.active .conv-preview")).to_contain_text("Photo")


def test_a_refused_upload_says_which_limit_and_stays_with_retry(chat_user):
    alice = chat_user("alice", viewport=PHONE)
    chat_user("bob")
    page = alice.page
    page.locator("#people-search").wait_for()
    open_direct(alice, "bob")

    # Over the size limit: refused before it goes up.
    attach(page, "video.mp4", b"\x00" * (MAX_BYTES + 1), "video/mp4")
    big = attachment(page, "video.mp4")
    expect(big).to_have_class("attachment failed")
    expect(big.locator(".attachment-error")).to_contain_text("larger than the 977 KB limit")
    # Past the quota: the server refuses it, and the page says so.
    drop_file(page, b"\x01" * 900_000, "first.bin", "application/octet-stream")
    expect(attachment(page, "first.bin")).to_have_class("attachment done")
    attach(page, "second.bin", b"\x02" * 900_000, "application/octet-stream")
    second = attachment(page, "second.bin")
    expect(second).to_have_class("attachment failed")
    expect(second.locator(".attachment-error")).to_contain_text("1.4 MB of storage")
    expect(second.get_by_role("button", name="Retry")).to_be_visible()
    page.locator("#body").press("Enter")
    expect(page.locator("#send-error")).to_contain_text("Retry it or remove it")
    screenshot(page, "files-refused-phone")
    # Retry asks again (the quota still holds, and it is said again).
    second.get_by_role("button", name="Retry").click()
    expect(second.locator(".attachment-error")).to_contain_text("1.4 MB of storage")

    # Without the refused ones, the rest is sent: a photo and a file, on a phone.
    big.get_by_role("button", name="Remove video.mp4").click()
    second.get_by_role("button", name="Remove second.bin").click()
    paste_image(page, photo_png(), "phone.png")
    expect(attachment(page, "phone.png")).to_have_class("attachment done")
    page.locator("#body").press("Enter")
    sent = page.locator("#message-list li.message.own").last
    expect(sent.locator(".file-thumb img")).to_be_visible()
    expect(sent.locator(".file-chip", has_text="first.bin")).to_be_visible()
    screenshot(page, "files-message-phone")
