"""The search workload (issue 27): how long `search` takes over a large PostgreSQL store.

`python -m bench.search` migrates a throwaway PostgreSQL database, bulk-loads
it in SQL (generate_series, no Python per row): 1,000 users, 200 groups, each
user a member of 20, and 1,000,000 messages (85% in groups, 10% direct, 5% to
everyone; 5 to 15 words each, drawn with a skew from a 5,000-word vocabulary
so that some words are common and most rare, as in real text). The GIN index
is built after the load (as the migration builds it on an existing table);
the stored vectors are computed as rows go in, as for every send. Then,
in one process and without a server, it times
`chat.search.message_search` (the permission filter, the index, the page of
20, the message objects and their spans: all a `search` reply needs but the
socket) as one user in 20 groups, for three kinds of query: two words, a
`from:` alone, and a prefix (the first three letters of a word). Each kind
runs `--count` different queries after one warm-up; the table gives p50 and
p95 in milliseconds and how many results a page had on average.

`--quick` loads 20,000 messages (100 users, 40 groups) to check the harness.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import os
import random
import secrets
import subprocess
import sys
import time
from collections.abc import Callable

from bench.servers import OUT, ROOT, _create_database

VOCABULARY = 5000
# User i is in the groups from (7 i mod groups) on, as many as asked: no repeats.
_MEMBERSHIPS = """
INSERT INTO chat_membership (group_id, user_id, joined_at)
SELECT g.id, u.id, now() FROM auth_user u
CROSS JOIN generate_series(0, %s - 1) k
JOIN chat_chatgroup g ON g.name = 'g' || (1 + (substr(u.username, 2)::int * 7 + k) %% %s)
"""
# Word n of the vocabulary: letters from md5(n), 3 to 8 of them (Python: `word`).
_WORD = "translate(substr(md5(n::text), 1, 3 + n %% 6), '0123456789', 'ghijklmnop')"
# One message in 20 to everyone, one in 10 direct, the rest in groups; a body
# of 5 to 15 words, word n drawn with probability falling with n (random()^3).
_MESSAGES = f"""
INSERT INTO chat_message (kind, sender_id, recipient_id, group_id, body, created_at)
SELECT kind,
  (SELECT min(id) FROM auth_user) + (hash %% %s),
  CASE WHEN kind = 'direct' THEN (SELECT min(id) FROM auth_user) + (hash / 7 %% %s) END,
  CASE WHEN kind = 'group' THEN (SELECT min(id) FROM chat_chatgroup) + (hash / 11 %% %s) END,
  array_to_string(ARRAY(
    SELECT {_WORD} FROM (
      SELECT 1 + floor(%s * random() ^ 3)::int AS n FROM generate_series(1, 5 + m.i %% 11)
    ) w
  ), ' '),
  now() - make_interval(secs => (%s - m.i) * 30)
