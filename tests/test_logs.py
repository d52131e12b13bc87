"""Log lines: one line per event, text or JSON, closes with code and reason, no bodies."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import pytest

from chat.logs import ConnectionFilter, JsonFormatter, OneLineFormatter, serving_connection
from tests.chatclient import open_real_socket
from tests.servers import HttpSession, Worker, running_workers, worker_env


def record_with_traceback() -> logging.LogRecord:
    try:
        raise ValueError("broken\nacross lines")
    except ValueError:
        import sys

        return logging.LogRecord(
            "chat.test", logging.WARNING, __file__, 1, "it failed for %s", ("c1",), sys.exc_info()
        )


def test_a_text_line_keeps_its_traceback_on_one_line():
    line = OneLineFormatter().format(record_with_traceback())

    assert "\n" not in line
    assert "WARNING chat.test it failed for c1" in line
    assert "ValueError" in line


def test_a_json_line_is_one_object_with_extras_and_traceback():
    record = record_with_traceback()
    record.connection = "c1"

    line = JsonFormatter().format(record)

    assert "\n" not in line
    event = json.loads(line)
    assert event["level"] == "WARNING" and event["logger"] == "chat.test"
    assert event["message"] == "it failed for c1"
    assert event["connection"] == "c1"
    assert "ValueError" in event["exception"]


async def wait_for_log(worker: Worker, needle: str, timeout: float = 10.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        lines = [line for line in worker.log().splitlines() if needle in line]
        if lines:
            return lines
        assert time.monotonic() < deadline, f"no log line with {needle!r}:\n{worker.log()}"
        await asyncio.sleep(0.1)


@pytest.mark.processes
@pytest.mark.django_db(transaction=True)
async def test_a_worker_logs_json_closes_with_code_and_connection_but_no_body():
    with running_workers(1, worker_env(CHAT_LOG_FORMAT="json")) as (worker,):
        cookie = await asyncio.to_thread(HttpSession(worker.base_url).signup, "alice")
        alice = await open_real_socket(worker.base_url, cookie, "alice")
        secret = "a body that must not reach the log"
        await alice.request(type="send", to={"user": "alice"}, body=secret)
        await alice.close()

        closes = await wait_for_log(worker, '"close_code": 1000')
        event = json.loads(closes[0])
        assert event["level"] == "INFO"
        assert event["connection"] and event["connection"] in event["message"]
        assert "normal closure" in event["message"]
        assert secret not in worker.log()


async def test_a_line_logged_while_a_socket_is_served_carries_its_connection():
    tag = ConnectionFilter()

    def logged(message: str) -> logging.LogRecord:
        record = logging.LogRecord("chat.consumers", logging.INFO, __file__, 1, message, (), None)
        assert tag.filter(record)
        return record

    async def consumer() -> tuple[logging.LogRecord, logging.LogRecord]:
        serving_connection("c42")
        # A task the consumer starts is not the consumer: its lines are not tagged.
        return logged("closing"), await asyncio.create_task(started())

    async def started() -> logging.LogRecord:
        return logged("beat")

    served, other = await asyncio.create_task(consumer())
    assert served.connection == "c42"
    assert not hasattr(other, "connection")
    assert not hasattr(logged("outside"), "connection")
    assert OneLineFormatter().format(served).endswith("closing [connection c42]")
    assert json.loads(JsonFormatter().format(served))["connection"] == "c42"


@pytest.mark.processes
@pytest.mark.django_db(transaction=True)
async def test_with_json_every_line_of_a_worker_is_json_and_socket_lines_carry_the_connection():
    env = worker_env(CHAT_LOG_FORMAT="json", CHAT_MAX_ERRORS_PER_MINUTE="1")
    with running_workers(1, env) as (worker,):
        session = HttpSession(worker.base_url)
        cookie = await asyncio.to_thread(session.signup, "alice")
        # Django's own line (django.request, WARNING) and daphne's access log.
        assert (await asyncio.to_thread(session.get, "/no-such-page/"))[0] == 404
        alice = await open_real_socket(worker.base_url, cookie, "alice")
        secret = "a body that must not reach the log"
        await alice.request(type="send", to={"user": "alice"}, body=secret)
        # Two errors: the consumer closes the socket and says why, without `extra`.
        await alice.send_text("not json")
        await alice.send_text("not json either")
        assert await alice.expect_close() == 1008

        [closed] = await wait_for_log(worker, '"close_code": 1008')
        connection = json.loads(closed)["connection"]
        await wait_for_log(worker, "/no-such-page/")
        await wait_for_log(worker, "too many errors")
    events = [json.loads(line) for line in worker.log().splitlines() if line.strip()]
    assert all(isinstance(event, dict) for event in events)
    loggers = {event["logger"] for event in events}
    assert {"daphne.access", "django.request", "chat.consumers"} <= loggers, loggers
    [too_many] = [event for event in events if "too many errors" in event["message"]]
    assert too_many["connection"] == connection
    assert secret not in worker.log()


@pytest.mark.django_db
def test_with_json_runworkers_logs_what_the_system_checks_say_and_its_errors(settings, caplog):
    """Django's checks printed "System check identified some issues:" as plain text."""
    from django.core import checks
    from django.core.management import call_command

    def a_check(app_configs=None, **kwargs):
        return [
            checks.Warning("a warning of the test", id="test.W001"),
            checks.Error("an error of the test", hint="fix it", id="test.E001"),
        ]

    settings.CHAT_LOG_FORMAT = "json"
    checks.register(a_check)
    caplog.set_level(logging.INFO, logger="chat.runworkers")
    try:
        with pytest.raises(SystemExit) as exited:
            call_command("runworkers", "--workers", "1", skip_checks=False)
    finally:
        checks.registry.registry.registered_checks.discard(a_check)

    assert exited.value.code == 1
    said = {(r.levelname, r.getMessage()) for r in caplog.records if r.name == "chat.runworkers"}
    assert ("WARNING", "test.W001: a warning of the test") in said
    assert ("ERROR", "test.E001: an error of the test (fix it)") in said
    assert ("ERROR", "the system checks found errors; see above") in said
