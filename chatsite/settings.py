"""Settings for the chat server.

Everything a deployment changes comes from an environment variable with an
embedded default, so `python manage.py runserver` works on a fresh machine
(SQLite, in-memory channel layer) and production sets `DATABASE_URL`,
`REDIS_URL`, `SECRET_KEY`, `ALLOWED_HOSTS`. A malformed value stops start-up
with a message naming the variable instead of misbehaving later.
"""

import ipaddress
import logging
import os
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dj_database_url
from csp.constants import NONE, SELF
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str) -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ImproperlyConfigured(f"{name}={raw!r} is not a boolean (use true/false)")


def env_int(name: str, default: int, *, minimum: int = 0) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise ImproperlyConfigured(f"{name}={raw!r} must be at least {minimum}")
    return value


def env_float(name: str, default: float, *, minimum: float = 0.0) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a number") from None
    if not value >= minimum:  # also rejects NaN
        raise ImproperlyConfigured(f"{name}={raw!r} must be at least {minimum}")
    return value


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


# Off unless asked for: `make run` turns it on for development.
DEBUG = env_bool("DEBUG", False)
DEVELOPMENT_SECRET_KEY = "insecure-local-development-key-do-not-deploy"
MAKE_A_SECRET_KEY = (
    "make one with: python3 -c 'import secrets; print(secrets.token_urlsafe(50))' "
    "and keep it secret (sessions and password resets are signed with it)"
)
SECRET_KEY = env_str("SECRET_KEY", "")
if not SECRET_KEY and DEBUG:
    SECRET_KEY = DEVELOPMENT_SECRET_KEY
elif not DEBUG:
    if not SECRET_KEY or SECRET_KEY == DEVELOPMENT_SECRET_KEY:
        raise ImproperlyConfigured(f"SECRET_KEY must be set when DEBUG is off: {MAKE_A_SECRET_KEY}")
    # Django's own bar for a strong key (check --deploy, security.W009).
    if len(SECRET_KEY) < 50 or len(set(SECRET_KEY)) < 5 or SECRET_KEY.startswith("django-insecure"):
        raise ImproperlyConfigured(
            "SECRET_KEY is too weak (it needs 50 or more characters, 5 or more of them "
            f"different): {MAKE_A_SECRET_KEY}"
        )

# HTTPS. Each variable sets the Django setting of the same name; the defaults
# are production's (DEBUG off) and plain HTTP's (DEBUG on). A test or a trusted
# local network runs over plain HTTP by setting the first three to false.
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", not DEBUG)
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", not DEBUG)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", not DEBUG)
# Sent only over HTTPS; a year once a browser has seen the site over it.
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0 if DEBUG else 365 * 24 * 3600)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
# "HEADER,value", e.g. HTTP_X_FORWARDED_PROTO,https behind a TLS proxy that
# sets that header (deploy/nginx.conf does). Unset by default: without a
# proxy that overwrites it, a client could claim HTTPS itself.
_proxy_ssl_header = env_list("SECURE_PROXY_SSL_HEADER", [])
if _proxy_ssl_header and len(_proxy_ssl_header) != 2:
    raise ImproperlyConfigured(
        "SECURE_PROXY_SSL_HEADER must be 'HEADER,value', e.g. HTTP_X_FORWARDED_PROTO,https"
    )
SECURE_PROXY_SSL_HEADER = (
    (_proxy_ssl_header[0], _proxy_ssl_header[1]) if _proxy_ssl_header else None
)
# Debug pages and error reports show settings and variables with the
# password of every URL (DATABASE_URL, REDIS_URL, CHANNEL_LAYERS) masked.
DEFAULT_EXCEPTION_REPORTER_FILTER = "chatsite.error_reports.SecretsHidingFilter"

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    # daphne first, so `manage.py runserver` serves the ASGI app (websockets included).
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    # ServeStatic's configuration checks (without it, every start warns they are off).
    "servestatic",
    "channels",
    "csp",
    # Failed-login throttle (CHAT_LOGIN_FAILURES), on every login form.
    "axes",
    "chat",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # /static/ from the server itself (natively async): from the apps with
    # DEBUG on, from STATIC_ROOT otherwise. A proxy in front stays optional.
    "servestatic.middleware.ServeStaticMiddleware",
    # Content-Security-Policy on every response (CONTENT_SECURITY_POLICY below).
    "chatsite.content_security.SiteCSPMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: turns a locked-out login into its 429 page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "chatsite.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = "chatsite.wsgi.application"
