"""chat.views over HTTP: pages, sign-up, login/logout, guests, health, logout closing sockets."""

from __future__ import annotations

import re
import socket
from unittest import mock

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import SESSION_KEY, get_user_model
from django.db import OperationalError, connection
from django.test import Client

from chat.models import Profile
from chat.profiles import name_of
from chat.protocol import CLOSE_POLICY_VIOLATION, display_name_refusal
from tests.chatclient import TIMEOUT, ChatTestClient, socket_headers
from tests.conftest import REDIS_URL

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "a-long-enough-passphrase-42"
LOGIN = "/accounts/login/"


def logged_in_user(client: Client):
    user_id = client.session.get(SESSION_KEY)
    return get_user_model().objects.get(pk=user_id) if user_id else None


def signup(client: Client, username: str):
    return client.post(
        "/accounts/signup/",
        {"username": username, "password1": PASSWORD, "password2": PASSWORD},
    )


# -- the chat page -------------------------------------------------------------


def test_index_sends_anonymous_visitors_to_login(client):
    response = client.get("/")

    assert response.status_code == 302
    assert response["Location"] == f"{LOGIN}?next=/"


def test_index_serves_the_chat_page_when_logged_in(client, alice):
    client.force_login(alice)

    response = client.get("/")

    assert response.status_code == 200
    assert "alice" in response.content.decode()


# -- sign-up -------------------------------------------------------------------


def test_signup_page_renders_the_form(client):
    response = client.get("/accounts/signup/")

    assert response.status_code == 200
    assert 'name="username"' in response.content.decode()


def test_signup_creates_the_account_and_logs_in(client):
    response = signup(client, "dora")

    assert response.status_code == 302
    assert response["Location"] == "/"
    assert logged_in_user(client).username == "dora"
    assert client.get("/").status_code == 200


@pytest.mark.parametrize("name", ["guest-1", "Guest-dora", "GUEST-X"])
def test_signup_refuses_guest_names_in_any_case(client, name):
    response = signup(client, name)

    assert response.status_code == 200
    assert "kept for guests" in response.content.decode()
    assert not get_user_model().objects.filter(username__iexact=name).exists()
    assert logged_in_user(client) is None


@pytest.mark.parametrize("name", ["alice", "Alice"])
def test_signup_with_a_taken_name_shows_the_form_again(client, alice, name):
    response = signup(client, name)

    assert response.status_code == 200
    assert get_user_model().objects.count() == 1
    assert logged_in_user(client) is None


def test_signup_with_mismatched_passwords_creates_nobody(client):
    response = client.post(
        "/accounts/signup/",
        {"username": "dora", "password1": PASSWORD, "password2": PASSWORD + "x"},
    )

    assert response.status_code == 200
    assert not get_user_model().objects.filter(username="dora").exists()


# -- login and logout ----------------------------------------------------------


def test_login_with_the_right_password_logs_in_and_goes_to_the_chat(client, alice):
    response = client.post(LOGIN, {"username": "alice", "password": "pw-alice"})

    assert response.status_code == 302
    assert response["Location"] == "/"
    assert logged_in_user(client) == alice


def test_login_with_a_wrong_password_is_refused(client, alice):
    response = client.post(LOGIN, {"username": "alice", "password": "wrong"})

    assert response.status_code == 200
    assert logged_in_user(client) is None


def test_login_page_renders(client):
    response = client.get(LOGIN)

    assert response.status_code == 200
    assert 'name="password"' in response.content.decode()


def test_logout_ends_the_session(client, alice):
    client.force_login(alice)

    response = client.post("/accounts/logout/")

    assert response.status_code == 302
    assert response["Location"] == LOGIN
    assert logged_in_user(client) is None
    assert client.get("/").status_code == 302


def test_logout_needs_post(client, alice):
    client.force_login(alice)

    assert client.get("/accounts/logout/").status_code == 405
    assert logged_in_user(client) == alice


def test_signup_asks_for_a_display_name_and_stores_it_trimmed(client):
    assert 'name="display_name"' in client.get("/accounts/signup/").content.decode()
    response = client.post(
        "/accounts/signup/",
        {
            "username": "dora",
            "display_name": "  Dora M. ",
            "password1": PASSWORD,
            "password2": PASSWORD,
        },
    )

    assert response.status_code == 302
    assert name_of(logged_in_user(client)) == "Dora M."


