"""Where the machine's CPU goes, second by second, while a benchmark runs beside it.

`python -m bench.cpusample OUT.txt` writes, once a second until stopped: the
whole machine's CPU from /proc/stat (percent of one core, so 200 is both cores
of the 2-core box: user, system, softirq, idle) and the busiest threads of the
benchmark's processes (python, daphne, uvicorn, redis, postgres) from
/proc/<pid>/task. A step that saturates with idle cores and no thread at 100%
is limited by something other than one process's CPU; bench/RESULTS.md (sixth
session) used it that way. Linux only.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

WATCHED = ("python", "daphne", "uvicorn", "redis", "postgres")
MACHINE_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
TICKS = os.sysconf("SC_CLK_TCK")
CORES = os.cpu_count() or 1


def machine_ticks() -> list[int]:
    with open("/proc/stat") as stat:
        return [int(field) for field in stat.readline().split()[1 : 1 + len(MACHINE_FIELDS)]]


def thread_ticks() -> dict[tuple[str, str, str], int]:
    """(pid, thread id, command) -> CPU ticks so far, for the watched processes."""
    ticks = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            if not any(name in command for name in WATCHED):
                continue
            for tid in os.listdir(f"/proc/{pid}/task"):
                stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
                fields = stat[stat.rindex(")") + 2 :].split()
                ticks[(pid, tid, command[:70])] = int(fields[11]) + int(fields[12])
        except OSError:
            continue  # gone meanwhile
    return ticks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cpusample")
    parser.add_argument("out", type=Path)
    parser.add_argument("--threads", type=int, default=6, help="busiest threads listed")
    args = parser.parse_args(argv)
    machine, threads = machine_ticks(), thread_ticks()
    with args.out.open("w") as out:
        while True:
            time.sleep(1.0)
            machine_now, threads_now = machine_ticks(), thread_ticks()
            spent = [now - before for now, before in zip(machine_now, machine, strict=True)]
            total = sum(spent) or 1
            shares = " ".join(
                f"{name}={100 * CORES * ticks / total:.0f}"
                for name, ticks in zip(MACHINE_FIELDS, spent, strict=True)
            )
            out.write(f"{time.strftime('%H:%M:%S')} {shares}\n")
            busiest = sorted(
                ((now - threads.get(key, now)) * 100 / TICKS, key)
                for key, now in threads_now.items()
            )[::-1][: args.threads]
            for percent, (pid, tid, command) in busiest:
                if percent >= 5:
                    out.write(f"    {percent:4.0f}% {pid}/{tid} {command}\n")
            out.flush()
            machine, threads = machine_now, threads_now


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(0)
