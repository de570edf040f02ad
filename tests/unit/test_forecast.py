"""Spend forecasts on synthetic histories whose future is known.

The reference fits here solve the least-squares problem the plain way (a design matrix with a
dummy column per weekday, its normal equations, Gauss-Jordan elimination), independently of the
closed form the module uses.
"""

from __future__ import annotations

import calendar
import math
import random
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import date, timedelta

import pytest

from omnirelay.domain import TokenUsage
from omnirelay.usage.forecast import DailySpend, daily_costs, daily_costs_async, forecast
from omnirelay.usage.records import UsageRecord

START = date(2026, 9, 2)  # a Wednesday, so weeks in the history are cut mid-week
Z = 1.2815515655446004
# Additive weekday offsets, Monday first; they sum to zero.
WEEKLY = (5000, 6000, 4000, 3000, 2000, -9000, -11000)


def days_from(start: date, values: Sequence[float]) -> dict[date, int]:
    return {start + timedelta(days=i): round(v) for i, v in enumerate(values)}


def solve(a: list[list[float]], b: list[float]) -> list[float]:
    """Gauss-Jordan with partial pivoting."""
    n = len(b)
    m = [[*row, rhs] for row, rhs in zip(a, b, strict=True)]
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(m[r][col]))
        m[col], m[pivot] = m[pivot], m[col]
        for r in range(n):
            if r != col:
                f = m[r][col] / m[col][col]
                m[r] = [x - f * y for x, y in zip(m[r], m[col], strict=True)]
    return [m[i][n] / m[i][i] for i in range(n)]


def reference(
    history: Sequence[float], start: date, future_days: Sequence[date], weekdays: bool
) -> tuple[list[float], float]:
    """Least squares of y on [weekday dummies or a constant] + t; returns the future means and the
    variance of the future total (each day's noise plus the fitted parameters' uncertainty)."""

    def row(d: date) -> list[float]:
        t = float((d - start).days)
        if weekdays:
            return [1.0 if d.weekday() == w else 0.0 for w in range(7)] + [t]
        return [1.0, t]

    xs = [row(start + timedelta(days=i)) for i in range(len(history))]
    k = len(xs[0])
    xtx = [[sum(x[i] * x[j] for x in xs) for j in range(k)] for i in range(k)]
    xty = [sum(x[i] * y for x, y in zip(xs, history, strict=True)) for i in range(k)]
    beta = solve(xtx, xty)
    fitted = [sum(b * xi for b, xi in zip(beta, x, strict=True)) for x in xs]
    s2 = sum((y - f) ** 2 for y, f in zip(history, fitted, strict=True)) / (len(history) - k)
    future = [sum(b * xi for b, xi in zip(beta, row(d), strict=True)) for d in future_days]
    g = [sum(row(d)[i] for d in future_days) for i in range(k)]
    # g' (X'X)^-1 g, through one more solve.
    quad = sum(gi * hi for gi, hi in zip(g, solve(xtx, g), strict=True))
    return future, s2 * (len(future_days) + quad)


def future_days(first: date, days: int) -> list[date]:
    return [first + timedelta(days=i) for i in range(days)]


# --- daily costs ----------------------------------------------------------------------------------


def spend_records() -> list[UsageRecord]:
    times_costs = [
        (calendar.timegm((2026, 11, 21, 23, 59, 59)) + 0.9, 100),
        (calendar.timegm((2026, 11, 22, 0, 0, 0)), 20),
        (calendar.timegm((2026, 11, 22, 13, 0, 0)), 3),
        (calendar.timegm((2026, 11, 24, 6, 0, 0)), 4000),
        (calendar.timegm((2026, 11, 24, 7, 0, 0)), 0),
    ]
    return [
        UsageRecord(f"r{i}", f"q{i}", t, "m", 0, usage=TokenUsage(cost_micros=c))
        for i, (t, c) in enumerate(times_costs)
    ]


EXPECTED_DAYS = {date(2026, 11, 21): 100, date(2026, 11, 22): 23, date(2026, 11, 24): 4000}


@pytest.fixture
def local_time_far_from_utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # A POSIX zone ten hours behind UTC, so days taken from local time would split elsewhere.
    monkeypatch.setenv("TZ", "XXX+10")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("local_time_far_from_utc")
def test_daily_costs_sum_cost_per_utc_day() -> None:
    assert daily_costs(spend_records()) == EXPECTED_DAYS
    assert daily_costs([]) == {}


async def test_daily_costs_over_an_async_stream() -> None:
    async def stream() -> AsyncIterator[UsageRecord]:
        for r in spend_records():
            yield r

    assert await daily_costs_async(stream()) == EXPECTED_DAYS


