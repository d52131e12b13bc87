"""Markdown tables from a results.json (python -m bench report PATH)."""

from __future__ import annotations

import json
import math
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


def _ladder_rows(entry: dict) -> list[str]:
    rows = []
    for target in ("ours", "peer"):
        for step in _get(entry, target, "steps") or []:
            rows.append(
                f"| {entry['repeat']} | {target} | {step['rate']:g} | {step['members']} | "
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


def _sustained_table(entries: list[dict], title: str, *, light: bool = True) -> list[str]:
    out = [
        f"#### {title}: sustained (highest passing step) and light load",
        "",
        "| rep | figure | ours | peer | ratio |",
        "|---|---|---|---|---|",
    ]
    for entry in entries:
        rep = entry["repeat"]
        ours_s, peer_s = _get(entry, "ours", "sustained"), _get(entry, "peer", "sustained")
        ours_l, peer_l = _get(entry, "ours", "light"), _get(entry, "peer", "light")
        rows = [
            ("sustained msgs/s", _get(ours_s, "rate"), _get(peer_s, "rate"), False, 1),
            (
                "sustained deliveries/s",
                _get(ours_s, "deliveries_per_s"),
                _get(peer_s, "deliveries_per_s"),
                False,
                0,
            ),
            ("p99 at sustained, ms", _get(ours_s, "p99_ms"), _get(peer_s, "p99_ms"), True, 1),
            (
                "server CPU µs/delivery at sustained",
                _get(ours_s, "server_cpu_us_per_delivery"),
                _get(peer_s, "server_cpu_us_per_delivery"),
                True,
                1,
            ),
            (
                f"light load ({LIGHT}/s) p99, ms",
                _get(ours_l, "p99_ms"),
                _get(peer_l, "p99_ms"),
                True,
                1,
            ),
            (
                "light load CPU µs/delivery",
                _get(ours_l, "server_cpu_us_per_delivery"),
                _get(peer_l, "server_cpu_us_per_delivery"),
                True,
                1,
            ),
            (
                "connect: sockets/s",
                _get(entry, "ours", "setup", "connect", "per_second"),
                _get(entry, "peer", "setup", "connect", "per_second"),
                False,
                0,
            ),
            (
                "KiB per connection (RSS)",
                _get(entry, "ours", "setup", "kib_per_connection"),
                _get(entry, "peer", "setup", "kib_per_connection"),
                True,
                1,
            ),
        ]
        if not light:
            rows = [row for row in rows if not row[0].startswith("light")]
        for name, ours, peer, lower, digits in rows:
            out.append(
                f"| {rep} | {name} | {_f(ours, digits)} | {_f(peer, digits)} | "
                f"{_ratio(ours, peer, lower_is_better=lower)} |"
            )
        for target in ("ours", "peer"):
            over = _get(entry, target, "overload")
            if over:
                rec = over.get("recovery") or {}
                out.append(
                    f"| {rep} | overload ({target}, {over['rate']:g} msgs/s) | "
                    f"lost after settling {over['lost_after_settle']} "
                    f"(silently: {over.get('silently_lost_deliveries', '?')}), "
                    f"errors {over['errors']}, closed sockets {over['closed_sockets']}, "
                    f"sync {json.dumps(over.get('sync'))}, "
                    f"recovery step p99 {_f(rec.get('p99_ms'), 1)} ms "
                    f"{'pass' if rec.get('passed') else 'FAIL'} | | |"
                )
    return out


LIGHT = 10


def _w3_table(entries: list[dict]) -> list[str]:
    out = [
        "#### W3: idle connections opened 200 at a time, one broadcast to all",
        "",
        "| rep | figure | ours | peer | ratio |",
        "|---|---|---|---|---|",
    ]
    for entry in entries:
        rep = entry["repeat"]

        def c(target: str, key: str, entry: dict = entry) -> Any:
            return _get(entry, target, "setup", "connect", key)

        def b(target: str, entry: dict = entry) -> Any:
            casts = _get(entry, target, "broadcasts") or []
            values = [x["all_ms"] for x in casts if x.get("all_ms") == x.get("all_ms")]
            return max(values) if len(values) == len(casts) and values else float("nan")

        rows = [
            ("connected", c("ours", "connected"), c("peer", "connected"), False, 0),
            ("failed handshakes", c("ours", "failed"), c("peer", "failed"), True, 0),
            ("connections/s", c("ours", "per_second"), c("peer", "per_second"), False, 0),
            ("connect p99 ms", c("ours", "connect_ms_p99"), c("peer", "connect_ms_p99"), True, 1),
            (
                "KiB per idle connection",
                _get(entry, "ours", "setup", "kib_per_connection"),
                _get(entry, "peer", "setup", "kib_per_connection"),
                True,
                1,
            ),
            ("one broadcast to all, ms (worst of 3)", b("ours"), b("peer"), True, 1),
        ]
        for name, ours, peer, lower, digits in rows:
            out.append(
                f"| {rep} | {name} | {_f(ours, digits)} | {_f(peer, digits)} | "
                f"{_ratio(ours, peer, lower_is_better=lower)} |"
            )
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
            for target in ("ours", "peer"):
                if _get(entry, target, "error"):
                    lines.append(
                        f"- repeat {entry['repeat']} {target}: ERROR {entry[target]['error']}"
                    )
        if workload == "W3":
            lines += _w3_table(entries)
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
