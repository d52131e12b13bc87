"""How fast daphne opens sockets for an app that does nothing: W3's ceiling on this machine.

`python -m bench.bare_ceiling` starts daphne (backlog 2048, as the benchmark
starts ours) on `application` below, which accepts every socket and sends one
frame, then opens 2,000 sockets 200 at a time with the load generator's client
and waits for each one's frame, as W3 does. No session, database, Redis or
presence: what it measures is daphne's handshake plus the load generator on
the same two cores, the most any app under daphne could reach in W3 here.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import socket
import subprocess
import sys
import time
from typing import Any

from bench import wsclient

HOST = "127.0.0.1"


async def application(scope: Any, receive: Any, send: Any) -> None:
    """Accept, send one frame, wait for the close."""
    if scope["type"] == "websocket":
        while True:
            message = await receive()
            if message["type"] == "websocket.connect":
                await send({"type": "websocket.accept"})
                await send({"type": "websocket.send", "text": '{"type":"hello"}'})
            elif message["type"] == "websocket.disconnect":
                return
    elif scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return


async def open_all(port: int, count: int, at_once: int) -> tuple[float, float]:
    """Seconds to open `count` sockets, `at_once` at a time, and client CPU ms per socket."""
    loop = asyncio.get_running_loop()
    clients: list[wsclient.WSClient] = []

    async def one() -> None:
        greeted: asyncio.Future[None] = loop.create_future()

        def on_text(client: wsclient.WSClient, payload: bytes, now: int) -> None:
            if not greeted.done():
                greeted.set_result(None)

        _, client = await loop.create_connection(
            lambda: wsclient.WSClient(
                host=HOST,
                port=port,
                path="/ws/chat/",
                origin=f"http://{HOST}:{port}",
                cookie=None,
                on_text=on_text,
            ),
            HOST,
            port,
        )
        await client.opened
        await greeted
        clients.append(client)

    started, cpu = time.perf_counter(), time.process_time()
    for first in range(0, count, at_once):
        await asyncio.gather(*(one() for _ in range(min(at_once, count - first))))
    seconds = time.perf_counter() - started
    cpu_ms = 1000 * (time.process_time() - cpu) / count
    for client in clients:
        await client.close(wait_s=0.5)
    return seconds, cpu_ms


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sockets", type=int, default=2000)
    parser.add_argument("--at-once", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args(argv)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    for run in range(1, args.repeat + 1):
        port = _free_port()
        endpoint = f"tcp:port={port}:interface={HOST}:backlog=2048"
        server = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-e", endpoint, "bench.bare_ceiling:application"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    socket.create_connection((HOST, port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            seconds, cpu_ms = asyncio.run(open_all(port, args.sockets, args.at_once))
            print(
                f"run {run}: {args.sockets} sockets in {seconds:.2f} s = "
                f"{args.sockets / seconds:,.0f}/s (load generator {cpu_ms:.2f} ms CPU per socket)"
            )
        finally:
            server.terminate()
            server.wait(timeout=10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
