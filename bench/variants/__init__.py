"""What-if settings for our server, to measure a recommended change before making it.

Each module imports chatsite.settings unchanged and overrides one thing; the
benchmark selects one with `--variant NAME` (DJANGO_SETTINGS_MODULE). They are
experiments for bench/RESULTS.md, not configurations the project ships.
"""

VARIANTS = {
    "persistent-db": "bench.variants.persistent_db",
    "switch_1ms": "bench.variants.switch_1ms",
}
