"""Uploads on S3-compatible storage (CHAT_UPLOADS_S3_BUCKET), against a real S3 API server.

The server is moto's server mode, started by this module as its own process
on a free port: django-storages and boto3 speak real HTTP to it.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest
from django.core.files.storage import default_storage
from django.test import Client

from chat.models import Upload
from chatsite.settings import uploads_s3_storage
from tests.test_uploads import png_bytes, session_for, uploaded

pytestmark = pytest.mark.django_db(transaction=True)

BUCKET = "chat-uploads-test"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        if server.poll() is not None:
            pytest.fail(
                "moto's S3 server exited at start: install the dev requirements "
                "(`make install-dev`, moto[server])",
                pytrace=False,
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            if time.monotonic() > deadline:
                server.kill()
                pytest.fail("moto's S3 server did not listen within 30 s", pytrace=False)
            time.sleep(0.1)
    try:
        yield endpoint
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture
def on_s3(s3_endpoint, settings, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.create_bucket(Bucket=BUCKET)
    settings.CHAT_UPLOADS_S3_BUCKET = BUCKET
    settings.CHAT_UPLOADS_S3_ENDPOINT = s3_endpoint
    settings.STORAGES = {
        **settings.STORAGES,
        "default": uploads_s3_storage(BUCKET, s3_endpoint),
    }
    yield client
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for item in page.get("Contents", []):
            client.delete_object(Bucket=BUCKET, Key=item["Key"])
    client.delete_bucket(Bucket=BUCKET)


def keys(client) -> set[str]:
    return {item["Key"] for item in client.list_objects_v2(Bucket=BUCKET).get("Contents", [])}


def test_the_whole_path_on_the_s3_server(on_s3, alice, bob):
    assert default_storage.bucket_name == BUCKET
    image = uploaded(alice, "photo.png", png_bytes((900, 300)))
    page = uploaded(alice, "page.html", b"<!DOCTYPE html><script>alert(1)</script>")
    upload = Upload.objects.get(pk=image["upload"])
    assert {upload.storage_name, upload.thumb_name} <= keys(on_s3)

    owner, _ = session_for(alice)
    redirect = owner.get(image["url"])
    assert redirect.status_code == 302
    query = parse_qs(urlsplit(redirect["Location"]).query)
    assert query["X-Amz-Expires"] == ["60"]
    with urllib.request.urlopen(redirect["Location"], timeout=10) as answer:
        assert answer.headers["Content-Type"] == "image/png"
        assert answer.headers["Content-Disposition"] == 'inline; filename="photo.png"'
        assert answer.read().startswith(b"\x89PNG")

    html = owner.get(page["url"])
    assert html.status_code == 302
    with urllib.request.urlopen(html["Location"], timeout=10) as answer:
        assert answer.headers["Content-Type"] == "text/html"
        assert answer.headers["Content-Disposition"] == 'attachment; filename="page.html"'

    # The permission check comes first: a stranger gets no URL at all.
    stranger, _ = session_for(bob)
    refused = stranger.get(image["url"])
    assert refused.status_code == 404 and "Location" not in refused
    assert Client().get(image["thumb"]).status_code == 404

    Upload.objects.filter(pk=image["upload"]).delete()
    assert upload.storage_name not in keys(on_s3)
    assert upload.thumb_name not in keys(on_s3)