def test_signup_without_a_display_name_is_called_by_the_username(client):
    assert signup(client, "dora").status_code == 302
    user = logged_in_user(client)
    assert name_of(user) == "dora"
    assert not Profile.objects.filter(user=user).exists()


@pytest.mark.parametrize(("name", "says"), [("x" * 65, "64"), ("a\u202eb", "U+202E")])
def test_signup_with_a_bad_display_name_shows_the_form_again(client, name, says):
    response = client.post(
        "/accounts/signup/",
        {"username": "dora", "display_name": name, "password1": PASSWORD, "password2": PASSWORD},
    )

    assert response.status_code == 200
    assert says in response.content.decode()
    assert not get_user_model().objects.exists()


# -- guests --------------------------------------------------------------------


def test_the_login_page_fills_in_a_name_for_guests(client):
    page = client.get(LOGIN).content.decode()

    suggested = re.search(r'<input type="text" name="name" value="([^"]+)"', page)
    assert suggested is not None, page
    assert display_name_refusal(suggested.group(1)) is None


def test_a_guest_enters_with_the_name_they_chose(client):
    response = client.post("/accounts/guest/", {"name": "  Zoë "})

    assert response.status_code == 302
    guest = logged_in_user(client)
    assert re.fullmatch(r"guest-[0-9a-f]{8}", guest.username)
    assert name_of(guest) == "Zoë"


@pytest.mark.parametrize("name", ["", "   ", "x" * 65, "a\u200bb"])
def test_a_guest_with_a_bad_name_is_asked_again_and_nobody_is_created(client, name):
    response = client.post("/accounts/guest/", {"name": name})

    assert response.status_code == 400
    page = response.content.decode()
    assert 'name="name"' in page and "field-errors" in page
    assert logged_in_user(client) is None
    assert not get_user_model().objects.exists()


def test_a_guest_post_without_a_name_keeps_a_suggested_one(client):
    client.post("/accounts/guest/")

    guest = logged_in_user(client)
    assert name_of(guest) != guest.username
    assert display_name_refusal(name_of(guest)) is None


def test_guest_login_creates_a_guest_user_and_logs_in(client):
    response = client.post("/accounts/guest/")

    assert response.status_code == 302
    assert response["Location"] == "/"
    guest = logged_in_user(client)
    assert re.fullmatch(r"guest-[0-9a-f]{8}", guest.username)
    assert client.get("/").status_code == 200


def test_each_guest_login_is_a_new_guest(client):
    client.post("/accounts/guest/")
    first = logged_in_user(client)
    other = Client()
    other.post("/accounts/guest/")

    assert logged_in_user(other) != first


def test_guest_login_needs_post(client):
    response = client.get("/accounts/guest/")

    assert response.status_code == 405
    assert not get_user_model().objects.exists()


def test_guest_login_is_not_found_when_turned_off(client, settings):
    settings.CHAT_GUEST_LOGIN = False

    response = client.post("/accounts/guest/")

    assert response.status_code == 404
    assert not get_user_model().objects.exists()
    assert logged_in_user(client) is None


# -- /healthz ------------------------------------------------------------------


