"""HTTP pages: the chat page, sign-up, guest login, health."""

from __future__ import annotations

import hmac
import time
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth import login, logout
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import AuthenticationForm
from django.contrib.auth.models import User
from django.db import DatabaseError
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotFound, JsonResponse
from django.middleware.csrf import get_token
from django.shortcuts import redirect, render
from django.templatetags.static import static
from django.views.decorators.http import require_POST

from chat import metrics
from chat.accounts import (
    GuestForm,
    SignupForm,
    account_creation_allowed,
    counted,
    guest_create,
    guest_name_suggestion,
)
from chat.addresses import client_address_of_request
from chat.health import health_check
from chat.profiles import name_of, set_name
from chat.uploads import totals as uploads_totals
from chat.worker import current_worker


@login_required
def index(request: HttpRequest) -> HttpResponse:
    config = {
        "user": request.user.get_username(),
        "name": name_of(request.user),
        "maxBodyChars": settings.CHAT_MAX_BODY_CHARS,
        "loginUrl": settings.LOGIN_URL,
        # Uploads (1.2): the token `POST /uploads/` wants, and the limits the page names.
        "csrfToken": get_token(request),
        "maxUploadBytes": settings.CHAT_UPLOAD_MAX_BYTES,
        "uploadQuotaBytes": settings.CHAT_UPLOAD_QUOTA_BYTES,
    }
    context = {"chat_config": config, "display_name": config["name"]}
    return render(request, "chat/index.html", context)


def classic(request: HttpRequest) -> HttpResponse:
    """The classic demo page on `/socket`: the session, or a guest user id, decides who."""
    context = {
        "username": request.user.get_username() if request.user.is_authenticated else "",
        "guest_login": settings.CHAT_GUEST_LOGIN,
    }
    return render(request, "chat/classic.html", context)


def signup(request: HttpRequest) -> HttpResponse:
    form = SignupForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        if not account_creation_allowed(client_address_of_request(request)):
            return _too_many_accounts()
        _switch_user(request, form.save())
        return redirect("index")
    return render(request, "registration/signup.html", {"form": form})


@require_POST
def guest_login(request: HttpRequest) -> HttpResponse:
    if not settings.CHAT_GUEST_LOGIN:
        return HttpResponseNotFound("Guest login is turned off.")
    # A post without `name` (an older page or client) keeps a suggestion.
    chosen = request.POST if "name" in request.POST else {"name": guest_name_suggestion()}
    form = GuestForm(chosen)
    if not form.is_valid():
        context = {
            "form": AuthenticationForm(request),
            "guest_login": True,
            "guest_form": form,
            "password_reset": password_reset_on(),
        }
        return render(request, "registration/login.html", context, status=400)
    if not account_creation_allowed(client_address_of_request(request)):
        return _too_many_accounts()
    user = guest_create()
    assert user is not None  # only a fixed suffix can be taken already
    set_name(user, form.cleaned_data["name"])
    _switch_user(request, user)
    return redirect("index")


class LoginView(auth_views.LoginView):
    """Django's login, ending the browser's previous session properly first."""

    def form_valid(self, form: Any) -> HttpResponse:
        if self.request.user.is_authenticated:
            # Closes the sockets of the session that login would replace.
            logout(self.request)
        return super().form_valid(form)

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        context = super().get_context_data(**kwargs)
        context["guest_login"] = settings.CHAT_GUEST_LOGIN
        context["guest_form"] = GuestForm(initial={"name": guest_name_suggestion()})
        context["password_reset"] = password_reset_on()
        return context


def _too_many_accounts() -> HttpResponse:
    window = settings.CHAT_ACCOUNTS_WINDOW
    response = HttpResponse(
        "Too many accounts were created from your address; try again later.",
        status=429,
        content_type="text/plain; charset=utf-8",
    )
    response["Retry-After"] = str(window - int(time.time()) % window)
    return response


