"""The load generator: many simulated chat clients in one process.

Clients log in over HTTP (guests, before anything is timed), open sockets with
the session cookie and an Origin header, join one group, and then some of them
send at a fixed total rate. Every message carries its sequence number and send
time in its body (`b <seq> <perf_counter_ns>`), so each delivery gives a
latency, and each message is counted per receiving client: a message must
reach every member, and each one that does not is *lost*.

Everything runs on one event loop (uvloop when installed); frames are parsed
in `bench.wsclient` callbacks, never by per-socket coroutines, so the
generator costs a few microseconds per delivery.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson

from bench import wsclient
from bench.httplogin import guest_logins
from bench.servers import Deployment

HOST = "127.0.0.1"


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[index]


@dataclass
class ConnectStats:
    attempted: int = 0
    connected: int = 0
    failed: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    per_second: float = 0.0
    connect_ms_p50: float = 0.0
    connect_ms_p99: float = 0.0
    connect_ms_max: float = 0.0
    retried_ok: int = 0


@dataclass
class StepResult:
    rate: float
    seconds: float
    members: int
    senders: int
    sent: int = 0
    acks: int = 0
    errors: int = 0
    error_codes: dict[str, int] = field(default_factory=dict)
    unanswered: int = 0
    expected: int = 0
    delivered: int = 0
    lost: int = 0
    duplicates: int = 0
    deliveries_per_s: float = 0.0
    p50_ms: float = 0.0
    p95_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    ack_p50_ms: float = 0.0
    ack_p99_ms: float = 0.0
    server_cpu_s: float = 0.0
    server_cpu_us_per_delivery: float = 0.0
    server_cpu_percent: float = 0.0
    redis_cpu_s: float = 0.0
    loadgen_cpu_s: float = 0.0
    # Our workers' /metrics over the step (bench/run.py), empty for the peer.
    metrics: dict[str, float] = field(default_factory=dict)
    loadgen_cpu_percent: float = 0.0
    send_lag_max_ms: float = 0.0
    drain_s: float = 0.0
    closed_sockets: int = 0
    close_codes: dict[str, int] = field(default_factory=dict)
    notice_frames: int = 0
    passed: bool = False

    def summary(self) -> str:
        return (
            f"rate {self.rate:>6g}/s x{self.members}: {self.deliveries_per_s:>8.0f} deliv/s "
            f"p50 {self.p50_ms:6.1f} p99 {self.p99_ms:7.1f} max {self.max_ms:7.1f} ms "
            f"(ack p50 {self.ack_p50_ms:.1f} p99 {self.ack_p99_ms:.1f}) "
            f"lost {self.lost} err {self.errors} cpu {self.server_cpu_us_per_delivery:5.1f}us/d "
            f"({self.server_cpu_percent:.0f}%) gen {self.loadgen_cpu_percent:.0f}% "
            f"{'PASS' if self.passed else 'FAIL'}"
        )


class LoadGen:
    """Clients of one deployment (ours or the peer)."""

    def __init__(self, deployment: Deployment, *, kind: str, redis_pid: int | None = None):
        self.deployment = deployment
        self.kind = kind  # "ours", "peer" (the Channels tutorial) or "socketio"
        self.ports = [w.port for w in deployment.workers]
        self.redis_pid = redis_pid
        self.clients: list[wsclient.WSClient] = []
        self.group = "bench"
        # Per message (index = sequence number): deliveries counted, send time.
        self.counts: list[int] = []
        self.sent_ns: list[int] = []
        self.acked: list[bool] = []
        self.errored: list[bool] = []
        self.seq_start = 0
        self.latencies: list[int] = []
        self.ack_latencies: list[int] = []
        self.errors = 0
        self.error_codes: Counter = Counter()
        self.acks = 0
        self.notice_frames = 0
        self.stray = 0
        self.track_sets = True
        self.last_rx_ns = 0
        self._refs = 0
        # W7: `reaction` events received (not replies), and when the last came.
        self.reaction_events = 0
        self.last_reaction_ns = 0
        self._reactions_expected = 0
        self._reactions_done: asyncio.Event | None = None

    # -- receiving ------------------------------------------------------------

    def _count_delivery(self, data: dict, seq: int, sent_ns: int, now: int) -> None:
        """One member received message `seq`, sent at `sent_ns`."""
        if seq >= len(self.counts):
            self.stray += 1
            return
        self.counts[seq] += 1
        if seq >= self.seq_start:
            self.latencies.append(now - sent_ns)
            self.last_rx_ns = now
            if self.track_sets:
                data["seen"].add(seq)

    def _on_message(self, client: wsclient.WSClient, event: dict, now: int) -> None:
        body = event.get("body", "")
        message_id = event.get("id", 0)
        data = client.data
        if message_id > data["last_id"]:
            data["last_id"] = message_id
        if body.startswith("b "):
            _, seq_text, sent_text = body.split(" ", 2)
            self._count_delivery(data, int(seq_text), int(sent_text), now)

    def on_text(self, client: wsclient.WSClient, payload: bytes, now: int) -> None:
        head = payload[:24]
        if b"batch" in head:
            if b'"type":"reaction"' in payload:
                for event in orjson.loads(payload)["events"]:
                    if event.get("type") == "reaction":
                        self._on_reaction(client, now)
                return
            if b'"type":"message"' not in payload:
                # Presence and joined/left notices only: counted, not parsed.
                self.notice_frames += 1
                return
            # Messages stored together travel together (docs/protocol.md).
            for event in orjson.loads(payload)["events"]:
                if event.get("type") == "message":
                    self._on_message(client, event, now)
            return
        if b'"message"' in head:
            # Fast path for the hot frame: read id and body without a full parse.
            body_at = payload.find(b'"body":')
            if body_at >= 0:
                start = body_at + 7
                if payload[start] == 32:  # the peer's json.dumps puts a space here
                    start += 1
                if payload.startswith(b'"b ', start):
                    end = payload.index(b'"', start + 3)
                    seq_text, sent_text = payload[start + 3 : end].split(b" ")
                    seq = int(seq_text)
                    data = client.data
                    id_at = payload.find(b'"id":')
                    if id_at >= 0:
                        id_end = payload.find(b",", id_at)
                        message_id = int(payload[id_at + 5 : id_end])
                        if message_id > data["last_id"]:
                            data["last_id"] = message_id
                    self._count_delivery(data, seq, int(sent_text), now)
                    return
        event = orjson.loads(payload)
        kind = event.get("type")
        if kind == "message":
            self._on_message(client, event, now)
            return
        if kind == "ack":
            ref = event.get("ref")
            if ref is not None and ref.isdigit():
                seq = int(ref)
                self.acks += 1
                self.acked[seq] = True
                self.ack_latencies.append(now - self.sent_ns[seq])
                return
            # A send made through `request` (W7's one message).
            waiter = client.data["waiting"].pop(ref, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(event)
            return
        if kind == "error":
            self.errors += 1
            self.error_codes[event.get("code", "?")] += 1
            ref = event.get("ref")
            if ref is not None and ref.isdigit():
                self.errored[int(ref)] = True
            return
        if kind == "hello":
            client.data["last_id"] = event.get("last_id", 0)
            hello = client.data["hello"]
            if not hello.done():
                hello.set_result(event)
            return
        if kind == "reaction" and event.get("ref") is None:
            self._on_reaction(client, now)
            return
        if kind in ("presence", "joined", "left") and event.get("ref") is None:
            self.notice_frames += 1
            return
        waiter = client.data["waiting"].pop(event.get("ref"), None)
        if waiter is not None and not waiter.done():
            waiter.set_result(event)

    def _on_reaction(self, client: wsclient.WSClient, now: int) -> None:
        self.reaction_events += 1
        self.last_reaction_ns = now
        client.data["reactions"] = client.data.get("reactions", 0) + 1
        done = self._reactions_done
        if done is not None and self.reaction_events >= self._reactions_expected:
            done.set()

    # -- set-up (not timed as load) -----------------------------------------

    async def login(self, count: int) -> list[str | None]:
        if self.kind != "ours":
            # The peers have no accounts.
            return [None] * count
        return list(await guest_logins(HOST, self.ports[0], count))

    async def _open_one(self, index: int, cookie: str | None) -> float:
        started = time.perf_counter()
        await self._open_client(index, cookie)
        return time.perf_counter() - started

    async def _open_client(self, index: int, cookie: str | None) -> wsclient.WSClient:
        """A socket open and greeted (its `hello` read), kept in `clients`."""
        port = self.ports[index % len(self.ports)]
        loop = asyncio.get_running_loop()
        data = {"hello": loop.create_future(), "waiting": {}, "last_id": 0, "seen": set()}
        socketio = self.kind == "socketio"
        client = await wsclient.connect(
            HOST,
            port,
            wsclient.SocketIOClient.PATH if socketio else "/ws/chat/",
            origin=f"http://{HOST}:{port}",
            cookie=cookie,
            on_text=self.on_text,
            data=data,
            wait_s=60,
            factory=wsclient.SocketIOClient if socketio else wsclient.WSClient,
        )
        client.index = index
        # A frame may have come with the handshake answer: hello is read there.
        try:
            await asyncio.wait_for(asyncio.shield(client.data["hello"]), 60)
        except BaseException:
            if client.transport is not None:
                client.transport.abort()
            raise
        self.clients.append(client)
        return client

    async def open(
        self, cookies: list[str | None], *, batch: int = 200, retries: int = 0
    ) -> ConnectStats:
        """Open one socket per cookie, `batch` at a time; waits for every `hello`.

        Figures are those of the first attempt; with `retries`, refused
        handshakes are tried again (50 at a time) so that a later phase still
        gets its members, and `retried_ok` says how many got in that way.
        """
        stats = ConnectStats(attempted=len(cookies))
        times: list[float] = []
        offset = len(self.clients)
        pending = [(offset + i, cookie) for i, cookie in enumerate(cookies)]
        for attempt in range(retries + 1):
            started = time.perf_counter()
            failed: list[tuple[int, str | None]] = []
            size = batch if attempt == 0 else min(batch, 50)
            for first in range(0, len(pending), size):
                chunk = pending[first : first + size]
                results = await asyncio.gather(
                    *(self._open_one(index, cookie) for index, cookie in chunk),
                    return_exceptions=True,
                )
                for item, result in zip(chunk, results, strict=True):
                    if isinstance(result, BaseException):
                        failed.append(item)
                        if attempt == 0:
                            stats.failed += 1
                            status = getattr(result, "status", None)
                            reason = f"http {status}" if status else type(result).__name__
                            stats.failures[reason] = stats.failures.get(reason, 0) + 1
                    elif attempt == 0:
                        stats.connected += 1
                        times.append(result)
                    else:
                        stats.retried_ok += 1
            if attempt == 0:
                stats.seconds = time.perf_counter() - started
            pending = failed
            if not pending:
                break
            await asyncio.sleep(1.0)
        stats.per_second = stats.connected / stats.seconds if stats.seconds else 0.0
        times.sort()
        stats.connect_ms_p50 = percentile(times, 50) * 1000
        stats.connect_ms_p99 = percentile(times, 99) * 1000
        stats.connect_ms_max = (times[-1] * 1000) if times else 0.0
        return stats

    async def open_joining(
        self, cookies: list[str | None], *, batch: int, group: str, join: bool = True
    ) -> dict[str, Any]:
        """Open one socket per cookie, `batch` at a time, each then joining `group`.

        A socket counts once its `hello` came and, with `join`, its `joined`
        reply (for ours: the membership is committed). Without `join` (ours
        reconnecting: the user is a member already) it counts when its
        `hello` lists `group`. No retries: every failure is reported.
        """
        self.group = group
        times: list[float] = []
        failures: Counter = Counter()

        async def one(index: int, cookie: str | None) -> float:
            started = time.perf_counter()
            client = await self._open_client(index, cookie)
            if join:
                reply = await self.request(client, {"type": "join", "group": group})
                if reply.get("type") != "joined":
                    raise RuntimeError(f"join answered {reply.get('code', reply.get('type'))}")
            elif group not in client.data["hello"].result().get("groups", []):
                raise RuntimeError("hello does not list the group")
            return time.perf_counter() - started

        offset = len(self.clients)
        started = time.perf_counter()
        for first in range(0, len(cookies), batch):
            chunk = cookies[first : first + batch]
            results = await asyncio.gather(
                *(one(offset + first + i, c) for i, c in enumerate(chunk)),
                return_exceptions=True,
            )
            for result in results:
                if isinstance(result, BaseException):
                    status = getattr(result, "status", None)
                    failures[f"http {status}" if status else str(result)[:60]] += 1
                else:
                    times.append(result)
        seconds = time.perf_counter() - started
        times.sort()
        return {
            "attempted": len(cookies),
            "ok": len(times),
            "failed": sum(failures.values()),
            "failures": dict(failures),
            "seconds": seconds,
            "per_second": len(times) / seconds if seconds else 0.0,
            "ms_p50": percentile(times, 50) * 1000,
            "ms_p99": percentile(times, 99) * 1000,
            "ms_max": (times[-1] * 1000) if times else 0.0,
        }

    async def request(self, client: wsclient.WSClient, command: dict[str, Any]) -> dict:
        self._refs += 1
        ref = f"r{self._refs}"
        waiter = asyncio.get_running_loop().create_future()
        client.data["waiting"][ref] = waiter
        client.send_text(orjson.dumps({**command, "ref": ref}))
        return await asyncio.wait_for(waiter, 60)

    async def join_all(self, group: str, *, concurrency: int = 100) -> int:
        """Every open client joins `group`; returns how many joins failed."""
        self.group = group
        semaphore = asyncio.Semaphore(concurrency)

        async def one(client: wsclient.WSClient) -> None:
            async with semaphore:
                reply = await self.request(client, {"type": "join", "group": group})
                if reply.get("type") != "joined":
                    raise RuntimeError(f"join answered {reply}")

        results = await asyncio.gather(
            *(one(c) for c in self.clients if c.is_open), return_exceptions=True
        )
        return sum(1 for r in results if isinstance(r, BaseException))

    async def settle(self, quiet: float = 1.0, wait_s: float = 60.0) -> float:
        """Wait until no frame has arrived for `quiet` seconds (notices, backlog)."""
        started = time.perf_counter()
        last_total = -1
        last_change = time.perf_counter()
        while time.perf_counter() - started < wait_s:
            total = sum(c.frames_in for c in self.clients)
            now = time.perf_counter()
            if total != last_total:
                last_total, last_change = total, now
            elif now - last_change >= quiet:
                break
            await asyncio.sleep(0.1)
        return time.perf_counter() - started

    # -- load -------------------------------------------------------------------

    def _address(self, everyone: bool) -> bytes:
        if everyone:
            return b'{"all":true}'
        return orjson.dumps({"group": self.group})

    def _new_seq(self) -> int:
        seq = len(self.counts)
        self.counts.append(0)
        self.sent_ns.append(0)
        self.acked.append(False)
        self.errored.append(False)
        return seq

    def _send(self, client: wsclient.WSClient, address: bytes) -> int:
        seq = self._new_seq()
        now = time.perf_counter_ns()
        self.sent_ns[seq] = now
        client.send_text(
            b'{"type":"send","to":%s,"body":"b %d %d","ref":"%d"}' % (address, seq, now, seq)
        )
        return seq

    def _cpu(self) -> tuple[float, float, float]:
        server = self.deployment.cpu()
        redis_cpu = 0.0
        if self.redis_pid:
            try:
                from bench.servers import proc_cpu_seconds

                redis_cpu = proc_cpu_seconds(self.redis_pid)
            except OSError:
                redis_cpu = 0.0
        return server, redis_cpu, time.process_time()

    async def step(
        self,
        rate: float,
        seconds: float,
        *,
        senders: int = 10,
        drain_timeout: float = 10.0,
        everyone: bool = False,
    ) -> StepResult:
        """Send at `rate` messages/s for `seconds`; wait for deliveries; measure."""
        open_clients = [c for c in self.clients if c.is_open]
        if not open_clients:
            codes = Counter(str(c.close_code) for c in self.clients)
            raise RuntimeError(f"the server closed every socket (close codes {dict(codes)})")
        members = len(open_clients)
        # By open order the first ten could all be one worker's (W2): by index,
        # they alternate between the workers as the sockets do.
        sending = sorted(open_clients, key=lambda c: c.index)[: max(1, senders)]
        result = StepResult(rate=rate, seconds=seconds, members=members, senders=len(sending))
        address = self._address(everyone)
        self.seq_start = len(self.counts)
        self.latencies = []
        self.ack_latencies = []
        self.last_rx_ns = 0
        for client in self.clients:
            client.data["seen"] = set()
            client.data["sync_since"] = client.data["last_id"]
        errors0, acks0, notices0 = self.errors, self.acks, self.notice_frames
        self.error_codes = Counter()
        closed0 = sum(1 for c in self.clients if not c.is_open)
        cpu0 = self._cpu()
        started = time.perf_counter()
        total = max(1, int(rate * seconds))
        sent = 0
        lag_max = 0.0
        while sent < total:
            now = time.perf_counter()
            due = min(total, int((now - started) * rate) + 1)
            if due > sent:
                lag_max = max(lag_max, now - (started + (sent / rate)))
            while sent < due:
                self._send(sending[sent % len(sending)], address)
                sent += 1
            next_at = started + sent / rate
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
        send_done = time.perf_counter()
        seq_end = len(self.counts)
        # Drain: until every message reached every member, or time is up.
        deadline = send_done + drain_timeout
        while time.perf_counter() < deadline:
            expected, delivered = self._tally(self.seq_start, seq_end, members)
            answered = all(self.acked[s] or self.errored[s] for s in range(self.seq_start, seq_end))
            if delivered >= expected and answered:
                break
            await asyncio.sleep(0.02)
        finished = time.perf_counter()
        cpu1 = self._cpu()
        expected, delivered = self._tally(self.seq_start, seq_end, members)
        lat = sorted(self.latencies)
        # The step's throughput runs from the first send to the last delivery.
        last_rx = max(send_done, self.last_rx_ns / 1e9) if self.last_rx_ns else finished
        result.sent = sent
        result.acks = self.acks - acks0
        result.errors = self.errors - errors0
        result.error_codes = dict(self.error_codes)
        result.unanswered = sum(
            1 for s in range(self.seq_start, seq_end) if not (self.acked[s] or self.errored[s])
        )
        result.expected = expected
        result.delivered = delivered
        result.lost = max(0, expected - delivered)
        result.duplicates = sum(
            max(0, self.counts[s] - members) for s in range(self.seq_start, seq_end)
        )
        span = max(1e-9, last_rx - started)
        result.deliveries_per_s = delivered / span
        result.p50_ms = percentile(lat, 50) / 1e6
        result.p95_ms = percentile(lat, 95) / 1e6
        result.p99_ms = percentile(lat, 99) / 1e6
        result.max_ms = (lat[-1] / 1e6) if lat else float("nan")
        acks_sorted = sorted(self.ack_latencies)
        result.ack_p50_ms = percentile(acks_sorted, 50) / 1e6
        result.ack_p99_ms = percentile(acks_sorted, 99) / 1e6
        result.server_cpu_s = cpu1[0] - cpu0[0]
        result.redis_cpu_s = cpu1[1] - cpu0[1]
        result.loadgen_cpu_s = cpu1[2] - cpu0[2]
        wall = finished - started
        result.server_cpu_percent = 100 * result.server_cpu_s / wall
        result.loadgen_cpu_percent = 100 * result.loadgen_cpu_s / wall
        result.server_cpu_us_per_delivery = (
            1e6 * result.server_cpu_s / delivered if delivered else float("nan")
        )
        result.send_lag_max_ms = lag_max * 1000
        result.drain_s = finished - send_done
        closed = [c for c in self.clients if not c.is_open]
        result.closed_sockets = len(closed) - closed0
        result.close_codes = dict(Counter(str(c.close_code) for c in closed))
        result.notice_frames = self.notice_frames - notices0
        result.passed = result.lost == 0 and result.p99_ms < 250 and result.errors == 0
        return result

    def _tally(self, start: int, end: int, members: int) -> tuple[int, int]:
        expected = delivered = 0
        counts, errored = self.counts, self.errored
        for seq in range(start, end):
            if errored[seq]:
                continue
            expected += members
            count = counts[seq]
            delivered += count if count < members else members
        return expected, delivered

    async def broadcast_once(self, *, everyone: bool, wait_s: float = 10.0) -> dict[str, Any]:
        """One message from one client; time until every open client has it."""
        open_clients = [c for c in self.clients if c.is_open]
        self.seq_start = len(self.counts)
        self.latencies = []
        seq = self._send(open_clients[0], self._address(everyone))
        started = time.perf_counter()
        while time.perf_counter() - started < wait_s:
            if self.counts[seq] >= len(open_clients):
                break
            await asyncio.sleep(0.002)
        lat = sorted(self.latencies)
        return {
            "members": len(open_clients),
            "reached": self.counts[seq],
            "all_ms": (lat[-1] / 1e6) if len(lat) >= len(open_clients) else float("nan"),
            "p50_ms": percentile(lat, 50) / 1e6,
        }

    async def react_storm(self, emoji: str = "👍", wait_s: float = 60.0) -> dict[str, Any]:
        """W7: every open client reacts to one group message at the same moment.

        Each member gets the others' `reaction` events (not its own: that is
        its reply). Timed from the first `react` sent: every reply, and until
        every member has every other member's event.
        """
        open_clients = [c for c in self.clients if c.is_open]
        first = await self.request(
            open_clients[0], {"type": "send", "to": {"group": self.group}, "body": "react here"}
        )
        await self.settle(quiet=0.5, wait_s=30)
        for client in open_clients:
            client.data["reactions"] = 0
        self.reaction_events = 0
        members = len(open_clients)
        expected = members * (members - 1)
        self._reactions_expected = expected
        self._reactions_done = asyncio.Event()
        cpu = self._cpu()
        started = time.perf_counter_ns()
        replies = await asyncio.gather(
            *(
                self._timed(c, {"type": "react", "id": first["id"], "emoji": emoji})
                for c in open_clients
            ),
            return_exceptions=True,
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._reactions_done.wait(), wait_s)
        done_ns = self.last_reaction_ns
        used = [after - before for before, after in zip(cpu, self._cpu(), strict=True)]
        ok = [r for r in replies if isinstance(r, tuple) and r[0].get("type") == "reaction"]
        reply_ms = sorted(elapsed / 1e6 for _, elapsed in ok)
        counts = [r.get("count", 0) for r, _ in ok]
        check = await self.request(open_clients[-1], {"type": "changes", "since": first["id"] - 1})
        final = [m for m in check.get("messages", []) if m.get("id") == first["id"]]
        return {
            "members": members,
            "replies_ok": len(ok),
            "reply_p50_ms": percentile(reply_ms, 50),
            "reply_p99_ms": percentile(reply_ms, 99),
            "reply_max_ms": reply_ms[-1] if reply_ms else float("nan"),
            "highest_count_in_a_reply": max(counts, default=0),
            "events_expected": expected,
            "events_received": self.reaction_events,
            "all_events_ms": (done_ns - started) / 1e6
            if self.reaction_events >= expected
            else float("nan"),
            "final_count": final[0]["reactions"][0]["count"] if final else 0,
            "server_cpu_s": used[0],
        }

    async def _timed(self, client: wsclient.WSClient, command: dict[str, Any]) -> tuple[dict, int]:
        before = time.perf_counter_ns()
        reply = await self.request(client, command)
        return reply, time.perf_counter_ns() - before

    async def sync_check(self, step: StepResult, seq_range: tuple[int, int], limit: int = 5):
        """For clients that missed live messages: does `sync` return them?"""
        if self.kind != "ours":
            return {"checked": 0, "recovered": 0, "missing": 0, "note": "peer has no sync"}
        start, end = seq_range
        wanted = {s for s in range(start, end) if not self.errored[s]}
        short = [
            c for c in self.clients if c.is_open and len(c.data["seen"] & wanted) < len(wanted)
        ]
        checked = recovered = still_missing = 0
        for client in short[:limit]:
            missing = wanted - client.data["seen"]
            since = client.data.get("sync_since", 0)
            found: set[int] = set()
            while True:
                reply = await self.request(client, {"type": "sync", "since": since})
                for message in reply.get("messages", []):
                    since = max(since, message["id"])
                    body = message.get("body", "")
                    if body.startswith("b "):
                        found.add(int(body.split(" ")[1]))
                if not reply.get("more"):
                    break
            checked += 1
            recovered += len(missing & found)
            still_missing += len(missing - found)
        return {
            "short_clients": len(short),
            "checked": checked,
            "recovered": recovered,
            "missing": still_missing,
        }

    async def close_all(self) -> None:
        await asyncio.gather(*(c.close() for c in self.clients), return_exceptions=True)
        self.clients = []


def mean(values: list[float]) -> float:
    values = [v for v in values if v == v]
    return statistics.fmean(values) if values else float("nan")
