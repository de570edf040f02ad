"""Coalescing flights: every follower sees every item and the leader's failure; leaving is per follower."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from omnirelay.cache.flights import Flight, Flights

TIMEOUT = 2.0


class Script:
    """A flight body driven step by step by the test."""

    def __init__(self) -> None:
        self.steps: asyncio.Queue[str | BaseException | None] = asyncio.Queue()
        self.cancelled = False
        self.finished = False

    async def __call__(self, flight: Flight[str]) -> None:
        try:
            while True:
                step = await self.steps.get()
                if step is None:
                    self.finished = True
                    return
                if isinstance(step, BaseException):
                    raise step
                flight.publish(step)
        except asyncio.CancelledError:
            self.cancelled = True
            raise


async def collect(flight: Flight[str], into: list[str]) -> list[str]:
    async for item in flight.follow():
        into.append(item)
    return into


async def until(condition: Callable[[], bool], what: str) -> None:
    """Wait (bounded) until ``condition()`` is true."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


async def test_followers_get_every_item_from_before_and_after_they_joined() -> None:
    flights: Flights[str] = Flights()
    script = Script()
    flight = flights.start("k", script)
    assert flights.get("k") is flight
    early: list[str] = []
    early_task = asyncio.ensure_future(collect(flight, early))
    await script.steps.put("a")
    await script.steps.put("b")
    await until(lambda: early == ["a", "b"], "the early follower's first items")
    late: list[str] = []
    late_task = asyncio.ensure_future(collect(flight, late))
    await until(lambda: late == ["a", "b"], "the late follower's replay")
    await script.steps.put("c")
    await script.steps.put(None)
    async with asyncio.timeout(TIMEOUT):
        assert await early_task == ["a", "b", "c"]
        assert await late_task == ["a", "b", "c"]
    assert flight.done
    assert flight.error is None
    assert flight.followers == 0
    assert flights.get("k") is None
    assert len(flights) == 0
    # A follower of a finished flight still gets all of it.
    assert await collect(flight, []) == ["a", "b", "c"]


async def test_the_leaders_error_reaches_every_follower() -> None:
    flights: Flights[str] = Flights()
    script = Script()
    flight = flights.start("k", script)
    seen: list[list[str]] = [[], [], []]
    tasks = [asyncio.ensure_future(collect(flight, into)) for into in seen]
    await script.steps.put("partial")
    await until(lambda: all(s == ["partial"] for s in seen), "the first item everywhere")
    boom = RuntimeError("upstream failed")
    await script.steps.put(boom)
    async with asyncio.timeout(TIMEOUT):
        results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(r is boom for r in results)
    assert flight.error is boom
    assert flights.get("k") is None
    # A late follower gets the items, then the same error.
    late: list[str] = []
    with pytest.raises(RuntimeError, match="upstream failed"):
        await collect(flight, late)
    assert late == ["partial"]


async def test_one_followers_cancel_does_not_cancel_the_flight() -> None:
    flights: Flights[str] = Flights()
    script = Script()
    flight = flights.start("k", script)
    leaving: list[str] = []
    staying: list[str] = []
    leaver = asyncio.ensure_future(collect(flight, leaving))
    stayer = asyncio.ensure_future(collect(flight, staying))
    await script.steps.put("a")
    await until(lambda: leaving == ["a"] and staying == ["a"], "both followers waiting")
    assert flight.followers == 2
    leaver.cancel()
    async with asyncio.timeout(TIMEOUT):
        with pytest.raises(asyncio.CancelledError):
            await leaver
    assert flight.followers == 1
    assert flight.task is not None
    assert not flight.task.done()
    await script.steps.put("b")
    await script.steps.put(None)
    async with asyncio.timeout(TIMEOUT):
        assert await stayer == ["a", "b"]
        await flight.task
    assert script.finished
    assert not script.cancelled
    assert flight.error is None
    assert leaving == ["a"]


