"""The settings as mypy's Django plugin reads them: the real ones, with DEBUG on.

Type checking serves nothing, so it needs no SECRET_KEY; the real settings
refuse to load without one when DEBUG is off.
"""

import os

os.environ.setdefault("DEBUG", "true")

from chatsite.settings import *  # noqa: F403
