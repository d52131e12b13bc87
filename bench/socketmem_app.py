"""chatsite's ASGI app with tracemalloc on, for `python -m bench.socketmem`.

SIGUSR1 writes a tracemalloc snapshot to $SOCKETMEM_OUT/snapN.tm (N = 0, 1,
...; written under another name and renamed, so a file that exists is
complete). SIGUSR2 writes $SOCKETMEM_OUT/protocol.json: what the newest
daphne WebSocketProtocol holds in its instance dict, and how much of that
is the options autobahn copies from the factory onto every connection.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import sys
import tracemalloc
from typing import Any

tracemalloc.start(int(os.environ.get("SOCKETMEM_FRAMES", "1")))

from chatsite.asgi import application  # noqa: E402

__all__ = ["application"]

_snapshots = 0


def _write(name: str, write: Any) -> None:
    path = os.path.join(os.environ["SOCKETMEM_OUT"], name)
    write(path + ".tmp")
    os.rename(path + ".tmp", path)


def _snapshot(signum: int, frame: Any) -> None:
    global _snapshots
    gc.collect()
    _write(f"snap{_snapshots}.tm", tracemalloc.take_snapshot().dump)
    _snapshots += 1


def _protocol_dict(signum: int, frame: Any) -> None:
    from daphne.ws_protocol import WebSocketProtocol

    protocols = [o for o in gc.get_objects() if isinstance(o, WebSocketProtocol)]
    report: dict[str, Any] = {"protocols": len(protocols)}
    if protocols:
        attrs = vars(protocols[-1])
        config = set(protocols[-1].CONFIG_ATTRS)
        copied = [name for name in attrs if name in config]
        rest = {name: value for name, value in attrs.items() if name not in config}
        report.update(
            entries=len(attrs),
            bytes=sys.getsizeof(attrs),
            config_attrs=len(config),
            config_copied=len(copied),
            entries_without_config=len(rest),
            bytes_without_config=sys.getsizeof(dict(rest)),
        )

    def dump(path: str) -> None:
        with open(path, "w") as f:
            json.dump(report, f)

    _write("protocol.json", dump)


signal.signal(signal.SIGUSR1, _snapshot)
signal.signal(signal.SIGUSR2, _protocol_dict)
