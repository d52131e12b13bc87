"""`python -m bench run --workload W1 --repeat 2`, `python -m bench run --all`.

Also: `python -m bench profile` (py-spy on our worker under W1 load),
`python -m bench report bench/out/<stamp>/results.json` (tables again) and
`python -m bench.socketmem` (where an idle socket's bytes are, by tracemalloc).
See bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    sub = parser.add_subparsers(dest="command", required=True)

    run_p = sub.add_parser("run", help="run workloads against our server and the peer")
    run_p.add_argument(
        "--workload",
        action="append",
        choices=["W1", "W2", "W3", "W4", "W5", "W6", "W7"],
        help="W5: connect and join, reconnect; W6: a quiet room; W7: 200 members react to one"
        " message at once (bench/RESULTS.md)",
    )
    run_p.add_argument("--all", action="store_true", help="W1, W2, W3 and W4")
    run_p.add_argument("--repeat", type=int, default=1)
    run_p.add_argument("--quick", action="store_true", help="tiny sizes, to check the harness")
    run_p.add_argument(
        "--targets",
        default="ours,peer,socketio",
        help="ours,peer,socketio (default: all three; peer = the Channels tutorial)",
    )
    run_p.add_argument("--server", choices=["daphne", "uvicorn"], default="daphne")
    run_p.add_argument("--peer-server", choices=["daphne", "uvicorn"], default="daphne")
    run_p.add_argument("--db", choices=["postgres", "sqlite"], default="postgres")
    run_p.add_argument("--clients", type=int, help="W1/W2 clients (default 200)")
    run_p.add_argument("--step-seconds", type=float, help="seconds per ladder step (default 5)")
    run_p.add_argument("--ladder", help="comma-separated msgs/s for W1/W2")
    run_p.add_argument("--w4-ladder", help="comma-separated msgs/s for W4")
    run_p.add_argument(
        "--variant", default="", help="what-if settings for our server (bench/variants)"
    )
    run_p.add_argument(
        "--connect-batch", type=int, default=200, help="W1/W2/W4 sockets opened at once"
    )
    run_p.add_argument("--no-overload", action="store_true", help="skip the overload check")
    run_p.add_argument("--w3-clients", type=int, help="W3 idle sockets (default 2000)")
    run_p.add_argument("--w3-batch", type=int, help="W3 sockets opened at once (default 200)")
    run_p.add_argument("--w5-clients", type=int, help="W5 sockets (default 2000)")
    run_p.add_argument("--w5-batch", type=int, help="W5 sockets opened at once (default 200)")
    run_p.add_argument("--quiet-seconds", type=float, help="W6's measured step (default 30)")

    prof_p = sub.add_parser("profile", help="py-spy our worker under W1 load")
    prof_p.add_argument("--rate", type=float, default=150, help="messages/s during the profile")
    prof_p.add_argument("--seconds", type=float, default=20)
    prof_p.add_argument("--server", choices=["daphne", "uvicorn"], default="daphne")
    prof_p.add_argument("--db", choices=["postgres", "sqlite"], default="postgres")
    prof_p.add_argument("--clients", type=int, default=200)
    prof_p.add_argument("--variant", default="")
    prof_p.add_argument("--gil", action="store_true", help="py-spy --gil (CPU, not waiting)")
    prof_p.add_argument(
        "--phase",
        choices=["w1", "connect"],
        default="w1",
        help="w1: under W1 load; connect: W5's connect and join, then reconnect",
    )

    rep_p = sub.add_parser("report", help="print the tables of a results.json")
    rep_p.add_argument("path")

    args = parser.parse_args(argv)
    if args.command == "report":
        from bench.report import main as report_main

        report_main(args.path)
        return 0
    if args.command == "profile":
        from bench.profile import profile

        profile(args)
        return 0

    from bench.run import Config, run

    workloads = ["W1", "W2", "W3", "W4"] if args.all else (args.workload or ["W1"])
    config = Config.quick() if args.quick else Config()
    changes: dict = {
        "targets": tuple(t.strip() for t in args.targets.split(",") if t.strip()),
        "server": args.server,
        "peer_server": args.peer_server,
        "db": args.db,
        "overload_check": not args.no_overload,
        "variant": args.variant,
        "connect_batch": args.connect_batch,
    }
    if args.clients:
        changes["clients"] = args.clients
    if args.step_seconds:
        changes["step_seconds"] = args.step_seconds
    for name in ("w3_clients", "w3_batch", "w5_clients", "w5_batch", "quiet_seconds"):
        if getattr(args, name):
            changes[name] = getattr(args, name)
    if args.ladder:
        changes["ladder"] = tuple(float(x) for x in args.ladder.split(","))
    if args.w4_ladder:
        changes["w4_ladder"] = tuple(float(x) for x in args.w4_ladder.split(","))
    config = dataclasses.replace(config, **changes)
    run(workloads, args.repeat, config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
