"""Password reset: only with e-mail configured, and then limited per address and per account.

Without e-mail the pages do not exist (before: every request logged a
traceback trying to reach a mail server); with it, anyone could mail-bomb a
user by asking again and again.
"""

from __future__ import annotations

import logging

import pytest
from django.contrib.auth import get_user_model
from django.core import mail
from django.test import Client

pytestmark = pytest.mark.django_db

RESET = "/accounts/password_reset/"
PAGES = [
    RESET,
    "/accounts/password_reset/done/",
    "/accounts/reset/MQ/set-password/",
    "/accounts/reset/done/",
]


@pytest.fixture
def mail_on(settings):
    settings.EMAIL_HOST = "smtp.example.com"
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    settings.REDIS_URL = ""
    settings.CHAT_PASSWORD_RESETS_PER_ADDRESS = 3
    settings.CHAT_PASSWORD_RESETS_PER_ACCOUNT = 2
    settings.CHAT_PASSWORD_RESET_WINDOW = 3600


@pytest.fixture
def dora(db):
    return get_user_model().objects.create_user(
        "dora", email="dora@example.com", password="pw-of-dora-5521"
    )


def ask(email: str, address: str) -> int:
    return Client(REMOTE_ADDR=address).post(RESET, {"email": email}).status_code


@pytest.mark.parametrize("page", PAGES)
def test_without_e_mail_the_reset_pages_do_not_exist_and_log_no_traceback(
    settings, caplog, page, dora
):
    settings.EMAIL_HOST = ""
    caplog.set_level(logging.INFO)

    assert Client().get(page).status_code == 404
    assert Client().post(page, {"email": "dora@example.com"}).status_code == 404

    assert mail.outbox == []
    assert not [record for record in caplog.records if record.exc_info], caplog.text


def test_the_login_page_offers_a_reset_only_with_e_mail(settings, mail_on):
    assert RESET in Client().get("/accounts/login/").content.decode()
    settings.EMAIL_HOST = ""
    assert RESET not in Client().get("/accounts/login/").content.decode()


def test_with_e_mail_a_reset_is_mailed(mail_on, dora):
    assert ask("dora@example.com", "203.0.113.40") == 302

    [sent] = mail.outbox
    assert sent.to == ["dora@example.com"]


def test_one_address_asking_past_its_limit_gets_429_and_mails_nobody(mail_on, dora):
    """The attack: one client mails a reset link again and again, to one user or many."""
    emails = ["dora@example.com", "x1@example.com", "x2@example.com", "x3@example.com"]

    statuses = [ask(email, "203.0.113.41") for email in emails]

    assert statuses == [302, 302, 302, 429]
    assert ask("x4@example.com", "203.0.113.42") == 302  # another address is not held back
    assert len(mail.outbox) == 1  # only dora has an account


def test_one_account_asked_for_past_its_limit_from_many_addresses_gets_no_more_mail(mail_on, dora):
    """The attack: a mail bomb from many addresses, all at one user."""
    statuses = [ask("Dora@Example.com", f"198.51.100.{n}") for n in range(1, 6)]

    assert statuses == [302, 302, 429, 429, 429]
    assert len(mail.outbox) == 2