def test_daily_spend_also_counts_the_records() -> None:
    spend = DailySpend()
    for r in spend_records():
        spend.add(r)
    assert spend.records == 5
    assert spend.by_day() == EXPECTED_DAYS


# --- exact patterns -----------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [3, 10, 30, 61])
def test_a_pure_linear_trend_is_extrapolated_exactly_with_no_width(n: int) -> None:
    history = [1000 + 250 * t for t in range(n)]
    f = forecast(days_from(START, history), START + timedelta(days=n), 14)
    expected = tuple(1000 + 250 * t for t in range(n, n + 14))
    assert f.daily_micros == expected
    assert f.total_micros == sum(expected)
    assert f.high_micros - f.low_micros <= 2
    assert f.low_micros <= f.total_micros <= f.high_micros
    assert f.history_days == n
    assert "least-squares linear trend" in f.method


def test_a_flat_history_forecasts_the_same_spend() -> None:
    f = forecast(days_from(START, [7777] * 20), START + timedelta(days=20), 30)
    assert f.daily_micros == (7777,) * 30
    assert (f.low_micros, f.total_micros, f.high_micros) == (7777 * 30, 7777 * 30, 7777 * 30)


@pytest.mark.parametrize("n", [14, 52, 56])
def test_a_weekly_pattern_on_a_trend_is_reproduced_for_the_future_weekdays(n: int) -> None:
    def truth(d: date) -> float:
        return 50_000 + 300 * (d - START).days + WEEKLY[d.weekday()]

    history = [truth(START + timedelta(days=t)) for t in range(n)]
    first = START + timedelta(days=n)
    f = forecast(days_from(START, history), first, 21)
    expected = [truth(d) for d in future_days(first, 21)]
    assert len(f.daily_micros) == 21
    for got, want in zip(f.daily_micros, expected, strict=True):
        assert got == pytest.approx(want, abs=1)
    assert f.total_micros == pytest.approx(sum(expected), abs=21)
    assert f.high_micros - f.low_micros <= 4
    assert "weekday" in f.method
    assert f"{n // 7} full weeks" in f.method


def test_under_fourteen_days_no_weekday_pattern_is_fitted() -> None:
    # 13 days with a weekend dip: a plain trend averages the dip away rather than repeating it.
    history = [10_000 + WEEKLY[(START + timedelta(days=t)).weekday()] for t in range(13)]
    first = START + timedelta(days=13)
    f = forecast(days_from(START, history), first, 7)
    want, var = reference(history, START, future_days(first, 7), weekdays=False)
    assert list(f.daily_micros) == [round(x) for x in want]
    assert f.high_micros - f.total_micros == pytest.approx(Z * math.sqrt(var), abs=2)
    assert "without a weekday pattern" in f.method


# --- noise and the interval ----------------------------------------------------------------------


def noisy(seed: int, n: int, horizon: int, sigma: float) -> tuple[list[float], list[float]]:
    """History and future of one process: trend, weekly pattern and normal noise."""
    rng = random.Random(seed)

    def day(t: int) -> float:
        d = START + timedelta(days=t)
        return 100_000 + 500 * t + WEEKLY[d.weekday()] + sigma * rng.gauss(0.0, 1.0)

    return [day(t) for t in range(n)], [day(t) for t in range(n, n + horizon)]


def test_the_forecast_and_interval_match_a_plain_least_squares_fit_with_weekday_dummies() -> None:
    history, _ = noisy(11, 45, 0, 4000.0)
    first = START + timedelta(days=50)  # five days after the history ends
    f = forecast(days_from(START, history), first, 30)
    rounded = [round(v) for v in history]
    want, var = reference(rounded, START, future_days(first, 30), weekdays=True)
    assert list(f.daily_micros) == [round(x) for x in want]
    half = Z * math.sqrt(var)
    assert f.low_micros == pytest.approx(f.total_micros - half, abs=1)
    assert f.high_micros == pytest.approx(f.total_micros + half, abs=1)


def test_the_interval_is_the_plain_fits_without_a_weekly_pattern() -> None:
    history, _ = noisy(5, 11, 0, 3000.0)
    first = START + timedelta(days=11)
    f = forecast(days_from(START, history), first, 10)
    rounded = [round(v) for v in history]
    want, var = reference(rounded, START, future_days(first, 10), weekdays=False)
    assert list(f.daily_micros) == [round(x) for x in want]
    assert f.high_micros - f.low_micros == pytest.approx(2 * Z * math.sqrt(var), abs=2)


