"""Budgets over Redis: two books (two replicas) on one Redis share spend, reservations and alert-once."""

from __future__ import annotations

import asyncio
import calendar
import time
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as redis

from omnirelay.errors import ResourceExhaustedError
from omnirelay.usage.alerts import ThresholdEvent
from omnirelay.usage.budgets import EXPIRY_GRACE_SECONDS, BudgetBook
from omnirelay.usage.counters import CountersUnavailableError, RedisCounters
from omnirelay.usage.ledger import BudgetScope, BudgetSpec

# `prefix` (unique per test) and `raw` (deletes the test's keys afterwards) come from
# tests/integration/conftest.py.

MakeCounters = Callable[[], RedisCounters]


class Recorder:
    def __init__(self) -> None:
        self.events: list[ThresholdEvent] = []

    def budget_threshold(self, event: ThresholdEvent) -> None:
        self.events.append(event)


@pytest.fixture
async def make_counters(redis_url: str, prefix: str, raw: redis.Redis) -> AsyncIterator[MakeCounters]:
    # Depends on `raw` so its teardown (after this one) removes every key the test made.
    made: list[RedisCounters] = []

    def make() -> RedisCounters:
        counters = RedisCounters(redis_url, prefix=f"{prefix}:")
        made.append(counters)
        return counters

    yield make
    for counters in made:
        await counters.aclose()


def day_key(spec: BudgetSpec, now: float) -> str:
    return f"{spec.id}:d{time.strftime('%Y%m%d', time.gmtime(now))}"


async def test_two_replicas_share_spend(make_counters: MakeCounters, raw: redis.Redis, prefix: str) -> None:
    spec = BudgetSpec("shared", BudgetScope(project="p"), 10_000, "day")
    one = BudgetBook([spec], make_counters(), None)
    two = BudgetBook([spec], make_counters(), None)

    await one.charge(one.matching("p", "u", "m"), 6_000)
    assert (await two.status(spec))[0] == 6_000
    admission = await two.admit(two.matching("p", "u", "m"))
    await two.settle(admission, 4_000)
    with pytest.raises(ResourceExhaustedError) as caught:
        await one.admit(one.matching("p", "u", "m"))
    assert caught.value.reason == "BUDGET_EXHAUSTED"

    # Stored as a plain integer under the prefix, expiring a little after the day ends.
    now = time.time()
    key = f"{prefix}:spend:{day_key(spec, now)}"
    assert await raw.get(key) == b"10000"
    end = (now // 86_400 + 1) * 86_400
    expected_ms = (end - now + EXPIRY_GRACE_SECONDS) * 1000
    assert expected_ms - 10_000 < await raw.pttl(key) <= expected_ms + 1000


async def test_thresholds_alert_once_across_replicas(make_counters: MakeCounters) -> None:
    spec = BudgetSpec("alerting", BudgetScope(), 100_000, "day", (0.5, 0.8))
    alerts = [Recorder(), Recorder()]
    books = [BudgetBook([spec], make_counters(), a) for a in alerts]
    # Both replicas settle calls that cross 50% and then 80% at about the same time.
    await asyncio.gather(*(b.charge([spec], 30_000) for b in books))
    await asyncio.gather(*(b.charge([spec], 15_000) for b in books))
    fired = sorted(e.threshold for a in alerts for e in a.events)
    assert fired == [0.5, 0.8]


async def test_concurrent_reservations_across_replicas_stay_in_the_limit(make_counters: MakeCounters) -> None:
    x = 1_000
    spec = BudgetSpec("reserved", BudgetScope(), 10 * x, "day", reserve=True)
    books = [BudgetBook([spec], make_counters(), None) for _ in range(2)]
    calls = [books[i % 2].admit([spec], x) for i in range(100)]
    results = await asyncio.gather(*calls, return_exceptions=True)
    admitted = [r for r in results if not isinstance(r, BaseException)]
    assert len(admitted) == 10
    assert all(isinstance(r, ResourceExhaustedError) for r in results if isinstance(r, BaseException))
    assert (await books[0].status(spec))[0] == 10 * x
    for i, admission in enumerate(admitted):
        await books[i % 2].settle(admission, x - 100)
        assert (await books[1].status(spec))[0] <= spec.limit_micros
    assert (await books[0].status(spec))[0] == 10 * (x - 100)


async def test_seeding_sets_only_what_is_absent(make_counters: MakeCounters) -> None:
    spec = BudgetSpec("seeded", BudgetScope(), 100_000, "month")

    async def ledger(_: BudgetSpec, since: float | None) -> int:
        assert since is not None
        assert time.gmtime(since)[2:6] == (1, 0, 0, 0)  # the 1st of the month at midnight
        return 42_000

    first = BudgetBook([spec], make_counters(), None)
    await first.seed_from(ledger)
    assert (await first.status(spec))[0] == 42_000
    await first.charge([spec], 1_000)
    second = BudgetBook([spec], make_counters(), None)
    await second.seed_from(ledger)  # a second replica starting: the live counter stays
    assert (await second.status(spec))[0] == 43_000


async def test_counters_round_trip(make_counters: MakeCounters) -> None:
    counters = make_counters()
    assert await counters.get_many([]) == []
    assert await counters.get_many(["a", "b"]) == [0, 0]
    assert await counters.add("a", 5, 60.0) == 5
    assert await counters.add("a", -7, 60.0) == -2
    await counters.seed("b", 9, None)
    await counters.seed("b", 11, None)
    assert await counters.get_many(["a", "b"]) == [-2, 9]
    assert await counters.once("a", 60.0) is True
    assert await counters.once("a", 60.0) is False
    assert await make_counters().once("a", 60.0) is False


async def test_a_period_change_reads_a_fresh_key(make_counters: MakeCounters) -> None:
    spec = BudgetSpec("daily", BudgetScope(), 1_000, "day")
    now = [float(calendar.timegm((2026, 11, 22, 23, 59, 59, 0, 0, 0)))]
    book = BudgetBook([spec], make_counters(), None, clock=lambda: now[0])
    await book.charge([spec], 1_000)
    with pytest.raises(ResourceExhaustedError):
        await book.admit([spec])
    now[0] += 1
    await book.admit([spec])


async def test_an_unreachable_redis_raises_its_own_error_without_the_password() -> None:
    counters = RedisCounters("redis://:hunter2-secret@127.0.0.1:1/0", timeout_seconds=0.5)
    try:
        with pytest.raises(CountersUnavailableError) as caught:
            await counters.get_many(["k"])
        assert "hunter2-secret" not in str(caught.value)
        # The book fails open: the call is admitted, settling does not raise.
        spec = BudgetSpec("x", BudgetScope(), 1, "day", reserve=True)
        book = BudgetBook([spec], counters, None)
        admission = await book.admit([spec], 10)
        await book.settle(admission, 10)
    finally:
        await counters.aclose()


def test_an_invalid_url_is_refused_without_echoing_it() -> None:
    with pytest.raises(ValueError, match="not a valid") as caught:
        RedisCounters("http://:hunter2-secret@host/")
    assert "hunter2-secret" not in str(caught.value)
