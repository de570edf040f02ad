"""Default deadlines (for callers that set none) with one timer for all calls.

``asyncio.timeout_at`` costs a timer handle, a heap push and a context
manager per call: about 6 us, a few percent of a small unary call, spent on a
deadline (minutes, by default) that almost never fires. The reaper keeps the
watched tasks in a dict and one timer set for the soonest deadline (never
closer together than ``resolution``), so a call costs two dict operations; a
deadline fires at most ``resolution`` late. The caller's own gRPC deadline needs none of this: gRPC
cancels the call itself.
"""

from __future__ import annotations

import asyncio
from types import TracebackType


class DeadlineReaper:
    def __init__(self, resolution: float = 0.05) -> None:
        self._resolution = resolution
        self._watched: dict[asyncio.Task[object], float] = {}
        self._expired: set[asyncio.Task[object]] = set()
        self._handle: asyncio.TimerHandle | None = None
        self._next = 0.0

    def watch(self, task: asyncio.Task[object], when: float) -> None:
        """Cancel ``task`` once the event loop's clock passes ``when``, unless unwatched first."""
        self._watched[task] = when
        # Deadlines of equal length arrive in increasing order, so this rarely reschedules.
        if self._handle is None or when < self._next - self._resolution:
            self._schedule(when)

    def _schedule(self, when: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        loop = asyncio.get_running_loop()
        self._next = max(when, loop.time() + self._resolution)
        self._handle = loop.call_at(self._next, self._tick)

    def unwatch(self, task: asyncio.Task[object]) -> bool:
        """Stop watching; True when the deadline had fired (the cancel was the reaper's)."""
        self._watched.pop(task, None)
        if self._expired and task in self._expired:
            self._expired.discard(task)
            return True
        return False

    def _tick(self) -> None:
        self._handle = None
        if not self._watched:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        due = [task for task, when in self._watched.items() if when <= now]
        for task in due:
            del self._watched[task]
            self._expired.add(task)
            task.cancel()
        if self._watched:
            self._schedule(min(self._watched.values()))

    def bound(self, when: float) -> Bound:
        """``async with reaper.bound(when):`` raises TimeoutError once ``when`` passes (as timeout_at)."""
        return Bound(self, when)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class Bound:
    """One call's default deadline, as an async context manager."""

    __slots__ = ("_reaper", "_task", "_when")

    def __init__(self, reaper: DeadlineReaper, when: float) -> None:
        self._reaper = reaper
        self._when = when
        self._task: asyncio.Task[object] | None = None

    async def __aenter__(self) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._reaper.watch(task, self._when)

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        task = self._task
        assert task is not None
        expired = self._reaper.unwatch(task)
        if expired and kind is asyncio.CancelledError:
            # The cancel was the reaper's, not the caller's: it becomes a timeout.
            task.uncancel()
            raise TimeoutError from exc
