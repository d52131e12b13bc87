"""A restarting worker spreads its clients' reconnects over CHAT_RESTART_SPREAD and loses nothing.

Two real daphne workers share Redis and the database. 500 sockets (light
asyncio clients, bench/wsclient.py) open on worker A; a sender on worker B
keeps sending acknowledged messages to everyone. A gets SIGTERM: each of
its sockets behaves as the page does on 1012, reconnecting at once to B and
syncing from the highest id it saw. The reconnects must be spread over the
window, A must refuse new handshakes with 503 meanwhile, and every socket
must end up with every acknowledged message.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import urllib.error
import urllib.request
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model

from bench.wsclient import HandshakeError, WSClient, connect
from tests.chatclient import session_cookie_for
from tests.conftest import REDIS_URL
from tests.servers import Worker, running_workers, worker_env

pytestmark = [pytest.mark.processes, pytest.mark.django_db(transaction=True)]

SOCKETS = 500
USERS = 10
SPREAD = 4.0
# Messages per second from the sender: each is a frame to all 500 sockets,
# which a shared two-core machine must carry next to the reconnects.
SEND_RATE = 10
WAIT = 60.0


def _events(payload: bytes) -> list[dict[str, Any]]:
    event = json.loads(payload)
    return event["events"] if event.get("type") == "batch" else [event]


class Tab:
    """One page's socket: keeps the ids of the messages it saw; on 1012, reconnects to
    the survivor at once and syncs from the highest, as chat-client.js does."""

    def __init__(self, cookie: str) -> None:
        self.cookie = cookie
        self.ids: set[int] = set()
        self.updated = asyncio.Event()
        self.greeted: asyncio.Future[None] | None = None
        self.synced: asyncio.Future[None] | None = None
        self.synced_from: int | None = None
        self.client: WSClient | None = None

    def on_text(self, client: WSClient, payload: bytes, _now: int) -> None:
        for event in _events(payload):
            kind = event.get("type")
            if kind == "hello" and self.greeted is not None and not self.greeted.done():
                self.greeted.set_result(None)
            elif kind == "message":
                self.ids.add(event["id"])
            elif kind == "sync":
                listed = [message["id"] for message in event["messages"]]
                self.ids.update(listed)
                if event["more"] and listed:
                    self.send_sync(client, max(listed))
                elif self.synced is not None and not self.synced.done():
                    self.synced.set_result(None)
        self.updated.set()

    @staticmethod
    def send_sync(client: WSClient, since: int) -> None:
        client.send_text(json.dumps({"type": "sync", "since": since}))

    async def open(self, worker: Worker) -> None:
        self.greeted = asyncio.get_running_loop().create_future()
        self.client = await connect(
            "127.0.0.1",
            worker.port,
            "/ws/chat/",
            origin=worker.base_url,
            cookie=f"sessionid={self.cookie}",
            on_text=self.on_text,
        )
        await asyncio.wait_for(self.greeted, WAIT)

    async def follow_restart(self, survivor: Worker, loop: asyncio.AbstractEventLoop) -> tuple:
        """Wait for the close; reconnect to `survivor` and sync. (close code, close time,
        reconnect time)."""
        assert self.client is not None
        code = await self.client.closed
        closed_at = loop.time()
        # The highest id seen before the new socket opens: messages it gets
        # live before the sync is sent say nothing of those stored before it.
        self.synced_from = max(self.ids, default=0)
        await self.open(survivor)
        reconnected_at = loop.time()
        self.synced = loop.create_future()
        self.send_sync(self.client, self.synced_from)
        await asyncio.wait_for(self.synced, WAIT)
        return code, closed_at, reconnected_at

    async def wait_for_all(self, wanted: set[int], timeout: float) -> None:
        try:
            async with asyncio.timeout(timeout):
                while not wanted <= self.ids:
                    self.updated.clear()
                    await self.updated.wait()
        except TimeoutError:
            raise AssertionError(
                f"missing {sorted(wanted - self.ids)} (synced from {self.synced_from})"
            ) from None


class Sender:
    """A socket on the survivor sending to everyone, keeping the ids of acknowledged messages."""

    def __init__(self) -> None:
        self.acked: list[int] = []
        self.pending: dict[str, asyncio.Future[int]] = {}
        self.refs = itertools.count(1)
        self.progress = asyncio.Event()

    def on_text(self, _client: WSClient, payload: bytes, _now: int) -> None:
        for event in _events(payload):
            future = self.pending.pop(event.get("ref") or "", None)
            if future is not None and not future.done():
                if event.get("type") == "ack":
                    future.set_result(event["id"])
                else:
                    future.set_exception(AssertionError(f"send refused: {event}"))

    async def run(self, client: WSClient, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            ref = f"s{next(self.refs)}"
            self.pending[ref] = loop.create_future()
            body = f"message {ref}"
            client.send_text(
                json.dumps({"type": "send", "ref": ref, "to": {"all": True}, "body": body})
            )
            self.acked.append(await asyncio.wait_for(self.pending[ref], WAIT))
            self.progress.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1 / SEND_RATE)


def make_cookies(count: int) -> list[str]:
    users = get_user_model().objects
    return [session_cookie_for(users.create_user(f"tab{i}")) for i in range(count)]


async def open_all(tabs: list[Tab], worker: Worker) -> None:
    for start in range(0, len(tabs), 50):
        await asyncio.gather(*(tab.open(worker) for tab in tabs[start : start + 50]))


async def test_a_restart_spreads_reconnects_over_the_window_and_loses_nothing(redis_prefix):
    loop = asyncio.get_running_loop()
    cookies = await sync_to_async(make_cookies)(USERS + 1)
    env = worker_env(
        redis_url=REDIS_URL,
        redis_prefix=redis_prefix,
        CHAT_RESTART_SPREAD=str(SPREAD),
        CHAT_SOCKETS_PER_USER=str(SOCKETS),
        CHAT_RATE_BURST="10000",
        CHAT_RATE_PER_SECOND="10000",
    )
    with running_workers(2, env) as (restarting, survivor):
        tabs = [Tab(cookies[i % USERS]) for i in range(SOCKETS)]
        await open_all(tabs, restarting)
        sender = Sender()
        sending = await connect(
            "127.0.0.1",
            survivor.port,
            "/ws/chat/",
            origin=survivor.base_url,
            cookie=f"sessionid={cookies[USERS]}",
            on_text=sender.on_text,
        )
        stop = asyncio.Event()
        send_task = asyncio.create_task(sender.run(sending, stop))
        following = [asyncio.create_task(tab.follow_restart(survivor, loop)) for tab in tabs]
        # Messages before the restart too.
        async with asyncio.timeout(WAIT):
            while len(sender.acked) < 5:
                sender.progress.clear()
                await sender.progress.wait()

        restarting.signal(15)
        # While it drains, the restarting worker refuses new sockets with 503.
        await asyncio.wait(following, return_when=asyncio.FIRST_COMPLETED, timeout=WAIT)
        with pytest.raises(HandshakeError) as refused:
            await Tab(cookies[0]).open(restarting)
        assert refused.value.status == 503
        with pytest.raises(urllib.error.HTTPError) as unhealthy:
            await asyncio.to_thread(
                urllib.request.urlopen, restarting.base_url + "/healthz", None, 5
            )
        assert unhealthy.value.code == 503
        assert json.loads(unhealthy.value.read())["worker"] == "stopping"

        results = await asyncio.gather(*following)
        assert restarting.wait_exit(timeout=SPREAD + 10) == 0
        stop.set()
        await send_task
        await sending.close()

        codes = collections.Counter(code for code, _, _ in results)
        assert codes == {1012: SOCKETS}
        # The worker closes a slice every 0.1 s from 0 to SPREAD - 0.1 s, so the
        # closes span 3.9 s; 3 s leaves room for a slow machine, and an
        # all-at-once restart spans well under one second.
        closes = sorted(closed_at for _, closed_at, _ in results)
        assert closes[-1] - closes[0] >= 0.75 * SPREAD
        # About a quarter of them land in each second; all at once would put
        # every one in the first. Half allows a stalled second of catching up.
        reconnects = sorted(reconnected_at for _, _, reconnected_at in results)
        per_second = collections.Counter(int(t - reconnects[0]) for t in reconnects)
        assert max(per_second.values()) <= SOCKETS // 2, per_second
        assert reconnects[-1] - reconnects[0] >= 0.75 * SPREAD

        wanted = set(sender.acked)
        assert len(wanted) >= SEND_RATE * SPREAD / 2
        await asyncio.gather(*(tab.wait_for_all(wanted, WAIT) for tab in tabs))
        for tab in tabs:
            assert tab.client is not None
            await tab.client.close()
