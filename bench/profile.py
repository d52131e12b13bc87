"""py-spy on our worker while the W1 set-up (200 clients, one group) is under load.

`python -m bench profile --rate 150 --seconds 20` writes, under
bench/out/profile-<stamp>/, the raw collapsed stacks (`profile.txt`), a
flame graph (`profile.svg`, made from the same stacks) and `summary.md`: the
top functions by self time and by total time, and time per subsystem.

`python -m bench profile --phase connect --clients 400` profiles W5 instead:
the worker while `--clients` sockets open 200 at a time and each joins one
group (`connect.txt`), then while they all reconnect, already members
(`reconnect.txt`); `summary.md` splits each by step of a handshake and of a
join (CONNECT_STAGES).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import signal
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


# The connect and join path (W5), by step; first match in the stack wins, so
# the join's steps come before the consumer's generic receive.
CONNECT_STAGES = [
    ("join: membership rate limit (Redis)", ("spend_membership_change",)),
    ("join: group_join in the database thread (queries, commit)", ("group_join",)),
    ("join: hub membership index and joined notices", ("note_membership", "Hub.tell")),
    ("join: frame in, parse, reply", ("websocket_receive",)),
    ("notices flush (presence, joined/left)", ("Hub._flush_notices", "_publish_notices")),
    ("handshake: sockets per user/address (socket_caps.admit)", ("admit (",)),
    ("handshake: the user's groups (groups_of)", ("groups_of",)),
    ("handshake: hub attach (index, layer groups, presence)", ("Hub.attach",)),
    ("handshake: hello (greet)", ("greet",)),
    ("handshake: accept, frame writers (open_as, other)", ("open_as", "websocket_connect")),
    ("close (disconnect, detach)", ("disconnect", "Hub.detach")),
    # Every stack inside the consumer has the middleware's frame too: after them.
    ("handshake: session and user (auth middleware, database thread)", ("chat/auth.py",)),
    ("database thread, other", ("DatabaseSyncToAsync.thread_handler",)),
    # A resumed coroutine shows only its innermost frames: Redis commands whose
    # caller py-spy cannot see (presence, rate limit, layer groups) land here.
    ("Redis commands and replies, caller not visible", ("channels_redis/", "redis/")),
    (
        "handshake: HTTP upgrade, websocket frames (daphne, autobahn, twisted)",
        (
            "autobahn/",
            "twisted/web/",
            "WebRequest",
            "WebSocketProtocol",
            "WebSocketServerProtocol",
            "buildProtocol",
            "create_application",
            "AccessLogGenerator",
            "doRead",
            "doWrite",
        ),
    ),
]


# Leaves of a thread with nothing to do (the event loop's epoll, an executor
# thread waiting for work); a database driver waiting for its reply is not one.
IDLE_LEAVES = ("EpollSelector.select", "_worker (", "Condition.wait", "Event.wait")


def _stage(stack: str, stages: list[tuple[str, tuple[str, ...]]] | None = None) -> str:
    for label, markers in stages or STAGES:
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


def summarise(
    raw: Path, top: int = 25, stages_list: list[tuple[str, tuple[str, ...]]] | None = None
) -> str:
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
        if stages_list is not None and leaf.startswith(IDLE_LEAVES):
            stages["idle: event loop in epoll, threads waiting for work"] += count
        else:
            stages[_stage(stack, stages_list)] += count
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


async def _record(pid: int, raw: Path, gil: bool) -> asyncio.subprocess.Process:
    """py-spy recording `pid` until it gets SIGINT (then it writes `raw`)."""
    spy = await asyncio.create_subprocess_exec(
        *[
            _py_spy(),
            "record",
            "--pid",
            str(pid),
            "--format",
            "raw",
            "--threads",
            "--rate",
            "250",
            "--output",
            str(raw),
            "--nonblocking",
            *(["--gil"] if gil else []),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    await asyncio.sleep(1.0)
    return spy


async def _stop_recording(spy: asyncio.subprocess.Process) -> None:
    spy.send_signal(signal.SIGINT)
    _, err = await spy.communicate()
    if spy.returncode not in (0, -signal.SIGINT):
        raise SystemExit(f"py-spy failed: {err.decode(errors='replace')}")


async def _drive_connect(args: argparse.Namespace, out_dir: Path) -> None:
    """W5 under py-spy: connect and join, then reconnect, one recording each."""
    run_id = "profc" + datetime.now(UTC).strftime("%H%M%S")
    deployment = servers.start_ours(
        workers=1, run_id=run_id, db=args.db, server=args.server, variant=args.variant
    )
    mode = "--gil (CPU only)" if args.gil else "all threads, waiting on locks and I/O included"
    parts = [
        f"# Profile of our worker ({args.server}, {args.db}) opening and joining\n\n"
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {args.clients} sockets, 200 at a time "
        f"(W5); py-spy 250 Hz, --nonblocking, {mode}.\n"
    ]
    try:
        gen = LoadGen(deployment, kind="ours", redis_pid=servers.redis_server_pid())
        cookies = await gen.login(args.clients)
        # Warm-up (not recorded): the hub, the group, connections, code paths.
        warm = await gen.login(20)
        await gen.open_joining(warm, batch=20, group="bench")
        await gen.close_all()
        await asyncio.sleep(1.0)
        for phase in ("connect", "reconnect"):
            raw = out_dir / f"{phase}.txt"
            spy = await _record(deployment.pids[0], raw, args.gil)
            cpu = deployment.cpu()
            result = await gen.open_joining(
                cookies, batch=200, group="bench", join=phase == "connect"
            )
            cpu = deployment.cpu() - cpu
            await asyncio.sleep(0.5)
            await _stop_recording(spy)
            line = (
                f"{phase}: {result['ok']} of {result['attempted']} in {result['seconds']:.2f} s "
                f"({result['per_second']:.0f}/s), p50 {result['ms_p50']:.0f} ms, "
                f"p99 {result['ms_p99']:.0f} ms, worker CPU {1000 * cpu / max(1, result['ok']):.2f}"
                f" ms per socket"
            )
            _log(line)
            parts.append(f"\n## {phase}\n\n{line}\n\n" + summarise(raw, 30, CONNECT_STAGES))
            await gen.settle(quiet=1.0, wait_s=60)
            await gen.close_all()
            await asyncio.sleep(2.0)
        text = "".join(parts)
        (out_dir / "summary.md").write_text(text)
        print(text)
    finally:
        deployment.stop()


def profile(args: argparse.Namespace) -> None:
    raise_fd_limit()
    _use_uvloop()
    name = "profile-" + datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    name += f"-{args.server}-{args.db}{'-' + args.variant if args.variant else ''}"
    name += "-gil" if args.gil else ""
    name += "-connect" if args.phase == "connect" else ""
    out_dir = servers.OUT / name
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    drive = _drive_connect if args.phase == "connect" else _drive
    asyncio.run(drive(args, out_dir))
    _log(f"profile in {out_dir} ({time.perf_counter() - started:.0f}s)")