def test_with_noise_the_true_total_lies_inside_the_interval() -> None:
    history, future = noisy(2026, 56, 28, 5000.0)
    first = START + timedelta(days=56)
    f = forecast(days_from(START, history), first, 28)
    expected_total = sum(
        100_000 + 500 * t + WEEKLY[(START + timedelta(days=t)).weekday()] for t in range(56, 84)
    )
    assert f.low_micros < expected_total < f.high_micros
    assert f.low_micros < sum(future) < f.high_micros
    assert f.low_micros < f.total_micros < f.high_micros


def test_about_eighty_percent_of_realised_totals_fall_inside_the_interval() -> None:
    inside = 0
    trials = 400
    for seed in range(trials):
        history, future = noisy(seed, 42, 14, 6000.0)
        f = forecast(days_from(START, history), START + timedelta(days=42), 14)
        inside += f.low_micros <= sum(future) <= f.high_micros
    # Binomial spread at 80% over 400 trials is 2%; this allows four of them.
    assert 0.72 <= inside / trials <= 0.88


def test_the_interval_widens_with_the_noise() -> None:
    widths = []
    for sigma in (1000.0, 4000.0):
        history, _ = noisy(99, 35, 0, sigma)  # the same draws, scaled
        f = forecast(days_from(START, history), START + timedelta(days=35), 28)
        widths.append(f.high_micros - f.low_micros)
    assert widths[0] > 0
    # The fit is linear in the data, so four times the noise gives four times the spread.
    assert widths[1] == pytest.approx(4 * widths[0], rel=0.01)


# --- gaps, clamping, short histories ------------------------------------------------------------------


def test_days_without_usage_between_the_first_and_last_count_as_zero() -> None:
    daily = {
        START: 700,
        START + timedelta(days=3): 100,
        START + timedelta(days=5): 900,
        START + timedelta(days=6): 400,
    }
    filled = [700, 0, 0, 100, 0, 900, 400]
    first = START + timedelta(days=7)
    f = forecast(daily, first, 5)
    want, var = reference(filled, START, future_days(first, 5), weekdays=False)
    assert f.history_days == 7
    assert list(f.daily_micros) == [round(max(0.0, x)) for x in want]
    assert f.high_micros - f.total_micros == pytest.approx(Z * math.sqrt(var), abs=2)
    assert "3 without usage counted as zero" in f.method


def test_days_forecast_below_zero_are_zero_and_so_is_the_low_bound() -> None:
    history = [10_000 - 1000 * t + (300 if t % 2 else -300) for t in range(9)]
    first = START + timedelta(days=9)
    f = forecast(days_from(START, history), first, 6)
    want, _ = reference(history, START, future_days(first, 6), weekdays=False)
    assert want[0] > 0 > want[-1]
    assert list(f.daily_micros) == [max(0, round(x)) for x in want]
    assert f.total_micros == sum(f.daily_micros)
    assert f.low_micros == 0
    assert "below zero set to zero" in f.method


def test_no_history_forecasts_zero() -> None:
    f = forecast({}, START, 10)
    assert f.daily_micros == (0,) * 10
    assert (f.total_micros, f.low_micros, f.high_micros, f.history_days) == (0, 0, 0, 0)
    assert "no usage history" in f.method


def test_one_day_of_history_is_repeated_with_no_interval() -> None:
    f = forecast({START: 4321}, START + timedelta(days=1), 4)
    assert f.daily_micros == (4321,) * 4
    assert (f.low_micros, f.total_micros, f.high_micros) == (4 * 4321, 4 * 4321, 4 * 4321)
    assert f.history_days == 1
    assert "1 day of history" in f.method


def test_two_days_of_history_forecast_their_mean_with_their_spread() -> None:
    f = forecast({START: 1000, START + timedelta(days=1): 3000}, START + timedelta(days=2), 5)
    assert f.daily_micros == (2000,) * 5
    assert f.total_micros == 10_000
    # Sample variance of (1000, 3000) is 2,000,000; the total's is 5 days of it plus 5² times the mean's.
    half = Z * math.sqrt(2_000_000 * (5 + 25 / 2))
    assert f.low_micros == round(10_000 - half)
    assert f.high_micros == round(10_000 + half)
    assert f.history_days == 2
    assert "mean" in f.method


def test_zero_days_ahead_is_an_empty_forecast_and_negative_is_refused() -> None:
    f = forecast(days_from(START, [5, 6, 7, 8]), START + timedelta(days=4), 0)
    assert (f.daily_micros, f.total_micros, f.low_micros, f.high_micros) == ((), 0, 0, 0)
    with pytest.raises(ValueError, match="days"):
        forecast({START: 1}, START, -1)
