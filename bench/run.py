"""Workloads W1-W4: start the servers, drive them, measure, and write tables.

Each workload runs against our server and against the tutorial peer in the
same invocation, one after the other on the same machine, so every figure
also comes as a ratio to the peer measured in the same run.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import platform
import resource
import socket
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import servers
from bench.loadgen import LoadGen, StepResult

# Up to where our worker saturates on the 2-core machine (1,300-1,600 on the
# sixth session's Xeon); two failing steps in a row end it sooner.
LADDER = [
    *(2, 5, 10, 20, 35, 50, 75, 100, 150, 200, 250, 300, 400, 500, 650, 800),
    *(1000, 1300, 1600, 2000, 2500),
]
LIGHT_RATE = 10
PASS_P99_MS = 250.0


@dataclasses.dataclass
class Config:
    clients: int = 200
    senders: int = 10
    step_seconds: float = 5.0
    ladder: tuple[float, ...] = tuple(LADDER)
    w3_clients: int = 2000
    w3_batch: int = 200
    w4_clients: int = 2000
    w4_ladder: tuple[float, ...] = (0.5, 1, 2, 5, 10, 20, 35, 50)
    db: str = "postgres"
    server: str = "daphne"
    peer_server: str = "daphne"
    targets: tuple[str, ...] = ("ours", "peer", "socketio")
    overload_check: bool = True
    variant: str = ""
    connect_batch: int = 200
    w5_clients: int = 2000
    w5_batch: int = 200
    quiet_seconds: float = 30.0

    @classmethod
    def quick(cls) -> Config:
        return cls(
            clients=40,
            senders=4,
            step_seconds=2.0,
            ladder=(5, 20, 60),
            w3_clients=200,
            w3_batch=100,
            w4_clients=200,
            w4_ladder=(2, 5),
            w5_clients=200,
            w5_batch=100,
            quiet_seconds=5.0,
        )


def machine() -> dict[str, Any]:
    mem_kib = 0
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    cpu_model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    return {
        "host": socket.gethostname(),
        "nproc": os.cpu_count(),
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "cpu": cpu_model,
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def _deploy(target: str, workers: int, run_id: str, config: Config) -> servers.Deployment:
    if target == "ours":
        return servers.start_ours(
            workers=workers,
            run_id=run_id,
            db=config.db,
            server=config.server,
            variant=config.variant,
        )
    if target == "socketio":
        return servers.start_socketio(workers=workers, run_id=run_id)
    return servers.start_peer(workers=workers, run_id=run_id, server=config.peer_server)


def _metrics_moved(
    before: dict[str, float] | None, after: dict[str, float] | None, started: float
) -> dict[str, float]:
    """How far the workers' own counters moved over a step, and at what rate.

    Beside the step's figures, which the load generator measured from
    outside: both should say the same.
    """
    if before is None or after is None:
        return {}
    seconds = time.perf_counter() - started
    moved: dict[str, float] = {"seconds": round(seconds, 2)}
    for name in before:
        short = name.removeprefix("chat_").removesuffix("_total")
        moved[short] = after[name] - before[name]
        moved[f"{short}_per_s"] = round(moved[short] / seconds, 1)
    return moved


def _step_dict(step: StepResult) -> dict[str, Any]:
    return dataclasses.asdict(step)


def _log(message: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {message}", flush=True)


async def _setup(
    gen: LoadGen, clients: int, *, batch: int, join: str | None, retries: int = 3
) -> dict[str, Any]:
    started = time.perf_counter()
    cookies = await gen.login(clients)
    login_s = time.perf_counter() - started
    # A mark for profilers attached by hand: the connect phase starts here.
    _log(f"{clients} logged in in {login_s:.1f} s; opening their sockets")
    await asyncio.sleep(0.5)
    rss_before = gen.deployment.rss_kib()
    stats = await gen.open(cookies, batch=batch, retries=retries)
    open_settle = await gen.settle(quiet=1.0, wait_s=120)
    join_s = 0.0
    join_failed = 0
    if join:
        started = time.perf_counter()
        join_failed = await gen.join_all(join)
        join_s = time.perf_counter() - started
        await gen.settle(quiet=1.0, wait_s=120)
    rss_after = gen.deployment.rss_kib()
    open_now = sum(1 for c in gen.clients if c.is_open)
    return {
        "login_s": login_s,
        "connect": dataclasses.asdict(stats),
        "settle_after_open_s": open_settle,
        "join_s": join_s,
        "join_failed": join_failed,
        "rss_before_kib": rss_before,
        "rss_after_kib": rss_after,
        "open_sockets": open_now,
        # Divided by the sockets open now (first attempts and retries).
        "kib_per_connection": (rss_after - rss_before) / max(1, open_now),
    }


async def _ladder(
    gen: LoadGen,
    rates: tuple[float, ...],
    config: Config,
    *,
    label: str,
    recovery_rate: float = LIGHT_RATE,
) -> dict[str, Any]:
    steps: list[StepResult] = []
    # Warm-up (not reported): code paths, connections, caches.
    await gen.step(rates[0], 1.0, senders=config.senders)
    await gen.settle(quiet=0.5, wait_s=30)
    failed: StepResult | None = None
    for rate in rates:
        before, started = gen.deployment.scrape(), time.perf_counter()
        step = await gen.step(rate, config.step_seconds, senders=config.senders, drain_timeout=10.0)
        step.metrics = _metrics_moved(before, gen.deployment.scrape(), started)
        steps.append(step)
        _log(f"{label}: {step.summary()}")
        if step.metrics:
            _log(f"{label}: /metrics {json.dumps(step.metrics)}")
        if not gen.deployment.alive():
            _log(f"{label}: a server process died")
            failed = step
            break
        if not step.passed:
            # Two failing steps in a row end the ladder: one alone may be a
            # hiccup of a shared machine (a single stall puts p99 over 250 ms).
            if failed is not None and steps[-2] is failed:
                break
            failed = step
            await gen.settle(quiet=1.0, wait_s=60)
            continue
        await gen.settle(quiet=0.3, wait_s=30)
    passing = [s for s in steps if s.passed]
    sustained = max(passing, key=lambda s: s.deliveries_per_s) if passing else None
    result: dict[str, Any] = {
        "steps": [_step_dict(s) for s in steps],
        "sustained": _step_dict(sustained) if sustained else None,
    }
    light = next((s for s in steps if s.rate == LIGHT_RATE), None)
    result["light"] = _step_dict(light) if light else None
    if config.overload_check and gen.deployment.alive():
        # Well past saturation: three times the sustained rate (or the first
        # failing one, if higher) for one step.
        base = sustained.rate if sustained else rates[0]
        over_rate = max(base * 3, failed.rate if failed else 0)
        await gen.settle(quiet=1.0, wait_s=120)
        seq0 = len(gen.counts)
        over = await gen.step(
            over_rate, config.step_seconds, senders=config.senders, drain_timeout=10.0
        )
        _log(f"{label} overload step: {over.summary()}")
        result["overload"] = await _overload(
            gen, over, (seq0, len(gen.counts)), config, label=label, recovery_rate=recovery_rate
        )
    return result


async def _overload(
    gen: LoadGen,
    failed: StepResult,
    seq_range: tuple[int, int],
    config: Config,
    *,
    label: str,
    recovery_rate: float,
) -> dict[str, Any]:
    """Past saturation: was anything lost silently, can clients sync, does it recover?"""
    settle_s = await gen.settle(quiet=2.0, wait_s=120)
    members = failed.members
    expected, delivered = gen._tally(seq_range[0], seq_range[1], members)
    info: dict[str, Any] = {
        "rate": failed.rate,
        "step": _step_dict(failed),
        "late_lost_at_drain": failed.lost,
        "settle_s": settle_s,
        "lost_after_settle": max(0, expected - delivered),
        "errors": failed.errors,
        "error_codes": failed.error_codes,
        "closed_sockets": sum(1 for c in gen.clients if not c.is_open),
        "server_alive": gen.deployment.alive(),
    }
    # Silently lost: deliveries missing on sockets that are still open and
    # got no error frame during the step (nothing told those clients).
    wanted = {s for s in range(*seq_range) if not gen.errored[s]}
    silent = 0
    for client in gen.clients:
        if client.is_open:
            silent += len(wanted - client.data["seen"])
    info["silently_lost_deliveries"] = silent if failed.errors == 0 else None
    info["lost_silently"] = bool(silent) and failed.errors == 0
    if gen.deployment.alive():
        try:
            info["sync"] = await gen.sync_check(failed, seq_range)
        except Exception as exc:  # report, do not abort the run
            info["sync"] = {"error": repr(exc)}
        recovery = await gen.step(recovery_rate, 5.0, senders=config.senders, drain_timeout=10.0)
        info["recovery"] = _step_dict(recovery)
        _log(f"{label} recovery: {recovery.summary()}")
    brief = {k: v for k, v in info.items() if k not in ("recovery", "step")}
    _log(f"{label} overload: {json.dumps(brief)}")
    return info


async def workload_w1(target: str, run_id: str, config: Config, *, workers: int = 1) -> dict:
    label = f"{'W1' if workers == 1 else 'W2'} {target}"
    deployment = _deploy(target, workers, run_id, config)
    try:
        gen = LoadGen(deployment, kind=target, redis_pid=servers.redis_server_pid())
        setup = await _setup(gen, config.clients, batch=config.connect_batch, join="bench")
        _log(f"{label}: set up {json.dumps(setup['connect'])}")
        ladder = await _ladder(gen, config.ladder, config, label=label)
        await gen.close_all()
        return {"setup": setup, **ladder, "workers": workers}
    finally:
        deployment.stop()


async def workload_w2(target: str, run_id: str, config: Config) -> dict:
    return await workload_w1(target, run_id, config, workers=2)


async def workload_w3(target: str, run_id: str, config: Config) -> dict:
    label = f"W3 {target}"
    deployment = _deploy(target, 1, run_id, config)
    try:
        gen = LoadGen(deployment, kind=target, redis_pid=servers.redis_server_pid())
        setup = await _setup(gen, config.w3_clients, batch=config.w3_batch, join=None)
        _log(f"{label}: set up {json.dumps(setup)}")
        broadcasts = []
        for _ in range(3):
            broadcasts.append(await gen.broadcast_once(everyone=True, wait_s=15))
            await gen.settle(quiet=0.5, wait_s=30)
        _log(f"{label}: broadcasts {json.dumps(broadcasts)}")
        await gen.close_all()
        return {"setup": setup, "broadcasts": broadcasts}
    finally:
        deployment.stop()


async def workload_w4(target: str, run_id: str, config: Config) -> dict:
    label = f"W4 {target}"
    deployment = _deploy(target, 1, run_id, config)
    try:
        gen = LoadGen(deployment, kind=target, redis_pid=servers.redis_server_pid())
        setup = await _setup(gen, config.w4_clients, batch=config.connect_batch, join="bench")
        _log(f"{label}: set up {json.dumps(setup['connect'])} join {setup['join_s']:.1f}s")
        ladder = await _ladder(
            gen, config.w4_ladder, config, label=label, recovery_rate=config.w4_ladder[0]
        )
        await gen.close_all()
        return {"setup": setup, **ladder}
    finally:
        deployment.stop()


async def workload_w5(target: str, run_id: str, config: Config) -> dict:
    """Connect and join, then reconnect: sockets/s with the room membership in place.

    Connect: each socket opens, gets `hello`, sends `join` of one group and
    counts when `joined` comes (ours commits the membership first). Then one
    message to the group, timed until the last member has it. Reconnect: every
    socket closes and the same users open again; ours keeps memberships across
    reconnects, so a socket counts when its `hello` lists the group, while the
    peers' memberships live with the socket, so theirs join again. One more
    message to the group checks that every reconnected socket is in it.
    """
    label = f"W5 {target}"
    group = "bench"
    deployment = _deploy(target, 1, run_id, config)
    try:
        gen = LoadGen(deployment, kind=target, redis_pid=servers.redis_server_pid())
        cookies = await gen.login(config.w5_clients)
        await asyncio.sleep(0.5)
        cpu = deployment.cpu()
        connect = await gen.open_joining(cookies, batch=config.w5_batch, group=group)
        connect["server_cpu_ms_per_socket"] = (
            1000 * (deployment.cpu() - cpu) / max(1, connect["ok"])
        )
        _log(f"{label}: connect and join {json.dumps(connect)}")
        await gen.settle(quiet=1.0, wait_s=120)
        after_connect = await gen.broadcast_once(everyone=False, wait_s=15)
        _log(f"{label}: one message to the group {json.dumps(after_connect)}")
        await gen.close_all()
        # Until the server has seen every close (presence, memberships of the peers).
        await asyncio.sleep(2.0)
        cpu = deployment.cpu()
        reconnect = await gen.open_joining(
            cookies, batch=config.w5_batch, group=group, join=target != "ours"
        )
        reconnect["server_cpu_ms_per_socket"] = (
            1000 * (deployment.cpu() - cpu) / max(1, reconnect["ok"])
        )
        _log(f"{label}: reconnect {json.dumps(reconnect)}")
        await gen.settle(quiet=1.0, wait_s=120)
        after_reconnect = await gen.broadcast_once(everyone=False, wait_s=15)
        _log(f"{label}: one message to the group {json.dumps(after_reconnect)}")
        await gen.close_all()
        return {
            "connect": connect,
            "broadcast_after_connect": after_connect,
            "reconnect": reconnect,
            "broadcast_after_reconnect": after_reconnect,
        }
    finally:
        deployment.stop()


async def workload_w6(target: str, run_id: str, config: Config) -> dict:
    """A quiet room: 200 members, 10 messages/s for `quiet_seconds`; the latencies."""
    label = f"W6 {target}"
    deployment = _deploy(target, 1, run_id, config)
    try:
        gen = LoadGen(deployment, kind=target, redis_pid=servers.redis_server_pid())
        setup = await _setup(gen, config.clients, batch=config.connect_batch, join="bench")
        await gen.step(LIGHT_RATE, 2.0, senders=config.senders)
        await gen.settle(quiet=0.5, wait_s=30)
        step = await gen.step(
            LIGHT_RATE, config.quiet_seconds, senders=config.senders, drain_timeout=10.0
        )
        _log(f"{label}: {step.summary()}")
        await gen.close_all()
        return {"setup": setup, "quiet": _step_dict(step)}
    finally:
        deployment.stop()


async def workload_w7(target: str, run_id: str, config: Config) -> dict:
    """Protocol 1.2: every member of a 200-member group reacts to one message at once.

    Ours only: the peers have no reactions. Reports each `react`'s reply
    time, the time until every member has had every other member's
    `reaction` event (200 * 199 of them), and the count `changes` reads after.
    """
    if target != "ours":
        return {"skipped": "the peer has no reactions"}
    label = f"W7 {target}"
    deployment = _deploy(target, 1, run_id, config)
    try:
        gen = LoadGen(deployment, kind=target, redis_pid=servers.redis_server_pid())
        setup = await _setup(gen, config.clients, batch=config.connect_batch, join="bench")
        storm = await gen.react_storm()
        _log(f"{label}: {json.dumps(storm)}")
        await gen.close_all()
        return {"setup": setup, "storm": storm}
    finally:
        deployment.stop()


WORKLOADS = {
    "W1": workload_w1,
    "W2": workload_w2,
    "W3": workload_w3,
    "W4": workload_w4,
    "W5": workload_w5,
    "W6": workload_w6,
    "W7": workload_w7,
}


def run(workloads: list[str], repeat: int, config: Config, out_dir: Path | None = None) -> Path:
    raise_fd_limit()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out_dir = out_dir or servers.OUT / stamp
    out_dir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "config": dataclasses.asdict(config),
        "git": _git_head(),
        "runs": [],
    }
    loop_policy = _use_uvloop()
    report["loadgen_loop"] = loop_policy
    for index in range(repeat):
        for workload in workloads:
            entry: dict[str, Any] = {"workload": workload, "repeat": index + 1}
            for target in config.targets:
                run_id = f"{stamp[9:15]}{workload.lower()}{target[0]}{index}"
                _log(f"{workload} repeat {index + 1}: {target}")
                started = time.perf_counter()
                try:
                    entry[target] = asyncio.run(WORKLOADS[workload](target, run_id, config))
                except Exception as exc:
                    _log(f"{workload} {target} failed: {exc!r}")
                    entry[target] = {"error": repr(exc)}
                entry[target]["wall_s"] = time.perf_counter() - started
                _write(out_dir, report, entry)
            report["runs"].append(entry)
            _write(out_dir, report, None)
    report["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    _write(out_dir, report, None)
    from bench.report import markdown

    text = markdown(report)
    (out_dir / "results.md").write_text(text)
    print(text)
    _log(f"results in {out_dir}")
    return out_dir


def _write(out_dir: Path, report: dict, partial: dict | None) -> None:
    data = dict(report)
    if partial is not None:
        data = {**report, "runs": [*report["runs"], partial]}
    (out_dir / "results.json").write_text(json.dumps(data, indent=1, default=str))


def _git_head() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=servers.ROOT,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _use_uvloop() -> str:
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return f"uvloop {uvloop.__version__}"
