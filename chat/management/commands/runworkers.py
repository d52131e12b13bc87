"""`python manage.py runworkers --workers 3 --base-port 8001`: N daphne workers.

Starts one daphne process per port (base-port, base-port + 1, ...), all with
this environment, so they share `REDIS_URL` and `DATABASE_URL` and act as one
server; put a proxy such as nginx in front (deploy/nginx.conf). A worker that
dies is started again after a short pause. SIGTERM or Ctrl-C stops them all:
each worker gets SIGTERM, closes its sockets with 1012 spread over
`CHAT_RESTART_SPREAD` seconds and drops its presence, and is killed if it has
not exited within `--stop-timeout` seconds (by default the spread plus 10).

SIGHUP restarts them one at a time (a new release, say): each is stopped as
above, started again, and answering `/healthz` before the next one stops, so
there is always a worker to reconnect to.

Each worker listens with a backlog of `--backlog` connections (2048, as
uvicorn and gunicorn do). daphne's own is Twisted's 50: a burst of sockets
(every client reconnecting after a restart, say) overflowed it, and each
connection the kernel dropped waited a second for its SYN to be sent again.

With CHAT_LOG_FORMAT=json every line it writes is JSON, as its workers' are:
its own lines, the system checks and its errors go through logging then.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from daphne.endpoints import build_endpoint_description_strings
from django.conf import settings
from django.core import checks
from django.core.management.base import BaseCommand, CommandError, CommandParser

logger = logging.getLogger("chat.runworkers")

# Seconds between checks on the workers, and before starting a dead one again
# (so a worker that cannot start does not spin).
_POLL = 0.5
_RESTART_DELAY = 2.0
# Seconds a restarted worker has to answer /healthz before the next one is restarted anyway.
_START_TIMEOUT = 60.0
# Seconds a stopping worker is given beyond CHAT_RESTART_SPREAD (it holds its
# exit for at most the spread plus 5, chat.delivery.hub).
_STOP_MARGIN = 10.0


class Command(BaseCommand):
    help = "Run several daphne workers on consecutive ports (they need REDIS_URL to act as one)."
    # Run by `handle` instead (`_check`), so that what they say can be JSON.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--workers", type=int, default=2, help="number of processes")
        parser.add_argument("--base-port", type=int, default=8001, help="port of the first")
        parser.add_argument("--host", default="127.0.0.1", help="address to bind")
        parser.add_argument(
            "--stop-timeout",
            type=float,
            default=None,
            help="seconds to wait for a clean exit (default: CHAT_RESTART_SPREAD + 10)",
        )
        parser.add_argument(
            "--backlog", type=int, default=2048, help="connections the kernel queues per worker"
        )
        # Django adds it only with requires_system_checks, which this runs itself.
        parser.add_argument("--skip-checks", action="store_true", help="skip system checks")

    def execute(self, *args: Any, **options: Any) -> Any:
        if not _json():
            return super().execute(*args, **options)
        try:
            return super().execute(*args, **options)
        except CommandError as error:
            # Django would print "CommandError: ..." as plain text.
            logger.error("%s", error)
            sys.exit(error.returncode)

    def _say(self, line: str) -> None:
        if _json():
            logger.info("%s", line)
        else:
            self.stdout.write(line)

    def _complain(self, line: str) -> None:
        if _json():
            logger.warning("%s", line)
        else:
            self.stderr.write(line)

    def _check(self) -> None:
        """Django's system checks, as `requires_system_checks` would run them."""
        if not _json():
            self.check()
            return
        found = [message for message in checks.run_checks() if not message.is_silenced()]
        for message in found:
            level = (
                logging.ERROR
                if message.is_serious()
                else logging.WARNING
                if message.is_serious(checks.WARNING)
                else logging.INFO
            )
            hint = f" ({message.hint})" if message.hint else ""
            logger.log(
                level, "%s: %s%s", message.id, message.msg, hint, extra={"check": message.id}
            )
        if any(message.is_serious() for message in found):
            raise CommandError("the system checks found errors; see above")

    def handle(self, *args: Any, **options: Any) -> None:
        if not options.get("skip_checks"):
            self._check()
        count: int = options["workers"]
        if count < 1:
            raise CommandError("--workers must be at least 1")
        if count > 1 and not settings.REDIS_URL:
            raise CommandError(
                "several workers share presence and messages through Redis: set REDIS_URL "
                "(e.g. redis://127.0.0.1:6379/0), or run one worker"
            )
        ports = [options["base_port"] + i for i in range(count)]
        host: str = options["host"]
        stopping = False
        restart_requested = False

        def request_stop(signum: int, frame: Any) -> None:
            nonlocal stopping
            stopping = True

        def request_restart(signum: int, frame: Any) -> None:
            nonlocal restart_requested
            restart_requested = True

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGHUP, request_restart)
        stop_timeout = options["stop_timeout"]
        if stop_timeout is None:
            stop_timeout = settings.CHAT_RESTART_SPREAD + _STOP_MARGIN

        backlog: int = options["backlog"]
        if backlog < 1:
            raise CommandError("--backlog must be at least 1")
        processes = {port: self._start(host, port, backlog) for port in ports}
        self._say(
            f"{count} workers on {', '.join(f'{host}:{p}' for p in ports)}; Ctrl-C stops them"
        )
        died_at: dict[int, float] = {}
        try:
            while not stopping:
                time.sleep(_POLL)
                if restart_requested:
                    restart_requested = False
                    self._restart_one_by_one(
                        processes, host, backlog, stop_timeout, lambda: stopping
                    )
                for port, process in list(processes.items()):
                    if process.poll() is None or stopping:
                        continue
                    now = time.monotonic()
                    if port not in died_at:
                        self._complain(
                            f"worker on port {port} exited with {process.returncode}; restarting"
                        )
                        died_at[port] = now
                    elif now - died_at[port] >= _RESTART_DELAY:
                        del died_at[port]
                        processes[port] = self._start(host, port, backlog)
        finally:
            self._stop_all(list(processes.values()), stop_timeout)
            self._say("all workers stopped")

    def _restart_one_by_one(
        self,
        processes: dict[int, subprocess.Popen[bytes]],
        host: str,
        backlog: int,
        stop_timeout: float,
        stopping: Callable[[], bool],
    ) -> None:
        """Stop, start and wait for each worker in turn; the others hold its clients."""
        for port in list(processes):
            if stopping():
                return
            self._say(f"restarting the worker on port {port}")
            self._stop_all([processes[port]], stop_timeout)
            processes[port] = self._start(host, port, backlog)
            if not self._wait_answering(host, port, processes[port]):
                self._complain(f"the worker on port {port} is not answering; going on")
        self._say("every worker restarted")

    def _wait_answering(self, host: str, port: int, process: subprocess.Popen[bytes]) -> bool:
        """Whether the worker answers /healthz (any status) within _START_TIMEOUT."""
        address = "127.0.0.1" if host in ("0.0.0.0", "") else host
        url = f"http://{address}:{port}/healthz"
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline and process.poll() is None:
            try:
                with urllib.request.urlopen(url, timeout=2):
                    return True
            except urllib.error.HTTPError:
                return True  # it answers; 503 only says a dependency is down
            except OSError:
                time.sleep(_POLL)
        return False

    def _start(self, host: str, port: int, backlog: int) -> subprocess.Popen[bytes]:
        # daphne's -b/-p cannot set a backlog; its endpoint syntax can.
        (endpoint,) = build_endpoint_description_strings(host=host, port=port)
        command = [sys.executable, "-m", "daphne", "-e", f"{endpoint}:backlog={backlog}"]
        return subprocess.Popen([*command, "chatsite.asgi:application"])

    def _stop_all(self, processes: list[subprocess.Popen[bytes]], timeout: float) -> None:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in processes:
            try:
                process.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                self._complain(f"worker {process.pid} did not stop in {timeout}s; killing it")
                process.kill()
                process.wait(timeout=5)


def _json() -> bool:
    return bool(settings.CHAT_LOG_FORMAT == "json")
