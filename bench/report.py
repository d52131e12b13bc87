"""Markdown tables from a results.json (python -m bench report PATH)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _f(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _ratio(ours: Any, peer: Any, *, lower_is_better: bool = False) -> str:
    try:
        if not ours or not peer or math.isnan(ours) or math.isnan(peer):
            return "-"
    except TypeError:
        return "-"
    value = peer / ours if lower_is_better else ours / peer
    return f"{value:,.1f}x"


def _get(data: dict | None, *path: str) -> Any:
    for key in path:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


# Every target a run may have, in table order; "peer" is the Channels tutorial.
TARGETS = ("ours", "peer", "socketio")
PEERS = ("peer", "socketio")
NAMES = {"ours": "ours", "peer": "tutorial", "socketio": "socket.io"}


def _targets(entries: list[dict]) -> list[str]:
    return [t for t in TARGETS if any(t in entry for entry in entries)]


def _ladder_rows(entry: dict) -> list[str]:
    rows = []
    for target in TARGETS:
        for step in _get(entry, target, "steps") or []:
            rows.append(
                f"| {entry['repeat']} | {NAMES[target]} | {step['rate']:g} | {step['members']} | "
                f"{_f(step['deliveries_per_s'])} | {_f(step['p50_ms'], 1)} | "
                f"{_f(step['p95_ms'], 1)} | {_f(step['p99_ms'], 1)} | {_f(step['max_ms'], 1)} | "
                f"{step['lost']} | {step['acks']} | {step['errors']} | "
                f"{_f(step['server_cpu_us_per_delivery'], 1)} | "
                f"{_f(step['server_cpu_percent'])}% | {_f(step['redis_cpu_s'], 2)} | "
                f"{_f(step['loadgen_cpu_percent'])}% | {'pass' if step['passed'] else 'FAIL'} |"
            )
    return rows


LADDER_HEAD = (
    "| rep | server | msgs/s | members | deliveries/s | p50 ms | p95 ms | p99 ms | max ms | "
    "lost | acks | errors | server CPU µs/delivery | server CPU | Redis CPU s | "
    "loadgen CPU | step |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)

# A row: its name, how to read the figure from one target's result, whether
# lower is better, and digits.
Row = tuple[str, Callable[[dict | None], Any], bool, int]


def _at(*path: str) -> Callable[[dict | None], Any]:
    """A row's reader: the figure at `path` in one target's result."""
    return lambda result: _get(result, *path)


def _head(targets: list[str]) -> list[str]:
    peers = [t for t in targets if t in PEERS]
    names = [NAMES[t] for t in targets] + [f"ours / {NAMES[p]}" for p in peers]
    return [
        "| rep | figure | " + " | ".join(names) + " |",
        "|---|---|" + "---|" * len(names),
    ]


def _rows(entry: dict, targets: list[str], rows: list[Row]) -> list[str]:
    """One line per row: each target's figure, then ours as a ratio to each peer's."""
    out = []
    peers = [t for t in targets if t in PEERS]
    for name, read, lower, digits in rows:
        values = {t: read(entry.get(t)) for t in targets}
        cells = [_f(values[t], digits) for t in targets]
        cells += [_ratio(values.get("ours"), values[p], lower_is_better=lower) for p in peers]
        out.append(f"| {entry['repeat']} | {name} | " + " | ".join(cells) + " |")
    return out


def _sustained_table(entries: list[dict], title: str, *, light: bool = True) -> list[str]:
    targets = _targets(entries)
    out = [f"#### {title}: sustained (highest passing step) and light load", "", *_head(targets)]
    rows: list[Row] = [
        ("sustained msgs/s", lambda r: _get(r, "sustained", "rate"), False, 1),
        ("sustained deliveries/s", lambda r: _get(r, "sustained", "deliveries_per_s"), False, 0),
        ("p99 at sustained, ms", lambda r: _get(r, "sustained", "p99_ms"), True, 1),
        (
            "server CPU µs/delivery at sustained",
            lambda r: _get(r, "sustained", "server_cpu_us_per_delivery"),
            True,
            1,
        ),
        (f"light load ({LIGHT}/s) p99, ms", lambda r: _get(r, "light", "p99_ms"), True, 1),
        (
            "light load CPU µs/delivery",
            lambda r: _get(r, "light", "server_cpu_us_per_delivery"),
            True,
            1,
        ),
        ("connect: sockets/s", lambda r: _get(r, "setup", "connect", "per_second"), False, 0),
        ("KiB per connection (RSS)", lambda r: _get(r, "setup", "kib_per_connection"), True, 1),
    ]
    if not light:
        rows = [row for row in rows if not row[0].startswith("light")]
    cells = len(targets) + sum(1 for t in targets if t in PEERS)
    for entry in entries:
        rep = entry["repeat"]
        out += _rows(entry, targets, rows)
        for target in targets:
            over = _get(entry, target, "overload")
            if over:
                rec = over.get("recovery") or {}
                out.append(
                    f"| {rep} | overload ({NAMES[target]}, {over['rate']:g} msgs/s) | "
                    f"lost after settling {over['lost_after_settle']} "
                    f"(silently: {over.get('silently_lost_deliveries', '?')}), "
                    f"errors {over['errors']}, closed sockets {over['closed_sockets']}, "
                    f"sync {json.dumps(over.get('sync'))}, "
                    f"recovery step p99 {_f(rec.get('p99_ms'), 1)} ms "
                    f"{'pass' if rec.get('passed') else 'FAIL'} |" + " |" * (cells - 1)
                )
    return out


LIGHT = 10


def _worst_broadcast(casts: list[dict] | None) -> float:
    casts = casts or []
    values = [x["all_ms"] for x in casts if x.get("all_ms") == x.get("all_ms")]
    return max(values) if len(values) == len(casts) and values else float("nan")


def _w3_table(entries: list[dict]) -> list[str]:
    targets = _targets(entries)
    out = [
        "#### W3: idle connections opened 200 at a time, one broadcast to all",
        "",
        *_head(targets),
    ]
    rows: list[Row] = [
        ("connected", lambda r: _get(r, "setup", "connect", "connected"), False, 0),
        ("failed handshakes", lambda r: _get(r, "setup", "connect", "failed"), True, 0),
        ("connections/s", lambda r: _get(r, "setup", "connect", "per_second"), False, 0),
        ("connect p99 ms", lambda r: _get(r, "setup", "connect", "connect_ms_p99"), True, 1),
        ("KiB per idle connection", lambda r: _get(r, "setup", "kib_per_connection"), True, 1),
        (
            "one broadcast to all, ms (worst of 3)",
            lambda r: _worst_broadcast(_get(r, "broadcasts")),
            True,
            1,
        ),
    ]
    for entry in entries:
        out += _rows(entry, targets, rows)
    return out


def _w5_table(entries: list[dict]) -> list[str]:
    targets = _targets(entries)
    out = [
        "#### W5: connect and join one group, then reconnect (sockets opened in batches)",
        "",
        *_head(targets),
    ]
    rows: list[Row] = []
    for phase in ("connect", "reconnect"):
        rows += [
            (f"{phase}: sockets/s", _at(phase, "per_second"), False, 0),
            (f"{phase}: ok", _at(phase, "ok"), False, 0),
            (f"{phase}: failed", _at(phase, "failed"), True, 0),
            (f"{phase}: p99 ms", _at(phase, "ms_p99"), True, 1),
            (f"{phase}: server CPU ms/socket", _at(phase, "server_cpu_ms_per_socket"), True, 2),
            (
                f"one message to the group after {phase}, ms to the last member",
                _at(f"broadcast_after_{phase}", "all_ms"),
                True,
                1,
            ),
        ]
    for entry in entries:
        out += _rows(entry, targets, rows)
    return out


def _w6_table(entries: list[dict]) -> list[str]:
    targets = _targets(entries)
    out = [f"#### W6: a quiet room ({LIGHT} messages/s)", "", *_head(targets)]
    rows: list[Row] = [
        ("members", lambda r: _get(r, "quiet", "members"), False, 0),
        ("p50 ms", lambda r: _get(r, "quiet", "p50_ms"), True, 1),
        ("p99 ms", lambda r: _get(r, "quiet", "p99_ms"), True, 1),
        ("max ms", lambda r: _get(r, "quiet", "max_ms"), True, 1),
        ("lost", lambda r: _get(r, "quiet", "lost"), True, 0),
        (
            "server CPU µs/delivery",
            lambda r: _get(r, "quiet", "server_cpu_us_per_delivery"),
            True,
            1,
        ),
    ]
    for entry in entries:
        out += _rows(entry, targets, rows)
    return out


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        f"### Run {report['started']} (git {report.get('git', '')})",
        "",
        f"Machine: {m['host']}, nproc {m['nproc']}, {m['memory_gib']} GiB, {m['cpu']}, "
        f"Python {m['python']}. Load generator loop: {report.get('loadgen_loop')}. "
        f"Config: `{json.dumps(report['config'])}`",
        "",
    ]
    by_workload: dict[str, list[dict]] = {}
    for entry in report["runs"]:
        by_workload.setdefault(entry["workload"], []).append(entry)
    for workload, entries in by_workload.items():
        lines.append(f"### {workload}")
        lines.append("")
        for entry in entries:
            for target in TARGETS:
                if _get(entry, target, "error"):
                    lines.append(
                        f"- repeat {entry['repeat']} {target}: ERROR {entry[target]['error']}"
                    )
        if workload == "W3":
            lines += _w3_table(entries)
        elif workload == "W5":
            lines += _w5_table(entries)
        elif workload == "W6":
            lines += _w6_table(entries)
        else:
            lines += _sustained_table(entries, workload, light=workload != "W4")
            lines += ["", f"#### {workload}: every step", "", LADDER_HEAD]
            for entry in entries:
                lines += _ladder_rows(entry)
        lines.append("")
    return "\n".join(lines) + "\n"


def main(path: str) -> None:
    report = json.loads(Path(path).read_text())
    print(markdown(report))
