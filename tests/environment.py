"""The environment of a test run, set before pytest-django reads the settings.

Loaded as a plugin (pyproject: `-p tests.environment`): conftest.py is read
too late for that. A fresh SECRET_KEY per run, never one committed; the
worker processes the tests start inherit it.
"""

import os
import secrets

os.environ.setdefault("SECRET_KEY", secrets.token_urlsafe(50))
# The test client and the servers the tests start speak plain HTTP.
for name in ("SECURE_SSL_REDIRECT", "SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE"):
    os.environ.setdefault(name, "false")