FROM (
  SELECT i, (hashint4(i)::bigint & 2147483647) AS hash,
    CASE WHEN i %% 20 = 0 THEN 'all' WHEN i %% 10 = 1 THEN 'direct' ELSE 'group' END AS kind
  FROM generate_series(1, %s) i
) m
"""


def word(n: int) -> str:
    """Word n of the vocabulary, as `_WORD` makes it in SQL."""
    letters = hashlib.md5(str(n).encode()).hexdigest()[: 3 + n % 6]
    return letters.translate(str.maketrans("0123456789", "ghijklmnop"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.search")
    parser.add_argument("--quick", action="store_true", help="20,000 messages, to check it runs")
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--groups", type=int, default=200)
    parser.add_argument("--count", type=int, default=100, help="timed queries per kind")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    args = parser.parse_args(argv)
    if args.quick:
        args.messages, args.users, args.groups, args.count = 20_000, 100, 40, 30

    run_id = time.strftime("search%Y%m%dT%H%M%S", time.gmtime())
    out_dir = OUT / run_id
    out_dir.mkdir(parents=True, exist_ok=True)
    database_url, cleanups = _create_database("postgres", run_id, out_dir)
    try:
        os.environ.update(DATABASE_URL=database_url, DJANGO_SETTINGS_MODULE="chatsite.settings")
        os.environ.setdefault("SECRET_KEY", secrets.token_urlsafe(50))
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, check=True
        )
        sys.path.insert(0, str(ROOT))
        import django

        django.setup()
        _load(args.messages, args.users, args.groups)
        _measure(args.count, args.users, args.messages)
    finally:
        from django.db import connections

        connections.close_all()
        if args.keep:
            print(f"kept: {database_url}")
        else:
            for cleanup in cleanups:
                cleanup()
    return 0


def _timed(label: str, run: Callable[[], None]) -> None:
    started = time.perf_counter()
    run()
    print(f"{label}: {time.perf_counter() - started:.1f} s", flush=True)


def _load(messages: int, users: int, groups: int) -> None:
    from django.db import connection

    migration = importlib.import_module("chat.migrations.0015_message_search_vector")
    per_user = min(20, groups)

    def execute(sql: str, params: list | None = None) -> None:
        with connection.cursor() as cursor:
            cursor.execute(sql, params or [])

    def people() -> None:
        execute(
            "INSERT INTO auth_user (password, is_superuser, username, first_name, last_name,"
            " email, is_staff, is_active, date_joined)"
            " SELECT '!', false, 'u' || i, '', '', '', false, true, now()"
            " FROM generate_series(1, %s) i",
            [users],
        )
        execute(
            "INSERT INTO chat_chatgroup (name, key, skeleton, created_at)"
            " SELECT 'g' || i, 'g' || i, NULL, now() FROM generate_series(1, %s) i",
            [groups],
        )
        # User i is in the `per_user` groups from (7 i mod groups) on: no repeats.
        execute(_MEMBERSHIPS, [per_user, groups])

    def bodies() -> None:
        execute("DROP INDEX IF EXISTS message_search")
        execute(_MESSAGES, [users, users, groups, VOCABULARY, messages, messages])

    def index() -> None:
        execute("SET maintenance_work_mem = '256MB'")
        execute(migration.INDEX)
        # As migration 0017 leaves it: each insert goes into the index at once.
        execute("ALTER INDEX message_search SET (fastupdate = off)")
        execute("ANALYZE")

    _timed(f"{users} users, {groups} groups, {per_user} groups each", people)
    _timed(f"{messages:,} messages", bodies)
    _timed("search index (GIN) and ANALYZE", index)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_size_pretty(pg_relation_size('message_search')),"
            " pg_size_pretty(pg_relation_size('chat_message'))"
        )
        index_size, table_size = cursor.fetchone()
    print(f"index {index_size}, messages table {table_size}")


def _measure(count: int, users: int, messages: int) -> None:
    from django.contrib.auth.models import User
    from django.db import connection

    from chat.search import message_search
    from chat.search_query import parse_query

    rng = random.Random(27)
    user = User.objects.get(username="u1")
    words = [word(n) for n in range(1, VOCABULARY + 1)]
    with connection.cursor() as cursor:
        # Two words that occur together somewhere: bodies of messages drawn at random.
        cursor.execute(
            "SELECT body FROM chat_message WHERE id IN"
            " (SELECT (SELECT min(id) FROM chat_message) + floor(random() * %s)::int"
            " FROM generate_series(1, %s))",
            [messages, count * 2],
        )
        bodies = [row[0].split() for row in cursor.fetchall()]

    def two_words() -> str:
        chosen = rng.choice(bodies)
        first, second = rng.sample(chosen, 2)
        return f"{first} {second}"

    def sender() -> str:
        return f"from:u{rng.randint(1, users)}"

    def prefix() -> str:
        return rng.choice(words[:2000])[:3]

    print(f"\nPostgreSQL, as a user in 20 groups, {count} queries per kind, page of 20")
    print("| query | example | p50 ms | p95 ms | results per page (mean) |")
    print("|---|---|---|---|---|")
    for label, make in (("two words", two_words), ("from:", sender), ("prefix", prefix)):
        queries = [make() for _ in range(count + 1)]
        samples: list[float] = []
        found = 0
        for index, q in enumerate(queries):
            started = time.perf_counter()
            results, _ = message_search(user=user, query=parse_query(q), limit=20)
            elapsed = time.perf_counter() - started
            if index:  # the first warms the connection and the caches
                samples.append(elapsed)
                found += len(results)
        ordered = sorted(samples)
        p50 = ordered[len(ordered) // 2] * 1000
        p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))] * 1000
        print(f"| {label} | `{queries[1]}` | {p50:.1f} | {p95:.1f} | {found / count:.1f} |")


if __name__ == "__main__":
    sys.exit(main())
