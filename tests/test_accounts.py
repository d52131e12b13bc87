"""chat.accounts: the sign-up form's rules and guest users."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth import get_user_model

from chat.accounts import SignupForm, guest_create, is_guest_name

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "a-long-enough-passphrase-42"


def signup_form(username: str) -> SignupForm:
    return SignupForm({"username": username, "password1": PASSWORD, "password2": PASSWORD})


@pytest.mark.parametrize("name", ["guest-1", "Guest-abc", "GUEST-", "gUeSt-x"])
def test_guest_names_are_recognised_in_any_case(name):
    assert is_guest_name(name)


@pytest.mark.parametrize("name", ["guest", "guests", "myguest-1", "alice"])
def test_other_names_are_not_guest_names(name):
    assert not is_guest_name(name)


# The last one is full-width: Django folds it (NFKC) to "GUEST-1" before the check.
@pytest.mark.parametrize(
    "name", ["guest-1", "Guest-alice", "GUEST-X", "\uff27\uff35\uff25\uff33\uff34-1"]
)
def test_signup_refuses_names_kept_for_guests(name):
    form = signup_form(name)

    assert not form.is_valid()
    assert "username" in form.errors


def test_signup_accepts_an_ordinary_name():
    form = signup_form("dora")

    assert form.is_valid(), form.errors
    user = form.save()
    assert user.check_password(PASSWORD)


@pytest.mark.parametrize("name", ["alice", "ALICE"])
def test_signup_refuses_a_taken_name_in_any_case(alice, name):
    form = signup_form(name)

    assert not form.is_valid()
    assert "username" in form.errors


def test_guest_create_makes_a_passwordless_guest_user():
    user = guest_create()

    assert re.fullmatch(r"guest-[0-9a-f]{8}", user.username)
    assert not user.has_usable_password()


def test_guest_create_gives_different_names():
    assert guest_create().username != guest_create().username


def test_guest_create_with_a_suffix_takes_exactly_that_name():
    user = guest_create(suffix="12345")

    assert user is not None and user.username == "guest-12345"


def test_guest_create_with_a_taken_suffix_returns_none():
    guest_create(suffix="12345")

    assert guest_create(suffix="12345") is None
    assert get_user_model().objects.filter(username="guest-12345").count() == 1


# Look-alike names (Unicode TR39 skeletons): each was accepted before.
@pytest.mark.parametrize(
    "name",
    [
        "\u0430lice",  # Cyrillic small a
        "alic\u0435",  # Cyrillic small ie
        "\u0410LICE",  # Cyrillic capital A
        "aIice",  # capital I for l
        "\u0251lice",  # Latin alpha
    ],
)
def test_signup_refuses_a_name_that_looks_like_an_existing_users(alice, name):
    form = signup_form(name)

    assert not form.is_valid()
    assert "looks the same" in " ".join(form.errors["username"])


@pytest.mark.parametrize("name", ["gu\u0435st-123", "\u0261uest-1", "GU\u0415ST-x"])
def test_signup_refuses_a_name_that_looks_like_the_guest_prefix(name):
    form = signup_form(name)

    assert not form.is_valid()
    assert "kept for guests" in " ".join(form.errors["username"])


@pytest.mark.parametrize("name", ["alicia", "\u0430\u043b\u0438\u0441\u0430", "bob"])
def test_signup_accepts_names_that_only_resemble_in_meaning(alice, name):
    form = signup_form(name)

    assert form.is_valid(), form.errors
