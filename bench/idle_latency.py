"""What the light step's store costs when the database has been idle: its floor on this machine.

`python -m bench.idle_latency` migrates a throwaway PostgreSQL database and
times, in one process and without any server, the statement that stores one
group message (`message_send_many`, a batch of one, as every send of the light
step is) and a bare `SELECT 1`, each after gaps of 100 ms (the light step's
10 messages/s), 10 ms, and back to back. The statement is the same in every
row; what changes is how long PostgreSQL and this process slept before it:
the difference is the machine waking them up (and flushing the commit to disk
after a quiet spell), which no change to the chat's code removes. The last rows
show what asynchronous commit (`synchronous_commit = off`, an acknowledged
message may be lost in a crash) would buy: measured, not used.
"""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable

from bench.servers import OUT, ROOT, _create_database

GAPS = (0.1, 0.01, 0.0)


def _row(label: str, call: Callable[[], object], gap: float, count: int) -> str:
    """One table row: `call` timed `count` times, each after `gap` seconds of quiet."""
    ordered = sorted(_timed(call, gap, count))
    p50, p90, p99 = (ordered[min(count - 1, int(count * q))] * 1000 for q in (0.5, 0.9, 0.99))
    gap_text = f"{gap * 1000:g} ms" if gap else "none"
    return f"| {label} | {gap_text} | {p50:.2f} | {p90:.2f} | {p99:.2f} |"


def _timed(call: Callable[[], object], gap: float, count: int) -> list[float]:
    samples = []
    for _ in range(count):
        if gap:
            time.sleep(gap)
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.idle_latency")
    parser.add_argument("--count", type=int, default=100, help="timed calls per row")
    args = parser.parse_args(argv)

    run_id = time.strftime("idle%Y%m%dT%H%M%S", time.gmtime())
    out_dir = OUT / run_id
    out_dir.mkdir(parents=True, exist_ok=True)
    database_url, cleanups = _create_database("postgres", run_id, out_dir)
    try:
        os.environ.update(DATABASE_URL=database_url, DJANGO_SETTINGS_MODULE="chatsite.settings")
        # DEBUG is off unless set, and then the settings need a key: a fresh one.
        os.environ.setdefault("SECRET_KEY", secrets.token_urlsafe(50))
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, check=True
        )
        _measure(args.count)
    finally:
        from django.db import connections

        connections.close_all()
        for cleanup in cleanups:
            cleanup()
    return 0


def _measure(count: int) -> None:
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.contrib.auth.models import User
    from django.db import connection

    from chat.groups import group_join
    from chat.messaging import SendRequest, message_send_many
    from chat.protocol import Address

    user = User.objects.create_user("idle-latency")
    group_join(user=user, name="bench")
    batch = [SendRequest(user, Address("group", "bench"), "b 0 0")]

    def store() -> None:
        message_send_many(batch)

    def select_one() -> None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")

    store()  # the statement is built and the connection opened before timing
    print(f"PostgreSQL, {count} calls per row, one process, no server")
    print("| call | gap before each | p50 ms | p90 ms | p99 ms |")
    print("|---|---|---|---|---|")
    rows = [("store one message", store), ("SELECT 1", select_one)]
    for label, call in rows:
        for gap in GAPS:
            print(_row(label, call, gap, count))
    with connection.cursor() as cursor:
        cursor.execute("SET synchronous_commit TO off")
    for gap in (0.1, 0.0):
        print(_row("store, asynchronous commit", store, gap, count))


if __name__ == "__main__":
    sys.exit(main())
