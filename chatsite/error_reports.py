"""What debug pages and error reports may show of settings and variables.

Django hides settings whose names look secret (`SECRET_KEY`,
`DATABASES[...]["PASSWORD"]`), but a password inside a URL (`DATABASE_URL`,
`REDIS_URL`, the channel layer's Redis address) would be shown in full.
"""

from __future__ import annotations

import re
from typing import Any

from django.views.debug import SafeExceptionReporterFilter

# scheme://user:password@ or scheme://:password@ (Redis)
URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^/:@\s]*:)[^@\s]*(?=@)")


def mask_url_passwords(text: str) -> str:
    """`text` with the password of every URL in it replaced by stars."""
    return URL_PASSWORD.sub(r"\g<head>" + SafeExceptionReporterFilter.cleansed_substitute, text)


class SecretsHidingFilter(SafeExceptionReporterFilter):
    """Django's filter, plus URL passwords masked in settings, request meta and variables."""

    def cleanse_setting(self, key: Any, value: Any) -> Any:
        cleansed = super().cleanse_setting(key, value)
        if isinstance(cleansed, str):
            # str() too: a lazy object (django-axes' settings) passes for a
            # str here, and the regex needs the real one.
            return mask_url_passwords(str(cleansed))
        return cleansed

    def get_traceback_frame_variables(self, request: Any, tb_frame: Any) -> Any:
        variables = super().get_traceback_frame_variables(request, tb_frame)
        return [(name, self.cleanse_setting(name, value)) for name, value in variables]
