"""Group commit: a worker's sends are stored in batches, one transaction each.

Storing one message costs a hop to Channels' single database thread, a
transaction, the global lock that makes ids visible in id order (see
`chat.messaging`) and a commit. Paid once per message, that caps a worker at
what the database thread does one message at a time, and a second worker adds
nothing since both wait on the same lock. So every send of the running loop
goes through one `SendQueue`: a single writer takes everything waiting (up to
`MAX_BATCH`) and stores it with one `message_send_many` call. There is no
timer: when the writer is idle a batch is the one message that just came (no
added latency); under load, the sends that arrive while a batch is in the
database form the next batch, so batches grow with the load.

The ordering guarantee is kept: each batch takes the lock once and its ids are
allocated inside it, so they commit together, after every earlier batch and
before every later one.

Delivery starts here too, not in the sender's socket: after a batch commits,
its messages go in id order through one task to the hub, so live delivery
never reorders them and happens even if the sender's socket closed (or its
task was cancelled) while the message was being stored.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from channels.db import database_sync_to_async
from django.contrib.auth.models import User

from chat.cancellation import raise_if_cancelled
from chat.messaging import SendRequest, StoredMessage, message_send_many
from chat.metrics import TALLY
from chat.protocol import UNAVAILABLE, Address, ChatError

logger = logging.getLogger(__name__)

# Most messages stored in one transaction: it bounds how long a batch holds the
# order lock, which every other worker's sends wait for. Past about a hundred
# a message gets little cheaper while the lock is held proportionally longer
# (batch timings in bench/RESULTS.md).
MAX_BATCH = 100


@dataclass(frozen=True, slots=True)
class _Send:
    request: SendRequest
    result: asyncio.Future[StoredMessage]


class SendQueue:
    """The worker's sends (`chat.worker`): stored in batches, then delivered in id order."""

    def __init__(self, *, deliver: Callable[[list[StoredMessage]], Awaitable[None]]) -> None:
        """`deliver` takes stored messages, in id order, to their audiences (the hub)."""
        loop = asyncio.get_running_loop()
        self._deliver = deliver
        self._sends: asyncio.Queue[_Send] = asyncio.Queue()
        self._stored: asyncio.Queue[StoredMessage] = asyncio.Queue()
        # Fresh contexts, not the first sender's: a consumer's context can say
        # that asgiref's database thread is its own, and these tasks outlive it.
        self._tasks = [
            loop.create_task(
                self._write_loop(), name="chat-send-writer", context=contextvars.Context()
            ),
            loop.create_task(
                self._deliver_loop(), name="chat-send-delivery", context=contextvars.Context()
            ),
        ]

    @property
    def running(self) -> bool:
        return not any(task.done() for task in self._tasks)

    @property
    def depth(self) -> int:
        """Sends waiting to be stored, and stored messages waiting to be delivered."""
        return self._sends.qsize() + self._stored.qsize()

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()

    async def submit(
        self,
        sender: User,
        to: Address,
        body: str,
        cid: str | None = None,
        reply_to: int | None = None,
        files: tuple[str, ...] = (),
    ) -> StoredMessage:
        """Store a message; return it once committed, or raise `ChatError`.

        The queue delivers it. A caller cancelled meanwhile does not take the
        message back: it is still stored and delivered. A repeat of a stored
        `cid` returns that message (`replayed`), which is not delivered again.
        """
        result: asyncio.Future[StoredMessage] = asyncio.get_running_loop().create_future()
        self._sends.put_nowait(_Send(SendRequest(sender, to, body, cid, reply_to, files), result))
        return await result

    async def _write_loop(self) -> None:
        while True:
            batch = [await self._sends.get()]
            while len(batch) < MAX_BATCH and not self._sends.empty():
                batch.append(self._sends.get_nowait())
            try:
                await self._write(batch)
            except asyncio.CancelledError:
                # The loop is ending: nobody is left to store what waits.
                for send in batch:
                    send.result.cancel()
                while not self._sends.empty():
                    self._sends.get_nowait().result.cancel()
                raise
            except Exception:
                logger.exception("storing a batch of %d messages failed", len(batch))
                for send in batch:
                    if not send.result.done():
                        send.result.set_exception(_unavailable())

    async def _write(self, batch: list[_Send]) -> None:
        store = database_sync_to_async(message_send_many)
        results = await store([send.request for send in batch])
        if len(results) != len(batch):
            raise RuntimeError(f"{len(results)} results for a batch of {len(batch)}")
        # Senders first: each writes its ack as soon as it wakes, while its own
        # copy of the message still has the whole trip through the layer ahead.
        for send, result in zip(batch, results, strict=True):
            if send.result.done():
                continue  # its sender was cancelled; the message stands
            if isinstance(result, ChatError):
                send.result.set_exception(result)
            else:
                send.result.set_result(result)
        stored = [
            result
            for result in results
            if isinstance(result, StoredMessage) and not result.replayed
        ]
        TALLY.messages_stored += len(stored)
        for message in sorted(stored, key=lambda message: message.id):
            self._stored.put_nowait(message)

    async def _deliver_loop(self) -> None:
        while True:
            messages = [await self._stored.get()]
            while not self._stored.empty():
                messages.append(self._stored.get_nowait())
            try:
                await self._deliver(messages)
            except Exception:
                # Stored and acked: recipients get them when they next sync.
                logger.exception(
                    "could not deliver messages %d-%d live", messages[0].id, messages[-1].id
                )
            raise_if_cancelled()


def _unavailable() -> ChatError:
    return ChatError(UNAVAILABLE, "the server failed; try again")
