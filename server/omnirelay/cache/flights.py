"""Coalescing: identical calls in flight share one upstream call.

The first call for a key starts a *flight*: a task of its own that calls
upstream and publishes what it gets (one response, or a stream's events as they
arrive). Every caller, the first included, follows the flight. Running the
upstream call in its own task is what lets a caller leave without taking the
others' answer with it: a follower's cancel ends only its own wait, and the
flight is cancelled (closing the upstream) only when nobody follows it any
more. A flight's failure is raised in every follower.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Generic, TypeVar

from omnirelay import loops

_T = TypeVar("_T")


class Flight(Generic[_T]):
    """What one upstream call has produced so far, for everyone waiting on it."""

    __slots__ = ("_wakeup", "done", "error", "followers", "items", "task")

    def __init__(self) -> None:
        self.items: list[_T] = []
        self.done = False
        self.error: BaseException | None = None
        self.followers = 0
        self.task: asyncio.Task[None] | None = None
        self._wakeup: asyncio.Future[None] = loops.running_loop().create_future()

    def publish(self, item: _T) -> None:
        self.items.append(item)
        self._wake()

    def finish(self, error: BaseException | None = None) -> None:
        self.done = True
        self.error = error
        self._wake()

    def _wake(self) -> None:
        waiting = self._wakeup
        # Once per published item, a streamed token among them: omnirelay.loops, no getpid call.
        self._wakeup = loops.running_loop().create_future()
        if not waiting.done():
            waiting.set_result(None)

    async def first(self) -> _T:
        """The first item (a unary flight's answer), or the flight's error."""
        self.followers += 1
        try:
            while not self.items:
                if self.done:
                    raise (
                        self.error if self.error is not None else RuntimeError("the flight published nothing")
                    )
                await asyncio.shield(self._wakeup)
            return self.items[0]
        finally:
            self._left()

    def _left(self) -> None:
        self.followers -= 1
        if self.followers == 0 and not self.done and self.task is not None:
            # Nobody is left to answer: stop the upstream call (and its billing).
            self.task.cancel()

    async def follow(self) -> AsyncGenerator[_T, None]:
        """Every item, from the first, as it arrives; then the flight's error, if any.

        Use it with ``contextlib.aclosing`` so a follower that stops early leaves at once.
        """
        self.followers += 1
        try:
            seen = 0
            while True:
                while seen < len(self.items):
                    yield self.items[seen]
                    seen += 1
                if self.done:
                    if self.error is not None:
                        raise self.error
                    return
                # Shielded: a follower's cancel must not resolve the future the others wait on.
                await asyncio.shield(self._wakeup)
        finally:
            self._left()


class Flights(Generic[_T]):
    """The flights in progress, by key."""

    def __init__(self) -> None:
        self._live: dict[str, Flight[_T]] = {}

    def get(self, key: str) -> Flight[_T] | None:
        return self._live.get(key)

    def __len__(self) -> int:
        return len(self._live)

    def start(self, key: str, run: Callable[[Flight[_T]], Awaitable[None]]) -> Flight[_T]:
        """A new flight for ``key`` running ``run`` in its own task (which must publish, then return)."""
        flight: Flight[_T] = Flight()
        self._live[key] = flight
        flight.task = asyncio.ensure_future(self._fly(key, flight, run))
        return flight

    async def _fly(self, key: str, flight: Flight[_T], run: Callable[[Flight[_T]], Awaitable[None]]) -> None:
        try:
            await run(flight)
        except asyncio.CancelledError:
            flight.finish(asyncio.CancelledError())
            raise
        except Exception as exc:  # every follower gets the leader's failure
            flight.finish(exc)
        else:
            if not flight.done:
                flight.finish()
        finally:
            if self._live.get(key) is flight:
                del self._live[key]