ASGI_APPLICATION = "chatsite.asgi.application"

DATABASE_URL = env_str("DATABASE_URL", f"sqlite:///{BASE_DIR / 'db.sqlite3'}")
try:
    DATABASES = {
        "default": dj_database_url.parse(
            DATABASE_URL,
            # Every message and connect runs queries; opening a connection for
            # each one cost more than the queries (bench/RESULTS.md, profile).
            conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 600),
            conn_health_checks=True,
        )
    }
except Exception as exc:
    raise ImproperlyConfigured(
        f"DATABASE_URL={DATABASE_URL!r} is not a database URL: {exc}"
    ) from None
DATABASE_POOL_SIZE = env_int("DATABASE_POOL_SIZE", 10)
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql" and DATABASE_POOL_SIZE:
    # Django runs each HTTP request's queries on a thread of its own under
    # ASGI, and persistent connections stay open per thread: one burst of 200
    # logins to one worker took more connections than PostgreSQL allows (100)
    # and the rest answered 500. A pool bounds what each worker holds; a
    # request waits for a free connection instead. Pooled connections are
    # reused, so nothing reconnects per query either.
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = False
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": 1,
        "max_size": DATABASE_POOL_SIZE,
        "timeout": env_float("DATABASE_POOL_TIMEOUT", 10.0, minimum=0.1),
    }
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Several processes (daphne workers, tests) share one SQLite file: wait for
    # the write lock instead of failing, and take it at BEGIN so that two
    # transactions never deadlock upgrading a read lock.
    DATABASES["default"]["OPTIONS"] = {"timeout": 20, "transaction_mode": "IMMEDIATE"}
    # Tests use a file too: an in-memory database cannot be shared by the
    # threads and worker processes that the tests start. One per test run, so
    # that two runs on one machine do not destroy each other's database.
    DATABASES["default"]["TEST"] = {"NAME": str(BASE_DIR / f".test-db-{os.getpid()}.sqlite3")}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env_str("REDIS_URL", "")
if REDIS_URL and urlsplit(REDIS_URL).scheme not in ("redis", "rediss", "unix"):
    raise ImproperlyConfigured(
        f"REDIS_URL={REDIS_URL!r} must start with redis://, rediss:// or unix://"
    )
# Keys of this deployment in Redis start with this prefix, so that several
# deployments (or test runs) can share one Redis.
REDIS_PREFIX = env_str("REDIS_PREFIX", "chat")

# Seconds a worker may go without a heartbeat before its connections are
# considered dead and its users are reported offline.
CHAT_PRESENCE_TIMEOUT = env_float("CHAT_PRESENCE_TIMEOUT", 30.0, minimum=1.0)
# Seconds over which a stopping worker (SIGTERM) closes its sockets, in
# slices, so that its clients reconnect to the others at a steady rate
# instead of all at once; 0 closes them all at once. The process manager's
# stop timeout must exceed it by a few seconds (README, "Restarts").
CHAT_RESTART_SPREAD = env_float("CHAT_RESTART_SPREAD", 10.0)

if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                # redis-py's default socket timeout (5 s) equals channels_redis's
                # blocking-pop timeout (5 s): an idle receive would then often
                # fail as a timeout, which the hub must treat as an outage.
                "hosts": [
                    {"address": REDIS_URL, "socket_timeout": 15, "socket_connect_timeout": 5}
                ],
                "prefix": f"{REDIS_PREFIX}:layer:",
                # Workers refresh their group memberships every few seconds, so
                # a killed worker's channel drops out of every group quickly
                # instead of lingering for channels_redis's default day.
                "group_expiry": max(int(CHAT_PRESENCE_TIMEOUT * 2), 10),
                # One channel per worker process carries all of its traffic, so
                # it needs far more room than a per-socket channel.
                "channel_capacity": {"chatworker.*": 100_000},
                "expiry": 60,
            },
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# Every page (chat, classic, login and sign-up, admin): scripts, styles,
# images and connections from the site itself only (the socket's ws/wss URL
# is added per request by SiteCSPMiddleware), no inline script or style, no
# plugins, no framing, forms posted only to the site.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [NONE],
        "script-src": [SELF],
        "style-src": [SELF],
        "img-src": [SELF, "data:"],
        "font-src": [SELF],
        "connect-src": [SELF],
        "manifest-src": [SELF],
        "form-action": [SELF],
        "base-uri": [NONE],
        "object-src": [NONE],
        "frame-ancestors": [NONE],
    }
}

LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/accounts/login/"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
# Where `collectstatic` puts files for the proxy to serve (deploy/nginx.conf).
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(BASE_DIR / "staticfiles")))
STORAGES: dict[str, dict[str, Any]] = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    # collectstatic writes each file under a name with its content's hash, and
    # gzip and Brotli variants beside it, so that browsers may cache it for
    # good (ServeStatic sends a far-future max-age for hashed names).
    "staticfiles": {"BACKEND": "servestatic.storage.CompressedManifestStaticFilesStorage"},
}

# One line per event: "text" (the default) or "json" (one object per line).
CHAT_LOG_FORMAT = env_str("CHAT_LOG_FORMAT", "text")
if CHAT_LOG_FORMAT not in ("text", "json"):
    raise ImproperlyConfigured(f"CHAT_LOG_FORMAT must be text or json, not {CHAT_LOG_FORMAT!r}")
if CHAT_LOG_FORMAT == "json":
    # Python's warnings as log lines, not text on stderr (Django's setup may warn).
    logging.captureWarnings(True)
# Every logger writes through the one handler, in that format: the root's
# replaces daphne's own (`logging.basicConfig`, its format), and Django's
# loggers lose the handlers of its default config and propagate to it. Lines
# logged by a socket's consumer carry its connection id (chat.logs).
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "text": {"()": "chat.logs.OneLineFormatter"},
        "json": {"()": "chat.logs.JsonFormatter"},
    },
    "filters": {"connection": {"()": "chat.logs.ConnectionFilter"}},
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": CHAT_LOG_FORMAT,
            "filters": ["connection"],
        }
    },
    "root": {"handlers": ["console"], "level": "INFO"},
    "loggers": {
        "chat": {"level": env_str("CHAT_LOG_LEVEL", "INFO")},
        "django": {"handlers": [], "level": "INFO"},
        "django.server": {"handlers": [], "level": "INFO", "propagate": True},
    },
}

# Limits of the chat protocol (docs/protocol.md). Each has an environment
# override of the same name; the README lists them.
CHAT_MAX_FRAME_BYTES = env_int("CHAT_MAX_FRAME_BYTES", 64 * 1024, minimum=1024)
CHAT_MAX_BODY_CHARS = env_int("CHAT_MAX_BODY_CHARS", 4000, minimum=1)
# Token bucket per user, shared by all workers when Redis is configured.
CHAT_RATE_BURST = env_int("CHAT_RATE_BURST", 20, minimum=1)
CHAT_RATE_PER_SECOND = env_float("CHAT_RATE_PER_SECOND", 5.0, minimum=0.001)
# Errors a connection may cause in one minute before it is closed with 1008.
CHAT_MAX_ERRORS_PER_MINUTE = env_int("CHAT_MAX_ERRORS_PER_MINUTE", 50, minimum=1)
# Presence and joined/left notices are held this long so that a burst of them
# reaches each socket as one batch frame (protocol: at most one second).
CHAT_NOTICE_DELAY = env_float("CHAT_NOTICE_DELAY", 0.25, minimum=0.0)
if CHAT_NOTICE_DELAY > 1.0:
    raise ImproperlyConfigured("CHAT_NOTICE_DELAY must be at most 1 second (docs/protocol.md)")
CHAT_GUEST_LOGIN = env_bool("CHAT_GUEST_LOGIN", True)
# Bytes a socket may have waiting unread beyond the transport's own buffer
# (64 KiB) before it is closed with 1013 so that its client reconnects and
# syncs: one client that stops reading must not grow the worker's memory.
CHAT_MAX_BUFFERED_BYTES = env_int("CHAT_MAX_BUFFERED_BYTES", 1024 * 1024, minimum=1024)
# Bytes of JSON one reply frame may hold: `sync` and `history` stop early and
# say `more`. Replies also keep within CHAT_MAX_BUFFERED_BYTES, so that one
# reply cannot be more than a socket may have waiting unread.
CHAT_MAX_REPLY_BYTES = env_int("CHAT_MAX_REPLY_BYTES", 512 * 1024, minimum=64 * 1024)

