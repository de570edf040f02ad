"""The default-deadline reaper: one timer for every watched call."""

from __future__ import annotations

import asyncio

import pytest

from omnirelay import loops
from omnirelay.resilience.deadlines import DeadlineReaper


async def test_a_watched_task_past_its_deadline_is_cancelled_and_reported_expired() -> None:
    reaper = DeadlineReaper(resolution=0.01)
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(asyncio.sleep(5))
    reaper.watch(task, loop.time() + 0.05)
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, timeout=2.0)
    assert reaper.unwatch(task) is True
    # Reported once: a second unwatch is an ordinary one.
    assert reaper.unwatch(task) is False


async def test_an_unwatched_task_is_left_alone() -> None:
    reaper = DeadlineReaper(resolution=0.01)
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(asyncio.sleep(0.2))
    reaper.watch(task, loop.time() + 0.05)
    assert reaper.unwatch(task) is False
    await asyncio.wait_for(task, timeout=2.0)
    assert not task.cancelled()
    reaper.close()


async def test_an_earlier_deadline_watched_later_still_fires_on_time() -> None:
    # The timer is set for the soonest deadline: a long one first must not delay a short one.
    reaper = DeadlineReaper(resolution=0.01)
    loop = asyncio.get_running_loop()
    slow = asyncio.ensure_future(asyncio.sleep(5))
    quick = asyncio.ensure_future(asyncio.sleep(5))
    reaper.watch(slow, loop.time() + 600)
    reaper.watch(quick, loop.time() + 0.05)
    started = loop.time()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(quick, timeout=2.0)
    assert loop.time() - started < 1.0
    assert reaper.unwatch(quick) is True
    assert not slow.done()
    assert reaper.unwatch(slow) is False
    slow.cancel()
    reaper.close()


async def test_run_turns_the_reapers_cancel_into_a_timeout_and_leaves_other_cancels_alone() -> None:
    reaper = DeadlineReaper(resolution=0.01)
    loop = asyncio.get_running_loop()
    with pytest.raises(TimeoutError):
        await reaper.run(loop.time() + 0.05, asyncio.sleep(5))
    current = asyncio.current_task()
    assert current is not None
    assert current.cancelling() == 0

    task = asyncio.ensure_future(reaper.run(loop.time() + 600, asyncio.sleep(5)))
    await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not reaper._watched
    reaper.close()


async def test_run_returns_the_result_and_lets_errors_through_unwatched() -> None:
    reaper = DeadlineReaper(resolution=0.01)
    loop = asyncio.get_running_loop()

    async def answer() -> int:
        await asyncio.sleep(0)
        return 42

    async def fail() -> None:
        raise ValueError("upstream broke")

    assert await reaper.run(loop.time() + 600, answer()) == 42
    with pytest.raises(ValueError, match="upstream broke"):
        await reaper.run(loop.time() + 600, fail())
    # Nothing stays watched: a finished call must never be cancelled later.
    assert not reaper._watched
    reaper.close()


def test_a_reaper_used_on_a_second_event_loop_watches_that_loops_tasks() -> None:
    # The loop is remembered (omnirelay.loops: no getpid call per lookup); a new loop, as each
    # test gets, must be noticed, not mistaken for the old one.
    reaper = DeadlineReaper(resolution=0.01)

    async def timed_out() -> bool:
        loop = asyncio.get_running_loop()
        # The clock deadlines are given in is this loop's, not the one before.
        assert abs(loops.running_loop().time() - loop.time()) < 0.5
        assert loops.running_loop() is loop
        try:
            await reaper.run(loop.time() + 0.05, asyncio.sleep(5))
        except TimeoutError:
            return True
        return False

    assert asyncio.run(timed_out())
    assert asyncio.run(timed_out())
    assert not reaper._watched
    reaper.close()