def closed_port() -> int:
    """A local TCP port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_healthz_is_ok_on_the_in_memory_layer(client, settings):
    settings.REDIS_URL = ""

    response = client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"database": "ok", "channel_layer": "ok"}


def test_healthz_is_ok_with_redis_answering(client, settings):
    settings.REDIS_URL = REDIS_URL

    response = client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"database": "ok", "channel_layer": "ok"}


def test_healthz_is_503_when_redis_does_not_answer(client, settings):
    settings.REDIS_URL = f"redis://127.0.0.1:{closed_port()}/0"

    response = client.get("/healthz")

    assert response.status_code == 503
    assert response.json() == {"database": "ok", "channel_layer": "error"}


def test_healthz_is_503_when_the_database_fails(client, settings):
    settings.REDIS_URL = ""

    with mock.patch.object(connection, "cursor", side_effect=OperationalError("down")):
        response = client.get("/healthz")

    assert response.status_code == 503
    assert response.json() == {"database": "error", "channel_layer": "ok"}


def test_healthz_needs_no_login(client, settings):
    settings.REDIS_URL = ""

    assert client.get("/healthz").status_code == 200
    assert logged_in_user(client) is None


# -- logging out closes that session's sockets ---------------------------------


async def open_socket_with_session(username: str, cookie: str) -> ChatTestClient:
    from chatsite.asgi import application

    communicator = WebsocketCommunicator(application, "/ws/chat/", headers=socket_headers(cookie))
    connected, code = await communicator.connect(timeout=TIMEOUT)
    assert connected, f"handshake refused ({code})"
    client = ChatTestClient(communicator, username)
    client.hello = await client.expect("hello")
    return client


async def test_logout_closes_every_socket_of_that_session_only(layer, alice, connect):
    browser = Client()
    await sync_to_async(browser.force_login)(alice)
    cookie = browser.cookies["sessionid"].value
    tabs = [await open_socket_with_session("alice", cookie) for _ in range(2)]
    other_device = await connect(alice)
    try:
        response = await sync_to_async(browser.post)("/accounts/logout/")
        assert response.status_code == 302

        for tab in tabs:
            assert await tab.expect_close() == CLOSE_POLICY_VIOLATION
        await other_device.assert_nothing("__close__")
        assert (await other_device.request(type="ping"))["type"] == "pong"
    finally:
        for tab in tabs:
            await tab.close()


async def test_logout_leaves_other_users_sockets_open(layer, alice, bob, connect):
    browser = Client()
    await sync_to_async(browser.force_login)(alice)
    tab = await open_socket_with_session("alice", browser.cookies["sessionid"].value)
    bobs = await connect(bob)
    try:
        await sync_to_async(browser.post)("/accounts/logout/")

        assert await tab.expect_close() == CLOSE_POLICY_VIOLATION
        await bobs.assert_nothing("__close__")
        assert (await bobs.request(type="ping"))["type"] == "pong"
    finally:
        await tab.close()


async def test_continuing_as_guest_ends_the_previous_users_session_and_its_sockets(
    layer, alice, connect
):
    browser = Client()
    await sync_to_async(browser.force_login)(alice)
    tab = await open_socket_with_session("alice", browser.cookies["sessionid"].value)
    other_device = await connect(alice)
    try:
        response = await sync_to_async(browser.post)("/accounts/guest/")
        assert response.status_code == 302

        assert await tab.expect_close() == CLOSE_POLICY_VIOLATION
        await other_device.assert_nothing("__close__")
    finally:
        await tab.close()


async def test_signing_up_ends_the_previous_users_session_and_its_sockets(layer, alice):
    browser = Client()
    await sync_to_async(browser.force_login)(alice)
    tab = await open_socket_with_session("alice", browser.cookies["sessionid"].value)
    try:
        response = await sync_to_async(signup)(browser, "dora")
        assert response.status_code == 302

        assert await tab.expect_close() == CLOSE_POLICY_VIOLATION
    finally:
        await tab.close()


def test_logout_succeeds_when_the_channel_layer_is_down(client, settings, alice):
    from channels.layers import channel_layers

    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [f"redis://127.0.0.1:{closed_port()}/0"]},
        }
    }
    channel_layers.backends.clear()
    client.force_login(alice)
    try:
        response = client.post("/accounts/logout/")
    finally:
        channel_layers.backends.clear()

    assert response.status_code == 302
    assert logged_in_user(client) is None


async def test_logging_in_as_someone_else_ends_the_previous_session_and_its_sockets(
    layer, alice, bob, connect
):
    browser = Client()
    await sync_to_async(browser.force_login)(alice)
    tab = await open_socket_with_session("alice", browser.cookies["sessionid"].value)
    other_device = await connect(alice)
    try:
        response = await sync_to_async(browser.post)(
            "/accounts/login/", {"username": "bob", "password": "pw-bob"}
        )
        assert response.status_code == 302

        assert await tab.expect_close() == CLOSE_POLICY_VIOLATION
        await other_device.assert_nothing("__close__")
        assert (await other_device.request(type="ping"))["type"] == "pong"
    finally:
        await tab.close()


def test_login_page_offers_guest_login_only_when_it_is_on(client, settings):
    settings.CHAT_GUEST_LOGIN = True
    assert "Continue as guest" in client.get("/accounts/login/").content.decode()

    settings.CHAT_GUEST_LOGIN = False
    assert "Continue as guest" not in client.get("/accounts/login/").content.decode()
