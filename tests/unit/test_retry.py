"""Retry policy (full-jitter backoff, retry-after as a floor) and the retry budget over a fake clock."""

from __future__ import annotations

import random

import pytest

from omnirelay.config.routing import RetryBudgetSettings, RetrySettings
from omnirelay.resilience.retry import RetryBudget, RetryPolicy

SETTINGS = RetrySettings(
    max_attempts=6, base_delay_seconds=0.5, max_delay_seconds=3.0, max_retry_after_seconds=10.0
)


def policy(seed: int, settings: RetrySettings = SETTINGS) -> RetryPolicy:
    return RetryPolicy(settings, random.Random(seed))


class FakeClock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# --- RetryPolicy.delay ---


@pytest.mark.parametrize(("attempt", "step"), [(1, 0.5), (2, 1.0), (3, 2.0), (4, 3.0), (5, 3.0)])
def test_full_jitter_stays_within_zero_and_the_capped_exponential_step(attempt: int, step: float) -> None:
    assert step == min(SETTINGS.max_delay_seconds, SETTINGS.base_delay_seconds * 2 ** (attempt - 1))
    delays = []
    for seed in range(500):
        delay = policy(seed).delay(attempt, None)
        assert delay is not None
        assert 0.0 <= delay <= step
        delays.append(delay)
    # Full jitter: draws cover the whole range, not a constant nor only its upper half.
    assert len(set(delays)) > 450
    assert min(delays) < 0.05 * step
    assert max(delays) > 0.95 * step
    mean = sum(delays) / len(delays)
    assert mean == pytest.approx(step / 2, rel=0.15)


def test_one_policy_draws_a_fresh_delay_each_time() -> None:
    p = policy(3)
    delays = [p.delay(2, None) for _ in range(100)]
    assert len(set(delays)) > 90
    assert all(d is not None and 0.0 <= d <= 1.0 for d in delays)


def test_the_same_seed_gives_the_same_delays() -> None:
    assert [policy(8).delay(3, None) for _ in range(5)] == [policy(8).delay(3, None) for _ in range(5)]


def test_zero_base_delay_retries_at_once() -> None:
    p = policy(0, RetrySettings(max_attempts=3, base_delay_seconds=0.0, max_delay_seconds=5.0))
    assert p.delay(1, None) == 0.0
    assert p.delay(2, None) == 0.0


def test_retry_after_is_a_floor_on_the_delay() -> None:
    for seed in range(200):
        # Beyond the jitter step: exactly the upstream's delay.
        assert policy(seed).delay(1, 2.0) == pytest.approx(2.0)
        # Within the step: never below it, never above the step.
        delay = policy(seed).delay(4, 1.0)
        assert delay is not None
        assert 1.0 <= delay <= 3.0
    # A retry-after above the cap still wins (the upstream said so), up to max_retry_after_seconds.
    assert policy(1).delay(5, 7.5) == pytest.approx(7.5)
    assert policy(1).delay(1, 0.0) is not None


def test_retry_after_at_the_limit_is_honoured_and_beyond_it_gives_up() -> None:
    assert policy(1).delay(1, 10.0) == pytest.approx(10.0)
    assert policy(1).delay(1, 10.01) is None
    assert policy(1).delay(2, 3600.0) is None


def test_no_delay_once_max_attempts_are_used() -> None:
    p = policy(2, RetrySettings(max_attempts=3, base_delay_seconds=0.1, max_delay_seconds=1.0))
    assert p.delay(1, None) is not None
    assert p.delay(2, None) is not None
    assert p.delay(3, None) is None
    assert p.delay(4, None) is None
    assert p.delay(3, 0.5) is None  # a retry-after does not buy another attempt


def test_a_single_attempt_policy_never_retries() -> None:
    p = policy(2, RetrySettings(max_attempts=1))
    assert p.delay(1, None) is None
    assert p.delay(1, 0.1) is None


def test_policy_exposes_max_attempts() -> None:
    assert policy(0).max_attempts == 6


# --- RetryBudget ---

BUDGET = RetryBudgetSettings(ratio=0.5, min_retries_per_second=0.2, window_seconds=10.0)  # floor: 2


def spend_all(budget: RetryBudget, limit: int = 10_000) -> int:
    spent = 0
    while spent < limit and budget.try_spend():
        spent += 1
    return spent


def test_budget_allows_the_floor_with_no_requests() -> None:
    clock = FakeClock()
    budget = RetryBudget(BUDGET, clock)
    assert spend_all(budget) == 2
    assert not budget.try_spend()
    assert budget.snapshot() == (0, 2)


def test_budget_allows_floor_plus_ratio_of_requests_and_refuses_beyond() -> None:
    clock = FakeClock()
    budget = RetryBudget(BUDGET, clock)
    for _ in range(10):
        budget.request()
    assert spend_all(budget) == 2 + 5
    assert not budget.try_spend()
    assert budget.snapshot() == (10, 7)
    # More requests make room again: two more requests, one more retry.
    budget.request()
    budget.request()
    assert spend_all(budget) == 1
    assert budget.snapshot() == (12, 8)


def test_budget_counts_requests_and_retries_across_the_window() -> None:
    clock = FakeClock()
    budget = RetryBudget(BUDGET, clock)
    for step in range(10):  # one request per second across the window
        clock.now += 1.0 if step else 0.0
        for _ in range(2):
            budget.request()
    assert budget.snapshot()[0] == 20
    assert spend_all(budget) == 2 + 10


def test_budget_forgets_buckets_older_than_the_window() -> None:
    clock = FakeClock(0.0)
    budget = RetryBudget(BUDGET, clock)
    for _ in range(20):
        budget.request()
    assert spend_all(budget) == 12
    clock.now = 6.0
    for _ in range(4):
        budget.request()
    # Still inside the window: the first burst counts.
    assert budget.snapshot() == (24, 12)
    assert spend_all(budget) == 2  # 2 + 0.5·24 = 14
    clock.now = 9.9
    assert budget.snapshot() == (24, 14)
    # The first second's bucket leaves the window; the t=6 requests and retries stay.
    clock.now = 10.0
    assert budget.snapshot() == (4, 2)
    assert spend_all(budget) == 2  # room for 2 + 0.5·4 = 4, two of them already spent
    # A whole window later everything is forgotten: only the floor remains.
    clock.now = 30.0
    assert budget.snapshot() == (0, 0)
    assert spend_all(budget) == 2


def test_budget_after_a_long_idle_gap_starts_fresh() -> None:
    clock = FakeClock(0.0)
    budget = RetryBudget(BUDGET, clock)
    for _ in range(100):
        budget.request()
    assert spend_all(budget) == 52
    clock.now = 1e6 + 0.5
    assert budget.snapshot() == (0, 0)
    budget.request()
    assert spend_all(budget) == 3  # while spent < 2 + 0.5·1 = 2.5
    assert not budget.try_spend()


def test_budget_with_zero_ratio_and_zero_floor_never_retries() -> None:
    clock = FakeClock()
    budget = RetryBudget(RetryBudgetSettings(ratio=0.0, min_retries_per_second=0.0), clock)
    for _ in range(50):
        budget.request()
    assert not budget.try_spend()
    assert budget.snapshot() == (50, 0)
