"""Files in messages (protocol 1.2, issue 28): `send.files`, `files` in every message
object, downloads through the message, deletion, and the plain-text endpoint.

The HTTP half (`POST /uploads/`, its refusals, headers, S3) is tested in
tests/test_uploads.py; here uploads are stored directly through `chat.uploads`.
"""

from __future__ import annotations

import io
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from unittest import mock

import pytest
from asgiref.sync import sync_to_async
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from PIL import Image

from chat import messaging, uploads
from chat.messaging import SendRequest, StoredMessage, message_send_many
from chat.models import Message, Upload
from chat.protocol import MAX_FILES, Address, ChatError
from tests.test_classic import json_peer, open_classic

pytestmark = pytest.mark.django_db(transaction=True)

ALL = {"all": True}


@pytest.fixture(autouse=True)
def _media(settings, tmp_path):
    settings.MEDIA_ROOT = str(tmp_path / "media")


def png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (60, 40), (20, 90, 200)).save(out, "PNG")
    return out.getvalue()


def store(user, name: str, data: bytes) -> dict[str, Any]:
    """An upload of `user`'s, as `POST /uploads/` answers it."""
    return uploads.upload_json(uploads.store(user, ContentFile(data, name=name), name))


def status_for(user, url: str) -> int:
    client = Client()
    client.force_login(user)
    response = client.get(url)
    if hasattr(response, "streaming_content"):
        b"".join(response.streaming_content)
    return response.status_code


async def send_ok(client, to: dict[str, Any], body: str, **extra: Any) -> int:
    ack = await client.request(type="send", to=to, body=body, **extra)
    assert ack["type"] == "ack", ack
    return int(ack["id"])


async def error_of(client, **command: Any) -> str:
    reply = await client.request(**command)
    assert reply["type"] == "error", reply
    assert reply["message"]
    return str(reply["code"])


async def test_a_message_carries_its_files_in_every_message_object(layer, connect, alice, bob):
    photo = await sync_to_async(store)(alice, "photo.png", png())
    paper = await sync_to_async(store)(alice, "paper.pdf", b"%PDF-1.7 the plan")
    alice_socket, bob_socket = await connect(alice), await connect(bob)
    plain = await send_ok(alice_socket, {"user": "bob"}, "text only")
    # A message with files may have an empty body.
    sent = await send_ok(
        alice_socket, {"user": "bob"}, "", files=[photo["upload"], paper["upload"]]
    )

    assert (await bob_socket.expect("message", id=plain))["files"] == []
    live = await bob_socket.expect("message", id=sent)
    own = await alice_socket.expect("message", id=sent)
    history = await bob_socket.request(type="history", of={"user": "alice"})
    synced = await bob_socket.request(type="sync", since=plain)
    listed = await bob_socket.request(type="conversations")
    changes = await bob_socket.request(type="changes", since=plain)
    for message in (
        live,
        own,
        history["messages"][-1],
        synced["messages"][0],
        listed["items"][0]["last"],
        changes["messages"][0],
    ):
        assert message["id"] == sent and message["body"] == ""
        assert message["files"] == [photo, paper], message
    assert history["messages"][0]["files"] == []
    assert photo["thumb"] and photo["width"] == 60 and paper["thumb"] is None
    # The recipient may now download them; a stranger still may not.
    assert await sync_to_async(status_for)(bob, paper["url"]) == 200
    assert await sync_to_async(status_for)(bob, photo["thumb"]) == 200


