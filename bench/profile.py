"""py-spy on our worker while the W1 set-up (200 clients, one group) is under load.

`python -m bench profile --rate 150 --seconds 20` writes, under
bench/out/profile-<stamp>/, the raw collapsed stacks (`profile.txt`), a
flame graph (`profile.svg`, made from the same stacks) and `summary.md`: the
top functions by self time and by total time, and time per subsystem.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from bench import servers
from bench.loadgen import LoadGen
from bench.run import _log, _use_uvloop, raise_fd_limit

_LINE = re.compile(r":\d+\)$")

# Where a sample's innermost frame lives, by file path, checked in order.
# Where a sample's innermost frame lives, by the start of its (shortened) path.
SUBSYSTEMS = [
    ("chat/ (our code)", ("chat/",)),
    ("autobahn (websocket frames)", ("autobahn/",)),
    ("twisted (reactor, TCP writes)", ("twisted/",)),
    ("daphne", ("daphne/",)),
    ("uvicorn", ("uvicorn/",)),
    ("websockets", ("websockets/",)),
    ("channels_redis (layer)", ("channels_redis/",)),
    ("channels", ("channels/",)),
    ("asgiref (sync_to_async)", ("asgiref/",)),
    ("redis-py", ("redis/",)),
    ("msgpack", ("msgpack/",)),
    ("django ORM / db", ("django/db/",)),
    ("django (other)", ("django/",)),
    ("psycopg (PostgreSQL driver)", ("psycopg/",)),
    ("sqlite3", ("sqlite3/",)),
    ("selectors (idle in epoll)", ("selectors.py",)),
    ("asyncio", ("asyncio/",)),
    ("threading / executor", ("threading.py", "concurrent/", "queue.py")),
    ("logging", ("logging/",)),
]

# Frames every sample of a thread has: left out of the "total" table.
SCAFFOLDING = (
    "_run_module_as_main",
    "_run_code",
    "<module>",
    "CommandLineInterface",
    "Server.run",
    "AsyncioSelectorReactor.run",
    "BaseEventLoop.run_forever",
    "BaseEventLoop._run_once",
    "Thread._bootstrap",
    "Thread.run",
    "_worker",
    "_WorkItem.run",
    "Handle._run",
    "Runner.run",
    "run (asyncio/runners.py)",
    "Server.serve",
    "main (uvicorn",
)


# A sample belongs to the first stage whose marker is in its stack. With
# --nonblocking some stacks are torn (their outer frames missing), so the
# write path is also recognised by its inner frames.
STAGES = [
    (
        "frames out: LayerHandlers.dispatch -> consumer.send -> ASGI server -> frame -> socket",
        (
            "LayerHandlers.dispatch",
            "Hub._targets",
            "ChatSocket.write",
            "InstanceSessionWrapper.send",
            "handle_reply",
            "serverSend",
            "sendFrame",
            "sendMessage",
            "asgi_send",
            "write_frame",
            "Frame.write",
            "WebSocketCommonProtocol._drain",
            "addWriter",
            "add_writer",
        ),
    ),
    ("notices flush (presence, joined/left)", ("Hub._flush_notices",)),
    ("database (executor thread: ORM, driver, connect)", ("DatabaseSyncToAsync.thread_handler",)),
    (
        "frame in: receive, parse, rate limit, publish",
        ("ChatConsumer.receive", "websocket_receive"),
    ),
    ("socket writes flushed by the reactor", ("doWrite", "_readOrWrite")),
    ("channel layer receive / Redis replies", ("channels_redis/", "redis/")),
    ("socket reads, websocket parsing", ("dataReceived", "data_received", "read_frame")),
]


def _stage(stack: str) -> str:
    for label, markers in STAGES:
        if any(marker in stack for marker in markers):
            return label
    return "event loop, other"


def _frame_name(frame: str) -> str:
    """`func (/long/path/site-packages/pkg/mod.py:123)` -> `func (pkg/mod.py)`."""
    frame = _LINE.sub(")", frame)
    name, sep, where = frame.partition(" (")
    if not sep:
        return frame
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in where:
            where = where.split(marker, 1)[1]
            break
    return f"{name} ({where}"


def _thread_label(frame: str) -> str:
    name = frame.split("): ", 1)[1] if "): " in frame else frame
    if "ThreadPoolExecutor" in name or "sync" in name.lower():
        return "executor thread (sync_to_async, database)"
    if name.startswith("0x") or "MainThread" in name or not name:
        return "main thread (event loop)"
    return name


def summarise(raw: Path, top: int = 25) -> str:
    self_time: Counter[str] = Counter()
    total_time: Counter[str] = Counter()
    subsystem: Counter[str] = Counter()
    thread_time: Counter[str] = Counter()
    stages: Counter[str] = Counter()
    samples = 0
    idle = 0
    for line in raw.read_text().splitlines():
        if not line.strip():
            continue
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue  # a stack py-spy cut short (a frame's text ran over the line)
        count = int(count_text)
        frames = stack.split(";")
        samples += count
        if frames and frames[0].startswith("thread"):
            thread_time[_thread_label(frames[0])] += count
        real = [f for f in frames[1:] if "(" in f and not f.startswith("process")]
        if not real:
            continue
        leaf = _frame_name(real[-1])
        if any(idle_name in leaf for idle_name in ("select (", "poll (", "epoll", "wait (")):
            idle += count
        self_time[leaf] += count
        for name in {_frame_name(f) for f in real}:
            total_time[name] += count
        where = "other"
        stages[_stage(stack)] += count
        path = leaf.partition(" (")[2]
        for label, markers in SUBSYSTEMS:
            if path.startswith(markers):
                where = label
                break
        subsystem[where] += count
    busy = max(1, samples)
    out = [
        f"Samples: {samples} (py-spy, all threads; idle-looking leaf frames: "
        f"{100 * idle / busy:.0f}%).",
        "",
        "Time by stage (first match in the stack):",
        "",
        "| stage | share |",
        "|---|---|",
        *[f"| {label} | {100 * count / busy:.1f}% |" for label, count in stages.most_common()],
        "",
        "Time by subsystem of the innermost frame:",
        "",
        "| subsystem | share |",
        "|---|---|",
    ]
    for label, count in subsystem.most_common():
        out.append(f"| {label} | {100 * count / busy:.1f}% |")
    out += ["", "Samples by thread:", "", "| thread | share |", "|---|---|"]
    for label, count in thread_time.most_common():
        out.append(f"| {label} | {100 * count / busy:.1f}% |")
    out += ["", f"Top {top} functions by self time:", "", "| function | self |", "|---|---|"]
    for name, count in self_time.most_common(top):
        out.append(f"| `{name}` | {100 * count / busy:.1f}% |")
    out += ["", f"Top {top} functions by total time:", "", "| function | total |", "|---|---|"]
    interesting = [(n, c) for n, c in total_time.most_common() if not n.startswith(SCAFFOLDING)]
    for name, count in interesting[:top]:
        out.append(f"| `{name}` | {100 * count / busy:.1f}% |")
    return "\n".join(out) + "\n"


def _py_spy() -> str:
    candidate = Path(sys.executable).parent / "py-spy"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("py-spy")
    if not found:
        raise SystemExit("py-spy is missing: make install-bench")
    return found


async def _drive(args: argparse.Namespace, out_dir: Path) -> None:
    run_id = "prof" + datetime.now(UTC).strftime("%H%M%S")
    deployment = servers.start_ours(
        workers=1, run_id=run_id, db=args.db, server=args.server, variant=args.variant
    )
    try:
        gen = LoadGen(deployment, kind="ours", redis_pid=servers.redis_server_pid())
        cookies = await gen.login(args.clients)
        await gen.open(cookies)
        await gen.join_all("bench")
        await gen.settle(quiet=1.0, wait_s=60)
        await gen.step(10, 1.0)
        await gen.settle(quiet=0.5, wait_s=30)
        raw = out_dir / "profile.txt"
        spy = await asyncio.create_subprocess_exec(
            *[
                _py_spy(),
                "record",
                "--pid",
                str(deployment.pids[0]),
                "--format",
                "raw",
                "--threads",
                "--rate",
                "250",
                "--duration",
                str(int(args.seconds)),
                "--output",
                str(raw),
                "--nonblocking",
                *(["--gil"] if args.gil else []),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        await asyncio.sleep(1.0)
        step = await gen.step(args.rate, args.seconds - 2, senders=10, drain_timeout=10)
        _log(f"profile step: {step.summary()}")
        _, spy_err = await spy.communicate()
        if spy.returncode != 0:
            raise SystemExit(f"py-spy failed: {spy_err.decode(errors='replace')}")
        summary = summarise(raw)
        mode = (
            "--gil: only the thread holding the GIL is sampled, i.e. CPU"
            if args.gil
            else "all threads, waiting included"
        )
        head = (
            f"# Profile of our worker ({args.server}, {args.db}"
            f"{', variant ' + args.variant if args.variant else ''}) under W1 load\n\n"
            f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {args.clients} clients in one group, "
            f"{args.rate:.0f} messages/s for {args.seconds - 2:.0f} s of a "
            f"{args.seconds:.0f} s py-spy record (250 Hz, --nonblocking, {mode}).\n\n"
            f"Step: {step.summary()}\n\n"
        )
        (out_dir / "summary.md").write_text(head + summary)
        print(head + summary)
        await gen.close_all()
    finally:
        deployment.stop()


def profile(args: argparse.Namespace) -> None:
    raise_fd_limit()
    _use_uvloop()
    name = "profile-" + datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    name += f"-{args.server}-{args.db}{'-' + args.variant if args.variant else ''}"
    name += "-gil" if args.gil else ""
    out_dir = servers.OUT / name
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    asyncio.run(_drive(args, out_dir))
    _log(f"profile in {out_dir} ({time.perf_counter() - started:.0f}s)")
