"""What an idle websocket costs one server worker, in memory and in opening it.

`python -m bench.socketmem` starts one worker (daphne, or `--server
uvicorn-websockets-sansio` and the other `bench.servers` names) on
`bench.socketmem_app`, which is chatsite's app with tracemalloc on. Guests log
in over HTTP, 20 warm-up sockets open, the worker takes a tracemalloc
snapshot, 300 more sockets open one at a time and each receives its `hello`,
then a second snapshot. The difference over 300 is the live Python memory one
idle socket costs, listed by file and by line; it is much quicker than W3 and
says where the bytes are. `--inspect` (daphne) adds what the WebSocketProtocol
instance dict holds, and how much of it is the options autobahn copies onto
every connection.

`--rate` opens the 300 sockets 200 at a time on the real app, tracemalloc off
(it slows everything down), and prints sockets per second, the worker's CPU per
socket and its RSS growth per socket. Those are CPU-sensitive: run them more
than once, on a quiet machine if possible.

What it cannot see: tracemalloc counts only what Python's allocators hand out
(not libuv's memory under uvloop, nor kernel socket buffers), and RSS over
300 sockets is noisy (allocator arenas, the handshakes' transient memory);
W3 (2,000 sockets, RSS) stays the figure to quote. SQLite by default, so no
database server is needed (`--db postgres` for W3's set-up); Redis db 9 under
a prefix of the run's own, deleted afterwards. Files go to
bench/out/socketmem-<stamp>/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path

from bench import servers, wsclient
from bench.httplogin import guest_logins
from bench.run import raise_fd_limit

HOST = "127.0.0.1"
WARM_UP = 20


async def open_sockets(port: int, cookies: list[str], at_once: int) -> list[wsclient.WSClient]:
    """Open a /ws/chat/ socket per cookie, `at_once` at a time; each has had its `hello`."""
    semaphore = asyncio.Semaphore(at_once)

    async def one(cookie: str) -> wsclient.WSClient:
        async with semaphore:
            hello: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

            def on_text(client: wsclient.WSClient, payload: bytes, now: int) -> None:
                if not hello.done():
                    hello.set_result(payload)

            client = await wsclient.connect(
                HOST,
                port,
                "/ws/chat/",
                origin=f"http://{HOST}:{port}",
                cookie=cookie,
                on_text=on_text,
            )
            await asyncio.wait_for(hello, 60)
            return client

    return list(await asyncio.gather(*(one(cookie) for cookie in cookies)))


def ask(pid: int, signum: int, path: Path) -> Path:
    """Signal the worker and wait for the file it writes in answer."""
    os.kill(pid, signum)
    deadline = time.monotonic() + 120
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the worker wrote no {path.name}")
        time.sleep(0.2)
    return path


def protocol_dict(pid: int, out: Path) -> dict:
    """What the worker found in a daphne WebSocketProtocol's instance dict."""
    return json.loads(ask(pid, signal.SIGUSR2, out / "protocol.json").read_text())


async def measure(args: argparse.Namespace) -> None:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    run_id = f"socketmem-{stamp}"
    out = servers.OUT / run_id
    deployment = servers.start_ours(
        workers=1,
        run_id=run_id,
        db=args.db,
        server=args.server,
        app="chatsite.asgi:application" if args.rate else "bench.socketmem_app:application",
        extra_env={"SOCKETMEM_OUT": str(out)},
    )
    worker = deployment.workers[0]
    clients: list[wsclient.WSClient] = []
    try:
        cookies = await guest_logins(HOST, worker.port, args.sockets + WARM_UP, concurrency=8)
        clients += await open_sockets(worker.port, cookies[:WARM_UP], 1)
        await asyncio.sleep(2)
        if not args.rate:
            before = await asyncio.to_thread(ask, worker.pid, signal.SIGUSR1, out / "snap0.tm")
        rss, cpu, started = worker.rss_kib(), worker.cpu(), time.perf_counter()
        clients += await open_sockets(worker.port, cookies[WARM_UP:], args.at_once)
        elapsed = time.perf_counter() - started
        cpu = worker.cpu() - cpu
        await asyncio.sleep(3)
        rss = worker.rss_kib() - rss
        n = args.sockets
        if args.rate:
            print(
                f"{args.server}: {n} sockets opened {args.at_once} at a time in {elapsed:.2f} s "
                f"({n / elapsed:.0f}/s), worker CPU {cpu * 1000 / n:.2f} ms per socket, "
                f"RSS +{rss * 1024 / n:.0f} B per socket"
            )
            return
        # Under tracemalloc, time, CPU and RSS say more about tracemalloc than the server.
        print(f"{args.server}: {n} sockets opened {args.at_once} at a time")
        after = await asyncio.to_thread(ask, worker.pid, signal.SIGUSR1, out / "snap1.tm")
        report(tracemalloc.Snapshot.load(str(before)), tracemalloc.Snapshot.load(str(after)), n)
        if args.inspect and args.server == "daphne":
            found = await asyncio.to_thread(protocol_dict, worker.pid, out)
            print(f"daphne WebSocketProtocol instance dict: {found}")
    finally:
        for client in clients:
            if client.transport is not None:
                client.transport.abort()
        deployment.stop()
        print(f"logs and snapshots: {out}")


def report(
    before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, n: int, lines: int = 30
) -> None:
    by_file = after.compare_to(before, "filename")
    print(f"tracemalloc: {sum(s.size_diff for s in by_file) / n:.0f} B per socket")
    for key, stats in (("file", by_file), ("line", after.compare_to(before, "lineno"))):
        print(f"by {key}:")
        for stat in stats[:lines]:
            if abs(stat.size_diff) < n * 8:
                break
            frame = stat.traceback[0]
            where = frame.filename if key == "file" else f"{frame.filename}:{frame.lineno}"
            print(f"  {stat.size_diff / n:7.0f} B  {stat.count_diff / n:6.2f} blocks  {where}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.socketmem", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--server",
        default="daphne",
        choices=["daphne", *(f"uvicorn-{ws}" for ws in servers.UVICORN_WS)],
        help="uvicorn-wsproto needs wsproto, which requirements.txt does not list",
    )
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--sockets", type=int, default=300)
    parser.add_argument(
        "--rate", action="store_true", help="connect rate, CPU and RSS; no tracemalloc"
    )
    parser.add_argument(
        "--at-once", type=int, help="sockets opening at a time (1; 200 with --rate)"
    )
    parser.add_argument(
        "--inspect", action="store_true", help="daphne's protocol instance dict too"
    )
    args = parser.parse_args(argv)
    if args.at_once is None:
        args.at_once = 200 if args.rate else 1
    raise_fd_limit()
    asyncio.run(measure(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