async def test_files_that_are_not_the_senders_unsent_uploads_are_refused(
    layer, connect, alice, bob
):
    mine = await sync_to_async(store)(alice, "a.txt", b"mine")
    theirs = await sync_to_async(store)(bob, "b.txt", b"theirs")
    alice_socket = await connect(alice)
    to = {"user": "bob"}
    assert await error_of(alice_socket, type="send", to=to, body="x", files=[theirs["upload"]]) == (
        "no_such_upload"
    )
    assert await error_of(alice_socket, type="send", to=to, body="x", files=["nope"]) == (
        "no_such_upload"
    )
    await send_ok(alice_socket, to, "first", files=[mine["upload"]])
    # Already sent: a second message cannot carry it.
    assert await error_of(alice_socket, type="send", to=to, body="x", files=[mine["upload"]]) == (
        "no_such_upload"
    )
    too_many = [f"id{n}" for n in range(MAX_FILES + 1)]
    for files in (too_many, [], "abc", [1], [mine["upload"], mine["upload"]]):
        assert await error_of(alice_socket, type="send", to=to, body="x", files=files) == (
            "bad_command"
        ), files
    # Without files an empty body is still refused.
    assert await error_of(alice_socket, type="send", to=to, body=" ") == "empty_body"
    assert await sync_to_async(Message.objects.count)() == 1


async def test_a_repeated_cid_answers_the_first_message_with_its_files(layer, connect, alice, bob):
    doc = await sync_to_async(store)(alice, "doc.txt", b"notes")
    alice_socket = await connect(alice)
    command = {"type": "send", "to": {"user": "bob"}, "body": "", "files": [doc["upload"]]}
    first = await alice_socket.request(**command, cid="c1")
    again = await alice_socket.request(**command, cid="c1")
    assert first["type"] == again["type"] == "ack" and first["id"] == again["id"]
    assert await error_of(alice_socket, **command, cid="c2") == "no_such_upload"
    assert await sync_to_async(Message.objects.count)() == 1


def test_two_sends_of_one_upload_store_one_message(alice, bob):
    doc = store(alice, "doc.txt", b"notes")["upload"]
    to_bob = Address("user", "bob")
    # In one batch the first request takes it.
    first, second = message_send_many(
        [
            SendRequest(alice, to_bob, "a", files=(doc,)),
            SendRequest(alice, to_bob, "b", files=(doc,)),
        ]
    )
    assert isinstance(first, StoredMessage) and first.event["files"][0]["upload"] == doc
    assert isinstance(second, ChatError) and second.code == "no_such_upload"
    assert Upload.objects.get(pk=doc).message_id == first.id


def test_an_upload_taken_after_the_check_is_not_sent_twice(alice, bob, monkeypatch):
    """Another worker's send attaches the upload between this batch's check and its insert."""
    doc = store(alice, "doc.txt", b"notes")["upload"]
    other = Message.objects.create(
        kind=Message.Kind.ALL, sender=alice, body="elsewhere", created_at=timezone.now()
    )
    checked = messaging._uploads_of

    def check_then_lose(requests):
        found = checked(requests)
        Upload.objects.filter(pk=doc).update(message=other)
        return found

    monkeypatch.setattr(messaging, "_uploads_of", check_then_lose)
    [result] = message_send_many([SendRequest(alice, Address("user", "bob"), "x", files=(doc,))])
    assert isinstance(result, ChatError) and result.code == "no_such_upload"
    assert Upload.objects.get(pk=doc).message_id == other.id
    assert list(Message.objects.values_list("body", flat=True)) == ["elsewhere"]


def test_two_workers_sending_one_upload_at_once_store_one_message(alice, bob):
    """Two threads, two database connections, both past the check before either inserts."""
    doc = store(alice, "doc.txt", b"notes")["upload"]
    both_checked = threading.Barrier(2, timeout=10)
    firsts = iter([True, True])
    checked = messaging._uploads_of

    def check_then_wait(requests):
        found = checked(requests)
        # Each thread's first check waits for the other's (a batch redone checks again).
        if next(firsts, False):
            both_checked.wait()
        return found

    def send(body: str) -> StoredMessage | ChatError:
        try:
            [result] = message_send_many(
                [SendRequest(alice, Address("user", "bob"), body, files=(doc,))]
            )
            return result
        finally:
            connection.close()

    with (
        mock.patch.object(messaging, "_uploads_of", check_then_wait),
        ThreadPoolExecutor(2) as pool,
    ):
        results = list(pool.map(send, ["one", "two"]))
    stored = [r for r in results if isinstance(r, StoredMessage)]
    refused = [r for r in results if isinstance(r, ChatError)]
    assert len(stored) == 1 and [r.code for r in refused] == ["no_such_upload"], results
    assert Upload.objects.get(pk=doc).message_id == stored[0].id
    assert Message.objects.count() == 1


