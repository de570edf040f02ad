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
from collections.abc import Awaitable
from typing import TypeVar

from omnirelay import loops

_T = TypeVar("_T")


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

    async def run(self, when: float, work: Awaitable[_T]) -> _T:
        """``await work``, raising TimeoutError once ``when`` passes (as ``asyncio.timeout_at``).

        One coroutine, not an async context manager: its enter and exit were two more coroutines
        on every call that sets no deadline of its own.
        """
        # omnirelay.loops: no getpid system call per call, as asyncio.current_task() makes on 3.11.
        task = loops.current_task()
        assert task is not None
        self.watch(task, when)
        try:
            result = await work
        except asyncio.CancelledError as exc:
            if self.unwatch(task):
                # The cancel was the reaper's, not the caller's: it becomes a timeout.
                task.uncancel()
                raise TimeoutError from exc
            raise
        except BaseException:
            self.unwatch(task)
            raise
        self.unwatch(task)
        return result

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
