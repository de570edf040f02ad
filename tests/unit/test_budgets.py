"""The budget book over in-memory counters: matching, admission, reservations, settlement, alerts."""

from __future__ import annotations

import asyncio
import calendar
import logging
import random
from collections.abc import Sequence

import grpc
import pytest

from omnirelay.errors import ResourceExhaustedError
from omnirelay.usage.alerts import FanOut, LogAlerts, ThresholdEvent
from omnirelay.usage.budgets import EXPIRY_GRACE_SECONDS, BudgetBook, usd
from omnirelay.usage.counters import MemoryCounters
from omnirelay.usage.ledger import BudgetScope, BudgetSpec

USD = 1_000_000


def ts(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> float:
    return float(calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0)))


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Recorder:
    """An alert sink that keeps what it was given."""

    def __init__(self) -> None:
        self.events: list[ThresholdEvent] = []

    def budget_threshold(self, event: ThresholdEvent) -> None:
        self.events.append(event)

    @property
    def thresholds(self) -> list[float]:
        return [e.threshold for e in self.events]


class YieldingCounters(MemoryCounters):
    """Memory counters that give way to other tasks before each step, as a network store would.

    Without this, concurrent admissions would run one after another and a check-then-add
    race could never show.
    """

    async def get_many(self, keys: Sequence[str]) -> list[int]:
        await asyncio.sleep(0)
        return await super().get_many(keys)

    async def add(self, key: str, micros: int, ttl_seconds: float | None) -> int:
        await asyncio.sleep(0)
        return await super().add(key, micros, ttl_seconds)


class BrokenCounters(MemoryCounters):
    async def get_many(self, keys: Sequence[str]) -> list[int]:
        raise ConnectionError("counter store down")

    async def add(self, key: str, micros: int, ttl_seconds: float | None) -> int:
        raise ConnectionError("counter store down")


EVERYTHING = BudgetScope()


def budget(
    id: str = "team-a",
    limit: int = 10 * USD,
    period: str = "day",
    *,
    scope: BudgetScope = EVERYTHING,
    thresholds: tuple[float, ...] = (0.5, 0.8, 1.0),
    reserve: bool = False,
) -> BudgetSpec:
    return BudgetSpec(id, scope, limit, period, thresholds, reserve)


NOON = ts(2026, 11, 22, 12)


@pytest.fixture
def clock() -> Clock:
    return Clock(NOON)


