"""Uploads over HTTP (issue 28): POST /uploads/, its refusals, and the downloads it names."""

from __future__ import annotations

import io
import json
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.test import Client
from django.utils import timezone
from PIL import Image

from chat import uploads
from chat.accounts import guest_create, guests_remove_inactive
from chat.message_changes import message_tombstone
from chat.models import ChatGroup, Membership, Message, Upload

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _media(settings, tmp_path):
    settings.MEDIA_ROOT = str(tmp_path / "media")


def png_bytes(size=(64, 32), color=(200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, "PNG")
    return out.getvalue()


def session_for(user) -> tuple[Client, str]:
    """A logged-in browser with Django's CSRF checks on, and its token."""
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    client.get("/accounts/login/")
    return client, client.cookies["csrftoken"].value


def post_file(client: Client, token: str | None, name: str, data: bytes, claimed="text/plain"):
    headers = {"X-CSRFToken": token} if token else {}
    return client.post(
        "/uploads/", {"file": SimpleUploadedFile(name, data, content_type=claimed)}, headers=headers
    )


def uploaded(user, name: str, data: bytes) -> dict:
    client, token = session_for(user)
    response = post_file(client, token, name, data)
    assert response.status_code == 201, response.content
    return response.json()


# -- POST /uploads/ ------------------------------------------------------------


def test_an_image_is_stored_with_its_type_from_its_bytes_and_a_thumbnail(alice):
    body = uploaded(alice, "../../etc/sneaky\x07name.png", png_bytes((1000, 500)))
    assert set(body) == {"upload", "name", "size", "type", "width", "height", "url", "thumb"}
    assert body["name"] == "sneakyname.png"
    assert body["type"] == "image/png"  # the browser claimed text/plain
    assert (body["width"], body["height"]) == (1000, 500)
    assert body["url"] == f"/uploads/{body['upload']}"
    upload = Upload.objects.get(pk=body["upload"])
    assert upload.uploader == alice and upload.message is None and upload.size == body["size"]
    client, _ = session_for(alice)
    thumb = Image.open(io.BytesIO(b"".join(client.get(body["thumb"]).streaming_content)))
    assert max(thumb.size) == 480 and thumb.size == (480, 240)


def test_a_file_that_is_not_an_image_has_no_size_nor_thumbnail(alice):
    body = uploaded(alice, "notes.pdf", b"%PDF-1.7\n" + b"x" * 100)
    assert body["type"] == "application/pdf"
    assert body["width"] is None and body["height"] is None and body["thumb"] is None


def test_without_a_session_or_the_csrf_token_the_upload_is_forbidden(alice):
    anonymous = Client(enforce_csrf_checks=True)
    anonymous.get("/accounts/login/")
    token = anonymous.cookies["csrftoken"].value
    assert post_file(anonymous, token, "a.txt", b"hello").status_code == 403
    client, token = session_for(alice)
    missing = post_file(client, None, "a.txt", b"hello")
    assert missing.status_code == 403 and missing.json()["error"] == "forbidden"
    wrong = post_file(client, "x" * 32, "a.txt", b"hello")
    assert wrong.status_code == 403 and wrong.json()["error"] == "forbidden"
    assert not Upload.objects.exists()


def test_a_file_over_the_limit_is_too_large(alice, settings):
    settings.CHAT_UPLOAD_MAX_BYTES = 1000
    client, token = session_for(alice)
    response = post_file(client, token, "big.bin", b"\x00" * 1001)
    assert response.status_code == 413
    assert response.json()["error"] == "too_large"
    assert post_file(client, token, "fits.bin", b"\x00" * 1000).status_code == 201


def test_a_body_announced_over_the_limit_is_refused_before_it_is_read(alice, settings):
    settings.CHAT_UPLOAD_MAX_BYTES = 1000
    client, token = session_for(alice)
    response = client.generic(
        "POST",
        "/uploads/",
        b"",
        content_type="multipart/form-data; boundary=x",
        headers={"X-CSRFToken": token, "Content-Length": str(10**9)},
    )
    assert response.status_code == 413 and response.json()["error"] == "too_large"


def test_the_quota_counts_every_file_the_user_stored(alice, bob, settings):
    settings.CHAT_UPLOAD_QUOTA_BYTES = 2500
    client, token = session_for(alice)
    assert post_file(client, token, "one.bin", b"\x01" * 1000).status_code == 201
    assert post_file(client, token, "two.bin", b"\x01" * 1000).status_code == 201
    response = post_file(client, token, "three.bin", b"\x01" * 1000)
    assert response.status_code == 413 and response.json()["error"] == "quota"
    # Another user's files are not counted against alice's.
    uploaded(bob, "bob.bin", b"\x01" * 2000)


def test_uploads_past_the_rate_are_refused(alice, settings):
    settings.CHAT_UPLOADS_PER_MINUTE = 3
    client, token = session_for(alice)
    for n in range(3):
        assert post_file(client, token, f"{n}.txt", b"hello").status_code == 201
    response = post_file(client, token, "4.txt", b"hello")
    assert response.status_code == 429 and response.json()["error"] == "rate_limited"


@pytest.mark.parametrize(
    "name,data",
    [
        ("empty.txt", b""),
        ("broken.png", b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 50),
        ("broken.jpg", b"\xff\xd8\xff\xe0" + b"\x13" * 400),
    ],
)
def test_an_empty_file_or_an_undecodable_image_is_a_bad_file(alice, name, data):
    client, token = session_for(alice)
    response = post_file(client, token, name, data)
    assert response.status_code == 400 and response.json()["error"] == "bad_file"
    assert not Upload.objects.exists()


def test_a_decompression_bomb_is_refused(alice):
    # 10,000 by 10,000 one-bit pixels: a few kilobytes as PNG, 100 million pixels,
    # past Pillow's default limit (about 89 million).
    out = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(out, "PNG")
    assert len(out.getvalue()) < 100_000
    client, token = session_for(alice)
    response = post_file(client, token, "bomb.png", out.getvalue())
    assert response.status_code == 400 and response.json()["error"] == "bad_file"
    assert not Upload.objects.exists()


def test_a_jpeg_loses_its_location_and_camera_and_is_turned_upright(alice):
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"  # Make
    exif[0x0110] = "Phone 12"  # Model
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to view
    exif[0x8825] = {1: "N", 2: (48.0, 51.0, 29.0), 3: "E", 4: (2.0, 17.0, 40.0)}
    out = io.BytesIO()
    Image.new("RGB", (300, 100), (10, 120, 10)).save(out, "JPEG", exif=exif)
    original = out.getvalue()
    assert b"PhoneMaker" in original and Image.open(io.BytesIO(original)).getexif().get(0x8825)

    body = uploaded(alice, "holiday.jpg", original)
    assert body["type"] == "image/jpeg"
    assert (body["width"], body["height"]) == (100, 300)
    upload = Upload.objects.get(pk=body["upload"])
    with default_storage.open(upload.storage_name, "rb") as stored_file:
        stored = stored_file.read()
    assert b"PhoneMaker" not in stored and b"Phone 12" not in stored
    image = Image.open(io.BytesIO(stored))
    assert image.size == (100, 300)
    assert not image.getexif()
    assert "exif" not in image.info and "xmp" not in image.info


# -- downloads -----------------------------------------------------------------


def group_message(sender, *members) -> tuple[ChatGroup, Message]:
    group = ChatGroup.objects.create(name="trip", key="trip")
    for member in (sender, *members):
        Membership.objects.create(group=group, user=member)
    message = Message.objects.create(
        kind=Message.Kind.GROUP, sender=sender, group=group, body="", created_at=timezone.now()
    )
    return group, message


def test_only_the_uploader_may_download_an_unsent_file(alice, bob):
    body = uploaded(alice, "photo.png", png_bytes())
    owner, _ = session_for(alice)
    assert owner.get(body["url"]).status_code == 200
    assert owner.get(body["thumb"]).status_code == 200
    stranger, _ = session_for(bob)
    for url in (body["url"], body["thumb"]):
        refused = stranger.get(url)
        assert refused.status_code == 404
        assert refused.json() == stranger.get("/uploads/no-such-upload").json()
    assert Client().get(body["url"]).status_code == 404


def test_readers_of_the_message_carrying_it_may_download_it_and_only_they(alice, bob, carol):
    body = uploaded(alice, "doc.pdf", b"%PDF-1.4 the plan")
    group, message = group_message(alice, bob)
    Upload.objects.filter(pk=body["upload"]).update(message=message)
    member, _ = session_for(bob)
    response = member.get(body["url"])
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == b"%PDF-1.4 the plan"
    outsider, _ = session_for(carol)
    assert outsider.get(body["url"]).status_code == 404
    # A former member reads the group's history no more, nor its files.
    Membership.objects.filter(group=group, user=bob).delete()
    assert member.get(body["url"]).status_code == 404
    assert session_for(alice)[0].get(body["url"]).status_code == 200


def test_a_deleted_message_takes_its_files_with_it(alice, bob):
    body = uploaded(alice, "photo.png", png_bytes())
    _, message = group_message(alice, bob)
    Upload.objects.filter(pk=body["upload"]).update(message=message)
    upload = Upload.objects.get(pk=body["upload"])
    Message.objects.filter(pk=message.pk).update(deleted=True)
    assert session_for(bob)[0].get(body["url"]).status_code == 404
    message.delete()
    assert not default_storage.exists(upload.storage_name)
    assert not default_storage.exists(upload.thumb_name)
    assert session_for(alice)[0].get(body["url"]).status_code == 404


@pytest.mark.parametrize(
    "name,data,kind,disposition",
    [
        ("page.html", b"<!DOCTYPE html><script>alert(1)</script>", "text/html", "attachment"),
        (
            "logo.svg",
            b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>',
            "image/svg+xml",
            "attachment",
        ),
        ("photo.png", None, "image/png", "inline"),
    ],
)
def test_downloads_never_run_as_the_site(alice, name, data, kind, disposition):
    body = uploaded(alice, name, data if data is not None else png_bytes())
    assert body["type"] == kind
    response = session_for(alice)[0].get(body["url"])
    assert response.status_code == 200
    assert response["Content-Type"] == kind
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Content-Security-Policy"] == "default-src 'none'; sandbox"
    assert response["Cache-Control"] == "private"
    assert response["Content-Disposition"] == f'{disposition}; filename="{name}"'


def test_range_requests_are_answered(alice):
    data = bytes(range(256)) * 40
    body = uploaded(alice, "clip.bin", data)
    client, _ = session_for(alice)
    part = client.get(body["url"], headers={"Range": "bytes=100-199"})
    assert part.status_code == 206
    assert part["Content-Range"] == f"bytes 100-199/{len(data)}"
    assert b"".join(part.streaming_content) == data[100:200]
    tail = client.get(body["url"], headers={"Range": "bytes=-10"})
    assert tail.status_code == 206 and b"".join(tail.streaming_content) == data[-10:]
    beyond = client.get(body["url"], headers={"Range": f"bytes={len(data)}-"})
    assert beyond.status_code == 416 and beyond["Content-Range"] == f"bytes */{len(data)}"
    whole = client.get(body["url"])
    assert whole.status_code == 200 and whole["Accept-Ranges"] == "bytes"


# -- the rules without HTTP ----------------------------------------------------


def test_names_are_cleaned():
    assert uploads.clean_name("C:\\Users\\me\\report.pdf") == "report.pdf"
    assert uploads.clean_name("a\u202ebad\u0000.txt") == "abad.txt"
    assert uploads.clean_name("..") == "file"
    long = uploads.clean_name("x" * 300 + ".jpeg")
    assert len(long) == 200 and long.endswith(".jpeg")


def test_types_come_from_the_bytes():
    assert uploads.sniff_type(b"GIF89a....") == "image/gif"
    assert uploads.sniff_type(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "image/webp"
    assert uploads.sniff_type(b"\x00\x00\x00\x18ftypmp42") == "video/mp4"
    assert uploads.sniff_type(b"  <html><body>") == "text/html"
    assert uploads.sniff_type("plain words, ünïcode".encode()) == "text/plain"
    assert uploads.sniff_type(b"\x00\x01\x02\x03\xfe\xff") == "application/octet-stream"


def test_removeuploads_removes_old_unsent_uploads_and_leaves_sent_and_recent_ones(alice, bob):
    old = Upload.objects.get(pk=uploaded(alice, "old.txt", b"old")["upload"])
    sent = Upload.objects.get(pk=uploaded(alice, "sent.txt", b"sent")["upload"])
    fresh = Upload.objects.get(pk=uploaded(alice, "fresh.txt", b"fresh")["upload"])
    _, message = group_message(alice, bob)
    day_ago = timezone.now() - timedelta(hours=25)
    Upload.objects.filter(pk__in=[old.pk, sent.pk]).update(created=day_ago)
    Upload.objects.filter(pk=sent.pk).update(message=message)
    out = io.StringIO()
    call_command("removeuploads", stdout=out)
    assert "removed 1 upload(s)" in out.getvalue()
    assert set(Upload.objects.values_list("pk", flat=True)) == {sent.pk, fresh.pk}
    assert not default_storage.exists(old.storage_name)
    assert default_storage.exists(sent.storage_name)


async def test_a_streamed_body_past_the_limit_is_cut_off_while_it_arrives(settings):
    """Under daphne, without Content-Length: refused once the bytes pass the limit."""
    from django.core.asgi import get_asgi_application

    from chat.upload_views import limit_upload_bodies

    settings.CHAT_UPLOAD_MAX_BYTES = 100_000
    app = limit_upload_bodies(get_asgi_application())
    chunk = b"\x00" * 65536
    read = 0

    async def receive():
        nonlocal read
        read += 1
        return {"type": "http.request", "body": chunk, "more_body": read < 10_000}

    sent = []

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "path": "/uploads/",
        "raw_path": b"/uploads/",
        "query_string": b"",
        "headers": [
            (b"content-type", b"multipart/form-data; boundary=x"),
            (b"host", b"testserver"),
        ],
        "client": ("127.0.0.1", 5000),
        "server": ("testserver", 80),
    }
    await app(scope, receive, send)
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 413
    assert b'"too_large"' in sent[1]["body"]
    # Stopped after the limit's worth of chunks, not the 650 MB offered.
    assert read <= (100_000 + uploads.MULTIPART_OVERHEAD) // len(chunk) + 2


def test_a_message_deleted_as_the_protocol_and_admin_do_takes_its_files(alice, bob):
    body = uploaded(alice, "photo.png", png_bytes())
    _, message = group_message(alice, bob)
    Upload.objects.filter(pk=body["upload"]).update(message=message)
    upload = Upload.objects.get(pk=body["upload"])
    assert session_for(bob)[0].get(body["url"]).status_code == 200
    message_tombstone(message.pk)
    assert not default_storage.exists(upload.storage_name)
    assert not default_storage.exists(upload.thumb_name)
    for user in (alice, bob):
        assert session_for(user)[0].get(body["url"]).status_code == 404


def test_removing_a_guest_removes_their_files(settings):
    guest = guest_create()
    body = uploaded(guest, "guest.txt", b"from a guest")
    upload = Upload.objects.get(pk=body["upload"])
    long_ago = timezone.now() - timedelta(days=settings.CHAT_GUEST_RETENTION_DAYS + 400)
    get_user_model().objects.filter(pk=guest.pk).update(last_login=long_ago, date_joined=long_ago)
    assert guests_remove_inactive().removed == 1
    assert not Upload.objects.exists()
    assert not default_storage.exists(upload.storage_name)


def test_the_admin_lists_uploads_with_each_uploaders_total(alice, bob):
    uploaded(alice, "one.bin", b"\x01" * 1000)
    uploaded(alice, "two.bin", b"\x01" * 500)
    uploaded(bob, "bobs.bin", b"\x01" * 70)
    admin = Client()
    admin.force_login(get_user_model().objects.create_superuser("root", "root@example.com", "pw"))
    page = admin.get("/admin/chat/upload/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "one.bin" in html and "bobs.bin" in html
    assert html.count(">1500<") == 2 and html.count(">70<") == 2


async def test_metrics_count_uploads_and_their_bytes(alice, settings):
    from asgiref.sync import sync_to_async
    from django.test import AsyncClient
    from prometheus_client.parser import text_string_to_metric_families

    settings.CHAT_METRICS_TOKEN = "uploads-metrics"
    await sync_to_async(uploaded)(alice, "a.bin", b"\x01" * 300)
    await sync_to_async(uploaded)(alice, "b.bin", b"\x01" * 200)
    response = await AsyncClient().get(
        "/metrics", headers={"Authorization": "Bearer uploads-metrics"}
    )
    samples = {
        sample.name: sample.value
        for family in text_string_to_metric_families(response.content.decode())
        for sample in family.samples
    }
    assert samples["chat_uploads_stored"] == 2
    assert samples["chat_upload_bytes_stored"] == 500


def test_memory_does_not_grow_with_the_file_size(alice):
    """20 MB up and down: what the server allocates stays at a few chunks' worth."""
    import tracemalloc

    from django.test import RequestFactory

    from chat.upload_views import download, upload

    data = bytes(range(256)) * (20 * 1024 * 1024 // 256)
    request = RequestFactory().post(
        "/uploads/",
        {"file": SimpleUploadedFile("big.bin", data)},
        headers={"X-CSRFToken": "checked-elsewhere"},
    )
    request.user = alice
    request._dont_enforce_csrf_checks = True
    tracemalloc.start()
    try:
        response = upload(request)
        _, upload_peak = tracemalloc.get_traced_memory()
        assert response.status_code == 201, response.content
        tracemalloc.reset_peak()
        body = json.loads(response.content)
        fetch = RequestFactory().get(body["url"])
        fetch.user = alice
        served = download(fetch, body["upload"])
        total = sum(len(chunk) for chunk in served.streaming_content)
        served.close()
        _, download_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == len(data)
    assert upload_peak < 4 * 1024 * 1024, upload_peak
    assert download_peak < 2 * 1024 * 1024, download_peak