# Proxies (addresses or networks, comma-separated) trusted to add the client's
# address in X-Forwarded-For; every other peer is the client itself
# (chat.addresses). deploy/nginx.conf runs on the workers' host: 127.0.0.1.
CHAT_TRUSTED_PROXIES = env_list("CHAT_TRUSTED_PROXIES", [])
for _proxy in CHAT_TRUSTED_PROXIES:
    try:
        ipaddress.ip_network(_proxy, strict=False)
    except ValueError:
        raise ImproperlyConfigured(
            f"CHAT_TRUSTED_PROXIES: {_proxy!r} is not an address or network"
        ) from None
# Bits of an IPv6 client address that the per-address limits (accounts,
# login failures, sockets) count by: a client is usually given a whole /64.
CHAT_IPV6_PREFIX = env_int("CHAT_IPV6_PREFIX", 64, minimum=1)
if CHAT_IPV6_PREFIX > 128:
    raise ImproperlyConfigured("CHAT_IPV6_PREFIX must be at most 128")
# Accounts (guests, both ways, and sign-ups) one client address may create per
# window of CHAT_ACCOUNTS_WINDOW seconds; 0 turns the limit off.
CHAT_ACCOUNTS_PER_ADDRESS = env_int("CHAT_ACCOUNTS_PER_ADDRESS", 10)
CHAT_ACCOUNTS_WINDOW = env_int("CHAT_ACCOUNTS_WINDOW", 3600)
# E-mail, for password reset only: the reset pages exist only when EMAIL_HOST
# names an SMTP server (without one each request failed with a traceback).
EMAIL_HOST = env_str("EMAIL_HOST", "")
EMAIL_PORT = env_int("EMAIL_PORT", 587, minimum=1)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", True)
EMAIL_TIMEOUT = 10
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "webmaster@localhost")
# Reset requests one client address, and one e-mail address (an account),
# may make per window of CHAT_PASSWORD_RESET_WINDOW seconds; past either the
# request is answered 429 and nothing is mailed. 0 turns each off.
CHAT_PASSWORD_RESETS_PER_ADDRESS = env_int("CHAT_PASSWORD_RESETS_PER_ADDRESS", 5)
CHAT_PASSWORD_RESETS_PER_ACCOUNT = env_int("CHAT_PASSWORD_RESETS_PER_ACCOUNT", 3)
CHAT_PASSWORD_RESET_WINDOW = env_int("CHAT_PASSWORD_RESET_WINDOW", 3600)
# Bytes of received frames that may wait for a socket's commands to be handled
# before the server stops reading that socket (its client's sends then wait in
# TCP) until they are: a client sending faster than it is served cannot grow
# the worker's memory. 0 turns the bound off.
CHAT_MAX_INCOMING_BYTES = env_int("CHAT_MAX_INCOMING_BYTES", 256 * 1024)
# Seconds any one database statement of the server may take (chat.database):
# past it the command gets `unavailable` and nothing is stored. 0: no limit.
CHAT_DATABASE_TIMEOUT = env_float("CHAT_DATABASE_TIMEOUT", 5.0)
# Open sockets per user (all workers together) and per client address (each
# worker); past either, a new socket is closed with 4429. 0 turns each off.
CHAT_SOCKETS_PER_USER = env_int("CHAT_SOCKETS_PER_USER", 20)
CHAT_SOCKETS_PER_ADDRESS = env_int("CHAT_SOCKETS_PER_ADDRESS", 200)