def test_a_send_without_files_reads_no_uploads_and_one_with_files_one_statement_more(alice, bob):
    doc = store(alice, "doc.txt", b"notes")["upload"]
    to_bob = Address("user", "bob")
    message_send_many([SendRequest(alice, to_bob, "warm")])  # names read, statements built
    with CaptureQueriesContext(connection) as plain:
        message_send_many([SendRequest(alice, to_bob, "a"), SendRequest(bob, ALL_ADDRESS, "b")])
    with CaptureQueriesContext(connection) as with_files:
        message_send_many(
            [SendRequest(alice, to_bob, "", files=(doc,)), SendRequest(bob, ALL_ADDRESS, "b")]
        )
    plain_sql = [q["sql"] for q in plain.captured_queries]
    files_sql = [q["sql"] for q in with_files.captured_queries]
    assert not [q for q in plain_sql if "chat_upload" in q], plain_sql
    if connection.vendor == "postgresql":
        assert len(files_sql) == len(plain_sql) + 1, files_sql
    else:
        # SQLite: the read, and the UPDATE that attaches them in the transaction.
        assert len(files_sql) == len(plain_sql) + 2, files_sql


ALL_ADDRESS = Address("all")


async def test_deleting_a_message_makes_its_files_404_at_once(layer, connect, alice, bob):
    photo = await sync_to_async(store)(alice, "photo.png", png())
    alice_socket, bob_socket = await connect(alice), await connect(bob)
    sent = await send_ok(alice_socket, {"user": "bob"}, "look", files=[photo["upload"]])
    assert await sync_to_async(status_for)(bob, photo["url"]) == 200
    names = await sync_to_async(
        lambda: Upload.objects.values_list("storage_name", "thumb_name").get()
    )()

    deleted = await alice_socket.request(type="delete", id=sent)

    assert deleted["type"] == "deleted" and deleted["files"] == []
    assert (await bob_socket.expect("deleted", id=sent))["files"] == []
    for user in (alice, bob):
        for url in (photo["url"], photo["thumb"]):
            assert await sync_to_async(status_for)(user, url) == 404
    assert not any(default_storage.exists(name) for name in names)


async def test_a_former_group_member_cannot_download_its_files(layer, connect, alice, bob):
    doc = await sync_to_async(store)(alice, "minutes.pdf", b"%PDF-1.4 minutes")
    alice_socket, bob_socket = await connect(alice), await connect(bob)
    for client in (alice_socket, bob_socket):
        assert (await client.request(type="join", group="Team"))["type"] == "joined"
    await send_ok(alice_socket, {"group": "Team"}, "minutes", files=[doc["upload"]])
    assert await sync_to_async(status_for)(bob, doc["url"]) == 200

    assert (await bob_socket.request(type="leave", group="Team"))["type"] == "left"

    assert await sync_to_async(status_for)(bob, doc["url"]) == 404
    assert await sync_to_async(status_for)(alice, doc["url"]) == 200


async def test_the_plain_text_endpoint_shows_the_files_full_urls(layer, connect, alice, bob):
    photo = await sync_to_async(store)(alice, "photo.png", png())
    paper = await sync_to_async(store)(alice, "paper.pdf", b"%PDF-1.7 x")
    bob_classic = await open_classic(bob)
    try:
        alice_socket = await json_peer(connect, bob_classic, alice)
        await send_ok(alice_socket, {"user": "bob"}, "a photo", files=[photo["upload"]])
        await bob_classic.expect(f"用户(alice=>bob):a photo\nhttp://localhost{photo['url']}")
        await send_ok(alice_socket, {"user": "bob"}, "", files=[paper["upload"]])
        await bob_classic.expect(f"用户(alice=>bob):http://localhost{paper['url']}")
    finally:
        await bob_classic.close()
