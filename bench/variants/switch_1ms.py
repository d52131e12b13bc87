"""chatsite.settings with the GIL switch interval at 1 ms instead of Python's 5.

A what-if for the light-load latency: does the event loop wait for the
database thread's GIL turn (or the other way round) long enough to show in
p99? Measured in bench/RESULTS.md (fifth session): no.
"""

import sys

from chatsite.settings import *  # noqa: F403

sys.setswitchinterval(0.001)