@pytest.fixture
def caplog_omnirelay(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> pytest.LogCaptureFixture:
    """caplog that also sees ``omnirelay.*`` if log setup (cli) has stopped it propagating."""
    monkeypatch.setattr(logging.getLogger("omnirelay"), "propagate", True)
    caplog.set_level(logging.INFO)
    return caplog


# --- definitions -------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5])
def test_thresholds_outside_zero_to_one_are_rejected_by_name(bad: float) -> None:
    with pytest.raises(ValueError, match=rf"budget 'team-a'.*\(0, 1\].*{bad}"):
        BudgetBook([budget(thresholds=(0.5, bad))], MemoryCounters(), None)


def test_replace_validates_and_keeps_the_old_definitions_on_error() -> None:
    book = BudgetBook([budget()], MemoryCounters(), None)
    with pytest.raises(ValueError, match="'fortnight'"):
        book.replace([budget("b", period="fortnight")])
    with pytest.raises(ValueError, match="'x' is defined twice"):
        book.replace([budget("x"), budget("x")])
    with pytest.raises(ValueError, match="must not be negative"):
        book.replace([budget(limit=-1)])
    assert [s.id for s in book.specs()] == ["team-a"]
    book.replace([budget("b")])
    assert [s.id for s in book.specs()] == ["b"]


# --- matching ----------------------------------------------------------------------------------


def test_no_budgets_matches_nothing_with_one_shared_tuple() -> None:
    book = BudgetBook([], MemoryCounters(), None)
    first = book.matching("p", "u", "m", {"team": "a"})
    assert first == ()
    assert book.matching("q", "v", "n", ()) is first


def test_scope_fields_and_tag_subsets() -> None:
    specs = [
        budget("everything"),
        budget("project-p", scope=BudgetScope(project="p")),
        budget("user-u-in-p", scope=BudgetScope(project="p", user="u")),
        budget("model-m", scope=BudgetScope(model="m")),
        budget("team-a", scope=BudgetScope(tags=(("team", "a"),))),
        budget("team-a-prod", scope=BudgetScope(tags=(("team", "a"), ("env", "prod")))),
    ]
    book = BudgetBook(specs, MemoryCounters(), None)

    def ids(project: str, user: str, model: str, tags: object) -> list[str]:
        return [s.id for s in book.matching(project, user, model, tags)]  # type: ignore[arg-type]

    assert ids("p", "u", "m", {}) == ["everything", "project-p", "user-u-in-p", "model-m"]
    assert ids("p", "other", "n", {}) == ["everything", "project-p"]
    assert ids("q", "u", "n", {}) == ["everything"]
    # Scope tags must all be present with equal values; extra call tags do not matter.
    assert ids("q", "", "n", {"team": "a", "env": "dev"}) == ["everything", "team-a"]
    both = ["everything", "team-a", "team-a-prod"]
    assert ids("q", "", "n", {"team": "a", "env": "prod", "x": "y"}) == both
    assert ids("q", "", "n", (("team", "b"), ("env", "prod"))) == ["everything"]
    assert ids("q", "", "n", (("env", "prod"), ("team", "a"))) == both


# --- admission ---------------------------------------------------------------------------------


async def test_a_spent_budget_refuses_with_details_a_caller_can_act_on(clock: Clock) -> None:
    spec = budget("team-a", 10 * USD)
    book = BudgetBook([spec], MemoryCounters(), None, clock=clock)
    await book.charge([spec], 9 * USD)
    await book.admit([spec])  # $9 of $10: still admitted
    await book.charge([spec], 1 * USD)

    with pytest.raises(ResourceExhaustedError) as caught:
        await book.admit(book.matching("p", "u", "m"))
    err = caught.value
    assert err.reason == "BUDGET_EXHAUSTED"
    assert err.retry_after_seconds == ts(2026, 11, 23) - NOON == 12 * 3600
    assert "team-a" in err.message
    assert "$10.00" in err.message
    assert "2026-11-23T00:00:00Z" in err.message
    assert [v.subject for v in err.violations] == ["budget:team-a"]
    assert "day" in err.violations[0].description
    assert "2026-11-23T00:00:00Z" in err.violations[0].description
    status = err.to_status()
    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_every_exhausted_budget_is_a_violation_and_retry_waits_for_the_latest(clock: Clock) -> None:
    day, month = budget("daily", USD, "day"), budget("monthly", USD, "month")
    ok = budget("roomy", 100 * USD, "week")
    book = BudgetBook([day, month, ok], MemoryCounters(), None, clock=clock)
    await book.charge([day, month, ok], USD)
    with pytest.raises(ResourceExhaustedError) as caught:
        await book.admit([day, month, ok])
    assert [v.subject for v in caught.value.violations] == ["budget:daily", "budget:monthly"]
    assert caught.value.retry_after_seconds == ts(2026, 12, 1) - NOON
    assert "1 more" in caught.value.message


async def test_a_total_budget_has_no_retry_and_says_it_does_not_reset(clock: Clock) -> None:
    spec = budget("lifetime", USD, "total")
    book = BudgetBook([spec], MemoryCounters(), None, clock=clock)
    await book.charge([spec], USD + 1)
    with pytest.raises(ResourceExhaustedError) as caught:
        await book.admit([spec])
    assert caught.value.retry_after_seconds is None
    assert "does not reset" in caught.value.message
    assert "$1.000001" in caught.value.message


async def test_a_new_period_starts_from_zero(clock: Clock) -> None:
    spec = budget("daily", USD, "day")
    book = BudgetBook([spec], MemoryCounters(), None, clock=clock)
    clock.now = ts(2026, 11, 22, 23, 59, 59)
    await book.charge([spec], 2 * USD)
    with pytest.raises(ResourceExhaustedError):
        await book.admit([spec])
    clock.now = ts(2026, 11, 23)
    await book.admit([spec])
    assert await book.status(spec) == (0, ts(2026, 11, 23), ts(2026, 11, 24))


async def test_a_zero_limit_refuses_everything(clock: Clock) -> None:
    plain, reserved = budget("zero", 0), budget("zero-r", 0, reserve=True)
    book = BudgetBook([plain, reserved], MemoryCounters(), None, clock=clock)
    for spec in (plain, reserved):
        for reserve in (0, 1):
            with pytest.raises(ResourceExhaustedError, match="zero"):
                await book.admit([spec], reserve)


async def test_nothing_matching_admits_without_touching_the_counters() -> None:
    book = BudgetBook([], BrokenCounters(), None)
    admission = await book.admit([], 5)
    assert admission.holds == ()
    await book.settle(admission, 10)


# --- reservations ------------------------------------------------------------------------------


async def test_concurrent_reservations_never_jointly_exceed_the_limit(clock: Clock) -> None:
    x = 1000
    spec = budget("reserved", 10 * x, reserve=True)
    counters = YieldingCounters()
    book = BudgetBook([spec], counters, None, clock=clock)

    results = await asyncio.gather(*(book.admit([spec], x) for _ in range(100)), return_exceptions=True)
    admitted = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(admitted) == 10
    assert all(isinstance(r, ResourceExhaustedError) and r.reason == "BUDGET_EXHAUSTED" for r in refused)
    assert all(a.reserved_micros == x for a in admitted)
    assert (await book.status(spec))[0] == 10 * x  # refused reservations were taken back

    rng = random.Random(7)
    charged = 0
    for admission in admitted:
        cost = rng.randint(x // 2, x)
        charged += cost
        await book.settle(admission, cost)
        assert (await book.status(spec))[0] <= spec.limit_micros
    assert (await book.status(spec))[0] == charged

    # Rounds of concurrent admissions fill the room left, and never beyond it.
    for _ in range(5):
        calls = (book.admit([spec], x) for _ in range(20))
        round_results = await asyncio.gather(*calls, return_exceptions=True)
        assert (await book.status(spec))[0] <= spec.limit_micros
        for r in round_results:
            if not isinstance(r, BaseException):
                await book.settle(r, x)
        assert (await book.status(spec))[0] <= spec.limit_micros


async def test_settlement_replaces_the_reservation_with_the_cost(clock: Clock) -> None:
    spec = budget("reserved", 10_000, reserve=True)
    book = BudgetBook([spec], MemoryCounters(), None, clock=clock)
    admission = await book.admit([spec], 5000)
    assert (await book.status(spec))[0] == 5000
    await book.settle(admission, 2000)
    assert (await book.status(spec))[0] == 2000
    failed = await book.admit([spec], 5000)
    await book.settle(failed, 0)  # nothing billed: the reservation is simply released
    assert (await book.status(spec))[0] == 2000


async def test_a_reservation_that_does_not_fit_is_refused_and_the_others_are_taken_back(clock: Clock) -> None:
    roomy = budget("roomy", 100_000, reserve=True)
    tight = budget("tight", 10_000, reserve=True)
    book = BudgetBook([roomy, tight], MemoryCounters(), None, clock=clock)
    await book.charge([tight], 8000)
    with pytest.raises(ResourceExhaustedError) as caught:
        await book.admit([roomy, tight], 5000)
    assert [v.subject for v in caught.value.violations] == ["budget:tight"]
    assert "would reserve $0.005" in caught.value.message
    assert (await book.status(roomy))[0] == 0
    assert (await book.status(tight))[0] == 8000


async def test_without_reserve_overshoot_is_bounded_by_calls_in_flight(clock: Clock) -> None:
    cost = 1000
    spec = budget("plain", 10 * cost)
    book = BudgetBook([spec], YieldingCounters(), None, clock=clock)
    await book.charge([spec], 9 * cost + 1)
    # Five calls are admitted before any of them settles: all see room left.
    admissions = await asyncio.gather(*(book.admit([spec], cost) for _ in range(5)))
    await asyncio.gather(*(book.settle(a, cost) for a in admissions))
    spent = (await book.status(spec))[0]
    assert spec.limit_micros < spent <= spec.limit_micros + 5 * cost
    with pytest.raises(ResourceExhaustedError):
        await book.admit([spec], cost)


# --- thresholds --------------------------------------------------------------------------------


async def test_thresholds_fire_once_per_period_each(clock: Clock) -> None:
    spec = budget("team-a", 100_000, scope=BudgetScope(project="p"))
    alerts = Recorder()
    book = BudgetBook([spec], MemoryCounters(), alerts, clock=clock)

    await book.charge([spec], 40_000)
    assert alerts.events == []
    await book.charge([spec], 45_000)  # 85%: crosses 50 and 80 in one settlement
    assert alerts.thresholds == [0.5, 0.8]
    first = alerts.events[0]
    assert (first.budget_id, first.spent_micros, first.limit_micros) == ("team-a", 85_000, 100_000)
    assert first.period == "day"
    assert (first.period_start, first.period_end) == (ts(2026, 11, 22), ts(2026, 11, 23))
    assert first.scope == BudgetScope(project="p")

    await book.charge([spec], 1_000)
    assert alerts.thresholds == [0.5, 0.8]
    await book.charge([spec], 14_000)  # exactly 100%
    assert alerts.thresholds == [0.5, 0.8, 1.0]
    await book.charge([spec], 5_000)
    assert alerts.thresholds == [0.5, 0.8, 1.0]

    clock.now = ts(2026, 11, 23, 8)
    await book.charge([spec], 60_000)
    assert alerts.thresholds == [0.5, 0.8, 1.0, 0.5]
    assert alerts.events[-1].period_start == ts(2026, 11, 23)


async def test_two_books_on_the_same_counters_alert_once(clock: Clock) -> None:
    spec = budget("shared", 100_000)
    counters = MemoryCounters()
    a, b = Recorder(), Recorder()
    one = BudgetBook([spec], counters, a, clock=clock)
    two = BudgetBook([spec], counters, b, clock=clock)
    await one.charge([spec], 60_000)
    await two.charge([spec], 10_000)  # sees 70%: past 50% too, but that was announced already
    assert [e.threshold for e in a.events] == [0.5]
    assert b.events == []


async def test_a_failing_alert_sink_does_not_fail_settlement(clock: Clock) -> None:
    class Exploding:
        def budget_threshold(self, event: ThresholdEvent) -> None:
            raise RuntimeError("sink bug")

    spec = budget("x", 100)
    recorder = Recorder()
    book = BudgetBook([spec], MemoryCounters(), FanOut(Exploding(), recorder), clock=clock)
    await book.charge([spec], 100)
    assert recorder.thresholds == [0.5, 0.8, 1.0]
    assert (await book.status(spec))[0] == 100


async def test_log_alerts_write_one_warning_with_the_fields(
    clock: Clock, caplog_omnirelay: pytest.LogCaptureFixture
) -> None:
    spec = budget("logged", 100, thresholds=(0.5,), scope=BudgetScope(tags=(("team", "a"),)))
    book = BudgetBook([spec], MemoryCounters(), LogAlerts(), clock=clock)
    await book.charge([spec], 60)
    records = [r for r in caplog_omnirelay.records if r.getMessage().startswith("budget threshold crossed")]
    assert len(records) == 1
    record = records[0]
    assert record.levelno == logging.WARNING
    assert record.__dict__["budget_id"] == "logged"
    assert record.__dict__["threshold"] == 0.5
    assert record.__dict__["spent_micros"] == 60
    assert record.__dict__["limit_micros"] == 100
    assert record.__dict__["period_end"] == "2026-11-23T00:00:00Z"
    assert record.__dict__["scope"]["tags"] == {"team": "a"}


# --- start-up, status, failures ----------------------------------------------------------------


async def test_seed_from_restores_spend_without_announcing_old_crossings(clock: Clock) -> None:
    daily = budget("daily", 100_000)
    lifetime = budget("lifetime", 100_000, "total")
    asked: dict[str, float | None] = {}

    async def ledger_spend(spec: BudgetSpec, since: float | None) -> int:
        asked[spec.id] = since
        return {"daily": 85_000, "lifetime": 10_000}[spec.id]

    alerts = Recorder()
    counters = MemoryCounters()
    book = BudgetBook([daily, lifetime], counters, alerts, clock=clock)
    await book.seed_from(ledger_spend)
    assert asked == {"daily": ts(2026, 11, 22), "lifetime": None}
    assert await book.status(daily) == (85_000, ts(2026, 11, 22), ts(2026, 11, 23))
    assert await book.status(lifetime) == (10_000, 0.0, None)

    await book.charge([daily], 1_000)
    assert alerts.events == []  # 50% and 80% were crossed before the restart
    await book.charge([daily], 14_000)
    assert alerts.thresholds == [1.0]

    # Seeding again (another replica starting) does not overwrite live spend.
    again = BudgetBook([daily, lifetime], counters, None, clock=clock)
    await again.seed_from(ledger_spend)
    assert (await again.status(daily))[0] == 100_000


async def test_counter_failures_fail_open_with_one_warning(
    clock: Clock, caplog_omnirelay: pytest.LogCaptureFixture
) -> None:
    spec = budget("x", 1, reserve=True)
    book = BudgetBook([spec], BrokenCounters(), Recorder(), clock=clock)
    for _ in range(3):
        admission = await book.admit([spec], 1000)
        assert admission.reserved_micros == 0
        await book.settle(admission, 1000)
    warnings = [r for r in caplog_omnirelay.records if "budget counters failed" in r.getMessage()]
    assert len(warnings) == 1


async def test_memory_counters_expire_and_once_is_once() -> None:
    clock = Clock(100.0)
    counters = MemoryCounters(clock=clock)
    assert await counters.add("k", 5, 10.0) == 5
    assert await counters.add("k", -2, 10.0) == 3
    await counters.seed("k", 99, 10.0)
    assert await counters.get_many(["k", "missing"]) == [3, 0]
    assert await counters.once("k", 10.0) is True
    assert await counters.once("k", 10.0) is False
    clock.now = 111.0
    assert await counters.get_many(["k"]) == [0]
    assert await counters.once("k", 10.0) is True
    await counters.seed("k", 7, None)
    assert await counters.get_many(["k"]) == [7]


async def test_counters_expire_a_grace_period_after_the_period_ends(clock: Clock) -> None:
    spec = budget("daily", USD)
    ticks = Clock(0.0)
    counters = MemoryCounters(clock=ticks)
    book = BudgetBook([spec], counters, None, clock=clock)
    await book.charge([spec], 5)
    left = ts(2026, 11, 23) - NOON + EXPIRY_GRACE_SECONDS
    ticks.now = left - 1
    assert (await book.status(spec))[0] == 5
    ticks.now = left + 1
    assert (await book.status(spec))[0] == 0


def test_usd_formatting() -> None:
    assert usd(10 * USD) == "$10.00"
    assert usd(1_234_560_000) == "$1,234.56"
    assert usd(5000) == "$0.005"
    assert usd(1) == "$0.000001"
    assert usd(-250_000) == "-$0.25"
