"""The default-deadline reaper: one timer for every watched call."""

from __future__ import annotations

import asyncio

import pytest

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


async def test_bound_turns_the_reapers_cancel_into_a_timeout_and_leaves_other_cancels_alone() -> None:
    reaper = DeadlineReaper(resolution=0.01)
    loop = asyncio.get_running_loop()
    with pytest.raises(TimeoutError):
        async with reaper.bound(loop.time() + 0.05):
            await asyncio.sleep(5)
    current = asyncio.current_task()
    assert current is not None
    assert current.cancelling() == 0

    async def caller_leaves() -> None:
        async with reaper.bound(loop.time() + 600):
            await asyncio.sleep(5)

    task = asyncio.ensure_future(caller_leaves())
    await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    reaper.close()
