"""One trip for many callers: calls that arrive while a trip is out go together in the next.

Channels runs every database call on one thread. A burst of sockets opening at
once made three trips each (session and user, groups, `last_id`), and each trip
paid its own hop to that thread and back and waited behind all the others'.
`Coalescer` keeps at most one trip out per loop; whoever calls while it is out
joins the next one, so at rest a call goes alone and at once, and under a burst
the trips get fewer and fuller instead of longer queues. Every call still gets
its own answer, or its own exception: a trip that fails as a whole is made
again one call at a time, so one caller's bad argument fails only that caller.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Generic, TypeVar

from chat.database import bounded
from chat.protocol import UNAVAILABLE, ChatError

A = TypeVar("A")
R = TypeVar("R")


class Coalescer(Generic[A, R]):
    """`await coalescer(arg)`: `run_many` gets the args of every call waiting, in order.

    It answers, for each, the call's value or the exception the call raised.
    """

    def __init__(
        self, run_many: Callable[[list[A]], Awaitable[Sequence[R | BaseException]]]
    ) -> None:
        self._run_many = run_many
        self._waiting: list[tuple[A, asyncio.Future[R]]] = []
        self._trips: asyncio.Task[None] | None = None

    async def __call__(self, arg: A) -> R:
        [answer] = self._enqueue([arg])
        return await answer

    async def many(self, args: Sequence[A]) -> list[R]:
        """`await self(arg)` for each of `args`, on the same trips, without a task each
        (a socket of a user in 10,000 groups joins 10,000 layer groups)."""
        if not args:
            return []
        return list(await asyncio.gather(*self._enqueue(args)))

    def _enqueue(self, args: Sequence[A]) -> list[asyncio.Future[R]]:
        loop = asyncio.get_running_loop()
        if self._trips is not None and self._trips.get_loop() is not loop:
            # Left over from a closed loop (tests run one loop per test).
            self._trips, self._waiting = None, []
        answers: list[asyncio.Future[R]] = [loop.create_future() for _ in args]
        self._waiting.extend(zip(args, answers, strict=True))
        if self._trips is None:
            # A context of its own: not the first caller's (asgiref's record
            # of which sync thread that caller's chain uses, for one).
            self._trips = loop.create_task(self._make_trips(), context=contextvars.Context())
        return answers

    async def _make_trips(self) -> None:
        calls: list[tuple[A, asyncio.Future[R]]] = []
        try:
            while self._waiting:
                calls, self._waiting = self._waiting, []
                calls = [(arg, answer) for arg, answer in calls if not answer.done()]
                if not calls:
                    continue
                outcomes = await self._outcomes([arg for arg, _ in calls])
                for (_, answer), outcome in zip(calls, outcomes, strict=True):
                    if answer.done():
                        continue  # its caller gave up
                    if isinstance(outcome, BaseException):
                        answer.set_exception(outcome)
                    else:
                        answer.set_result(outcome)
        finally:
            # Left unanswered only if this task was cancelled: so are they.
            self._trips = None
            for _, answer in [*calls, *self._waiting]:
                answer.cancel()
            self._waiting = []

    async def _outcomes(self, args: list[A]) -> Sequence[R | BaseException]:
        """`run_many` of `args`; if the trip fails, each call again on a trip of its own.

        One bad argument (a key the database refuses, say) must fail only its
        own caller, not everyone who happened to share its trip.
        """
        try:
            return await self._run_many(args)
        except ChatError as exc:
            if exc.code == UNAVAILABLE or len(args) == 1:
                # The database did not answer: asking again for each caller
                # would make each wait once more.
                return [exc] * len(args)
        except Exception as exc:
            if len(args) == 1:
                return [exc]
        outcomes: list[R | BaseException] = []
        for arg in args:
            try:
                outcomes.extend(await self._run_many([arg]))
            except Exception as exc:
                outcomes.append(exc)
        return outcomes


def each(call: Callable[[A], R], args: Iterable[A]) -> list[R | BaseException]:
    """`call` of every argument, in order: its value, or the exception it raised.

    What a trip made of separate calls answers, so that one failing call
    fails only its own caller.
    """
    outcomes: list[R | BaseException] = []
    for arg in args:
        try:
            outcomes.append(call(arg))
        except Exception as exc:
            outcomes.append(exc)
    return outcomes


def bulk_read(call_many: Callable[[list[A]], Mapping[A, R]]) -> Coalescer[A, R]:
    """`call_many` answers for many arguments at once (one query for all, say), by argument.

    The same argument may come twice in a trip (two sockets of one user).
    Trips run on the socket-read threads within the database time limit
    (`chat.database.bounded`): a handshake never waits on Channels' one
    database thread behind a stalled write.
    """

    def run_many(args: list[A]) -> list[R | BaseException]:
        answers = call_many(args)
        return [answers[arg] for arg in args]

    return Coalescer(bounded(run_many))