async def test_the_last_follower_leaving_an_unfinished_flight_cancels_its_task() -> None:
    flights: Flights[str] = Flights()
    script = Script()
    flight = flights.start("k", script)
    followers = [asyncio.ensure_future(collect(flight, [])) for _ in range(2)]
    await script.steps.put("a")
    await until(lambda: flight.followers == 2 and len(flight.items) == 1, "two followers")
    followers[0].cancel()
    await asyncio.sleep(0.02)
    assert flight.task is not None
    assert not flight.task.done()  # someone still follows
    followers[1].cancel()
    await asyncio.gather(*followers, return_exceptions=True)
    await until(lambda: flight.task is not None and flight.task.done(), "the flight's task to end")
    assert flight.task.cancelled()
    assert script.cancelled
    assert flight.done
    assert isinstance(flight.error, asyncio.CancelledError)
    assert flights.get("k") is None


async def test_a_finished_flight_is_not_cancelled_when_its_followers_leave() -> None:
    flights: Flights[str] = Flights()
    script = Script()
    flight = flights.start("k", script)
    await script.steps.put("only")
    await script.steps.put(None)
    await until(lambda: flight.done, "the flight to finish")
    # A unary follower takes the one item and leaves at once.
    agen = flight.follow()
    assert await agen.__anext__() == "only"
    await agen.aclose()
    assert flight.task is not None
    async with asyncio.timeout(TIMEOUT):
        await flight.task
    assert not flight.task.cancelled()
    assert not script.cancelled


async def test_a_new_flight_for_a_key_replaces_a_finished_one_only() -> None:
    flights: Flights[str] = Flights()
    first, second = Script(), Script()
    one = flights.start("k", first)
    two = flights.start("k", second)  # a refresh starts its own flight
    assert flights.get("k") is two
    await first.steps.put(None)
    await until(lambda: one.done, "the first flight to end")
    await asyncio.sleep(0)
    assert flights.get("k") is two  # the old flight's end does not remove the new one
    await second.steps.put(None)
    await until(lambda: two.done and flights.get("k") is None, "the second flight to end")


async def test_first_returns_the_first_item_to_every_follower() -> None:
    flights: Flights[str] = Flights()
    script = Script()
    flight = flights.start("k", script)
    waiting = [asyncio.ensure_future(flight.first()) for _ in range(3)]
    await until(lambda: flight.followers == 3, "three waiting followers")
    await script.steps.put("answer")
    await script.steps.put(None)
    async with asyncio.timeout(TIMEOUT):
        assert await asyncio.gather(*waiting) == ["answer"] * 3
    assert flight.followers == 0
    # Joining once it has answered still gets the answer.
    assert await flight.first() == "answer"


async def test_first_raises_the_leaders_error_in_every_follower() -> None:
    flights: Flights[str] = Flights()
    script = Script()
    flight = flights.start("k", script)
    waiting = [asyncio.ensure_future(flight.first()) for _ in range(3)]
    await until(lambda: flight.followers == 3, "three waiting followers")
    boom = ConnectionError("upstream down")
    await script.steps.put(boom)
    async with asyncio.timeout(TIMEOUT):
        results = await asyncio.gather(*waiting, return_exceptions=True)
    assert all(r is boom for r in results)
    with pytest.raises(ConnectionError):
        await flight.first()


async def test_first_of_a_flight_that_published_nothing_is_an_error() -> None:
    flights: Flights[str] = Flights()
    script = Script()
    flight = flights.start("k", script)
    waiting = asyncio.ensure_future(flight.first())
    await until(lambda: flight.followers == 1, "a waiting follower")
    await script.steps.put(None)
    async with asyncio.timeout(TIMEOUT):
        with pytest.raises(Exception, match="published nothing"):
            await waiting


async def test_first_followers_leaving_cancel_the_flight_only_when_all_are_gone() -> None:
    flights: Flights[str] = Flights()
    script = Script()
    flight = flights.start("k", script)
    waiting = [asyncio.ensure_future(flight.first()) for _ in range(2)]
    await until(lambda: flight.followers == 2, "two waiting followers")
    waiting[0].cancel()
    await asyncio.gather(waiting[0], return_exceptions=True)
    assert flight.followers == 1
    assert flight.task is not None
    assert not flight.task.done()
    waiting[1].cancel()
    await asyncio.gather(waiting[1], return_exceptions=True)
    await until(lambda: flight.task is not None and flight.task.done(), "the flight's task to end")
    assert flight.task.cancelled()
    assert script.cancelled
    assert flights.get("k") is None
