"""omnirelay.loops: the running loop and task, remembered per thread instead of asked of asyncio."""

from __future__ import annotations

import asyncio
import threading

import pytest

from omnirelay import loops


def test_each_new_event_loop_is_the_one_found() -> None:
    async def found() -> tuple[bool, bool]:
        return (
            loops.running_loop() is asyncio.get_running_loop(),
            loops.current_task() is asyncio.current_task(),
        )

    assert asyncio.run(found()) == (True, True)
    # A second loop on the same thread, after the first has closed.
    assert asyncio.run(found()) == (True, True)


def test_outside_a_loop_it_raises_as_asyncio_does() -> None:
    async def nothing() -> None:
        loops.running_loop()

    asyncio.run(nothing())  # remembered, then closed
    with pytest.raises(RuntimeError):
        loops.running_loop()


def test_a_thread_finds_its_own_loop_while_another_runs_elsewhere() -> None:
    seen: dict[str, bool] = {}
    started = threading.Event()
    stop = threading.Event()

    async def background() -> None:
        seen["thread"] = loops.running_loop() is asyncio.get_running_loop()
        started.set()
        # Kept running (a thread-safe event the loop's executor waits on) while main runs its own.
        await asyncio.get_running_loop().run_in_executor(None, stop.wait)

    thread = threading.Thread(target=lambda: asyncio.run(background()))
    thread.start()
    try:
        assert started.wait(5)

        async def main() -> bool:
            return loops.running_loop() is asyncio.get_running_loop()

        seen["main"] = asyncio.run(main())
    finally:
        stop.set()
        thread.join(5)
    assert seen == {"thread": True, "main": True}