def _switch_user(request: HttpRequest, user: User) -> None:
    """Log `user` in, first logging out whoever this browser was.

    `login` alone would silently flush the previous user's session, leaving
    the sockets opened with it alive; logging out closes them (chat.revocation).
    """
    if request.user.is_authenticated:
        logout(request)
    login(request, user, backend="django.contrib.auth.backends.ModelBackend")


async def healthz(request: HttpRequest) -> JsonResponse:
    checks = await health_check()
    if current_worker().stopping:
        # Closing its sockets over CHAT_RESTART_SPREAD: a balancer should
        # send nobody new here.
        checks["worker"] = "stopping"
    healthy = all(value == "ok" for value in checks.values())
    return JsonResponse(checks, status=200 if healthy else 503)


async def metrics_export(request: HttpRequest) -> HttpResponse:
    """This worker's Prometheus metrics, for a scraper that holds `CHAT_METRICS_TOKEN`.

    Not found while no token is set (the default): the numbers say how busy
    the service is and who is being refused, which is the operator's business.
    """
    token = settings.CHAT_METRICS_TOKEN
    if not token:
        return HttpResponseNotFound()
    supplied = request.headers.get("Authorization", "").encode()
    if not hmac.compare_digest(supplied, f"Bearer {token}".encode()):
        return HttpResponse(status=401, headers={"WWW-Authenticate": 'Bearer realm="metrics"'})
    health = await health_check()
    try:
        stored: tuple[int, int] | None = await sync_to_async(uploads_totals)()
    except DatabaseError:
        # The database's own line in `chat_up` says why.
        stored = None
    body = metrics.render(
        send_queue_depth=current_worker().send_queue_depth(), health=health, uploads=stored
    )
    return HttpResponse(body, content_type="text/plain; version=0.0.4; charset=utf-8")


def favicon(request: HttpRequest) -> HttpResponse:
    """/favicon.ico, which browsers ask for on pages without an icon link (the admin's)."""
    return redirect(static("chat/icon.svg"))


def password_reset_on() -> bool:
    """Whether the password reset pages exist: only with an SMTP server to mail from."""
    return bool(settings.EMAIL_HOST)


class _NeedsEmail:
    """A password reset page: 404 while no e-mail is configured (EMAIL_HOST)."""

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not password_reset_on():
            raise Http404("password reset needs e-mail (EMAIL_HOST)")
        response: HttpResponse = super().dispatch(request, *args, **kwargs)  # type: ignore[misc]
        return response


class PasswordResetView(_NeedsEmail, auth_views.PasswordResetView):
    """Django's reset request, limited per client address and per e-mail address.

    Counted only for a valid request, before anything is mailed; past
    either limit, 429 and nothing is sent, so that no one can mail-bomb a
    user (CHAT_PASSWORD_RESETS_PER_ADDRESS, CHAT_PASSWORD_RESETS_PER_ACCOUNT).
    """

    def form_valid(self, form: Any) -> HttpResponse:
        window = settings.CHAT_PASSWORD_RESET_WINDOW
        by_address = counted(
            "password-resets-address",
            client_address_of_request(self.request),
            limit=settings.CHAT_PASSWORD_RESETS_PER_ADDRESS,
            window=window,
        )
        by_account = counted(
            "password-resets-account",
            form.cleaned_data["email"].strip().lower(),
            limit=settings.CHAT_PASSWORD_RESETS_PER_ACCOUNT,
            window=window,
        )
        if not (by_address and by_account):
            response = HttpResponse(
                "Too many password resets were asked for; try again later.",
                status=429,
                content_type="text/plain; charset=utf-8",
            )
            response["Retry-After"] = str(window - int(time.time()) % window)
            return response
        return super().form_valid(form)


class PasswordResetDoneView(_NeedsEmail, auth_views.PasswordResetDoneView):
    pass


class PasswordResetConfirmView(_NeedsEmail, auth_views.PasswordResetConfirmView):
    pass


class PasswordResetCompleteView(_NeedsEmail, auth_views.PasswordResetCompleteView):
    pass