# Failed logins allowed per username and, separately, per client address
# before either is locked out for CHAT_LOGIN_COOLOFF seconds (HTTP 429), on
# /accounts/login/ and /admin/login/ alike; 0 turns the throttle off.
# django-axes counts them in the database, so all workers share the counts.
CHAT_LOGIN_FAILURES = env_int("CHAT_LOGIN_FAILURES", 10)
CHAT_LOGIN_COOLOFF = env_int("CHAT_LOGIN_COOLOFF", 900, minimum=1)
AUTHENTICATION_BACKENDS = [
    # Refuses a locked-out login before any password is checked; logs nobody in.
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_ENABLED = CHAT_LOGIN_FAILURES > 0
AXES_FAILURE_LIMIT = max(CHAT_LOGIN_FAILURES, 1)
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
AXES_COOLOFF_TIME = timedelta(seconds=CHAT_LOGIN_COOLOFF)
AXES_RESET_ON_SUCCESS = True
# The address the other per-address limits count (chat.addresses).
AXES_CLIENT_IP_CALLABLE = "chat.addresses.client_ip_of_request"
AXES_HTTP_RESPONSE_CODE = 429
# No "AXES: BEGIN" banner on every manage.py command; lockouts are still logged
# (by the lockout parameters, username and address).
AXES_VERBOSE = False
# Guests that have not connected for this many days are removed by
# `manage.py removeguests` (run it daily); what they wrote stays readable.
CHAT_GUEST_RETENTION_DAYS = env_int("CHAT_GUEST_RETENTION_DAYS", 30, minimum=1)
# Prometheus metrics of each worker at /metrics, for a scraper sending
# `Authorization: Bearer <token>`; empty (the default) turns the endpoint off.
CHAT_METRICS_TOKEN = env_str("CHAT_METRICS_TOKEN", "")
# Joins and leaves a user may make per minute (each tells the group's online
# members), a budget of its own beside the command budget; 0 turns it off.
CHAT_MEMBERSHIP_CHANGES_PER_MINUTE = env_int("CHAT_MEMBERSHIP_CHANGES_PER_MINUTE", 10)
# Protocol 1.2: seconds after its `ts` that a message's author may edit it; 0: any time.
CHAT_EDIT_WINDOW = env_int("CHAT_EDIT_WINDOW", 3600, minimum=0)
# Groups one user may be a member of: every socket of theirs subscribes to
# each, and `hello` lists them. Past it a join is `too_many_groups`; 0: no cap.
CHAT_GROUPS_PER_USER = env_int("CHAT_GROUPS_PER_USER", 1000)

# Uploaded files (issue 28): through Django's storage API, on the local disk
# under MEDIA_ROOT (beside the SQLite database by default). MEDIA_URL is
# never served as such: every download goes through the permission check.
MEDIA_ROOT = Path(env_str("MEDIA_ROOT", str(BASE_DIR / "media")))
# Largest file one upload may carry (the proxy's body limit must match: README).
CHAT_UPLOAD_MAX_BYTES = env_int("CHAT_UPLOAD_MAX_BYTES", 25 * 1024 * 1024, minimum=1)
# Bytes one user's stored files may take together.
CHAT_UPLOAD_QUOTA_BYTES = env_int("CHAT_UPLOAD_QUOTA_BYTES", 1024 * 1024 * 1024, minimum=1)
# Uploads one user may start per minute (0: no limit).
CHAT_UPLOADS_PER_MINUTE = env_int("CHAT_UPLOADS_PER_MINUTE", 20)
# Uploads on S3-compatible object storage instead, shared by every machine:
# the bucket, and the endpoint for a service other than AWS. Credentials and
# region come from boto3's own environment (AWS_ACCESS_KEY_ID,
# AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION). Downloads then redirect to a
# presigned URL valid for 60 s, after the same permission check.
CHAT_UPLOADS_S3_BUCKET = env_str("CHAT_UPLOADS_S3_BUCKET", "")
CHAT_UPLOADS_S3_ENDPOINT = env_str("CHAT_UPLOADS_S3_ENDPOINT", "")


def uploads_s3_storage(bucket: str, endpoint: str) -> dict[str, Any]:
    """The default storage on S3: private objects, presigned (SigV4) URLs of 60 s."""
    return {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": bucket,
            "endpoint_url": endpoint or None,
            "signature_version": "s3v4",
            "querystring_auth": True,
            "querystring_expire": 60,
            "default_acl": None,
            "file_overwrite": False,
        },
    }


if CHAT_UPLOADS_S3_BUCKET:
    STORAGES["default"] = uploads_s3_storage(CHAT_UPLOADS_S3_BUCKET, CHAT_UPLOADS_S3_ENDPOINT)
