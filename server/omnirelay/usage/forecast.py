"""Future spend from past daily spend: a linear trend, a weekday pattern and an 80% interval.

The history is the daily cost (UTC days) from its first to its last day; a day
in between without records spent nothing, so it counts as zero rather than
being skipped. A caller whose history window is wider than the records in it
can add its first and last day with zero spend to have those counted too.

The model is one ordinary least-squares fit of ``cost = level[weekday] + slope
* day``. With under 14 days of history (fewer than two of each weekday) every
weekday shares one level: a plain linear trend. The weekday effect is
additive, not multiplicative, because then the whole model stays a single
linear least-squares problem with a closed form: trend and weekday levels are
fitted together, so a partial week cannot tilt the trend, and the uncertainty
of the fitted parameters is exact rather than approximated. It also stays
defined when the trend nears zero or the history has zero-spend days, where
ratios to the trend blow up. Its cost: when spend grows fast, the weekday swing
stays the same in micros instead of growing with it.

The 80% interval for the total is normal (z = 1.2816) with the variance of a
sum of future days: each day's own residual variance, plus the variance of the
fitted levels and slope summed over the horizon. The residual variance is the
fit's sum of squared residuals over its degrees of freedom. Days forecast below
zero become zero, and so does a low bound below zero.

With one or two days of history there is no trend to fit (two points fit any
line exactly and leave nothing to estimate the spread from): the forecast is
their mean, with the spread of the two days when there are two.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from omnirelay.usage.records import UsageRecord

# The standard normal's 90th percentile: 10% of the mass lies above it and 10% below its negative.
Z80 = 1.2815515655446004
SEASONAL_MIN_DAYS = 14  # two of each weekday, so each weekday level has a spread
TREND_MIN_DAYS = 3  # a line through fewer points leaves no residual to estimate the spread from


@dataclass(frozen=True, slots=True)
class Forecast:
    total_micros: int  # the sum of daily_micros
    low_micros: int  # 80% interval for the total
    high_micros: int
    daily_micros: tuple[int, ...]  # one per future UTC day, first day first
    method: str  # what was done, in a sentence
    history_days: int  # days fitted, zero-spend days in between included


class DailySpend:
    """Cost per UTC day, added up record by record; also counts the records."""

    def __init__(self) -> None:
        self.records = 0
        self._micros: dict[date, int] = {}

    def add(self, record: UsageRecord) -> None:
        day = datetime.fromtimestamp(record.time, tz=UTC).date()
        self._micros[day] = self._micros.get(day, 0) + record.usage.cost_micros
        self.records += 1

    def by_day(self) -> dict[date, int]:
        return dict(self._micros)


def daily_costs(records: Iterable[UsageRecord]) -> dict[date, int]:
    spend = DailySpend()
    for record in records:
        spend.add(record)
    return spend.by_day()


async def daily_costs_async(records: AsyncIterable[UsageRecord]) -> dict[date, int]:
    spend = DailySpend()
    async for record in records:
        spend.add(record)
    return spend.by_day()


def forecast(daily: Mapping[date, int], first_day: date, days: int) -> Forecast:
    """Spend for ``days`` UTC days from ``first_day``, from the daily history (see the module docstring)."""
    if days < 0:
        raise ValueError(f"days must be at least 0, got {days}")
    if not daily:
        return Forecast(0, 0, 0, (0,) * days, "no usage history, so the forecast is zero", 0)
    start, end = min(daily), max(daily)
    n = (end - start).days + 1
    history = [daily.get(start + timedelta(days=i), 0) for i in range(n)]
    offset = (first_day - start).days
    future = range(offset, offset + days)
    gaps = n - sum(1 for i in range(n) if start + timedelta(days=i) in daily)
    if n < TREND_MIN_DAYS:
        return _from_mean(history, days)
    seasonal = n >= SEASONAL_MIN_DAYS
    # Group ids are weekdays when fitting a weekday pattern; otherwise every day shares group 0.
    groups = [(start + timedelta(days=t)).weekday() if seasonal else 0 for t in range(n)]
    future_groups = [(start + timedelta(days=t)).weekday() if seasonal else 0 for t in future]
    fit = _Fit.of(history, groups)
    expected = [fit.level[g] + fit.slope * t for t, g in zip(future, future_groups, strict=True)]
    daily_micros = tuple(round(max(0.0, x)) for x in expected)
    low, high = _interval(sum(daily_micros), fit.variance_of_sum(future, future_groups))
    return Forecast(
        sum(daily_micros),
        low,
        high,
        daily_micros,
        _describe(n, gaps, seasonal, clamped=any(x < 0 for x in expected)),
        n,
    )


@dataclass(frozen=True, slots=True)
class _Fit:
    """Least squares of y = level[group] + slope * t, with the pieces its uncertainty needs."""

    slope: float
    level: dict[int, float]
    mean_t: dict[int, float]
    count: dict[int, int]
    sxx: float  # sum of (t - mean_t[group])²: the slope's variance is residual_var / sxx
    residual_var: float

    @staticmethod
    def of(y: Sequence[int], groups: Sequence[int]) -> _Fit:
        count: dict[int, int] = {}
        sum_t: dict[int, float] = {}
        sum_y: dict[int, float] = {}
        for t, (g, v) in enumerate(zip(groups, y, strict=True)):
            count[g] = count.get(g, 0) + 1
            sum_t[g] = sum_t.get(g, 0.0) + t
            sum_y[g] = sum_y.get(g, 0.0) + v
        mean_t = {g: sum_t[g] / count[g] for g in count}
        mean_y = {g: sum_y[g] / count[g] for g in count}
        # Centring within each group separates the slope from the group levels (one regression, solved
        # in two steps): the slope comes from how y moves with t inside groups, never across them.
        sxx = sum((t - mean_t[g]) ** 2 for t, g in enumerate(groups))
        sxy = sum((t - mean_t[g]) * (v - mean_y[g]) for t, (g, v) in enumerate(zip(groups, y, strict=True)))
        slope = sxy / sxx
        level = {g: mean_y[g] - slope * mean_t[g] for g in count}
        ssr = sum((v - level[g] - slope * t) ** 2 for t, (g, v) in enumerate(zip(groups, y, strict=True)))
        dof = len(y) - len(count) - 1
        return _Fit(slope, level, mean_t, count, sxx, ssr / dof)

    def variance_of_sum(self, future: Iterable[int], groups: Sequence[int]) -> float:
        """Variance of the realised total over the future days around the forecast total.

        The forecast total is sum_g c_g * mean_y[g] + slope * sum_d (t_d - mean_t[g_d]), where c_g counts
        the future days in group g; the group means and the slope are uncorrelated, so their variances add.
        """
        days = len(groups)
        per_group: dict[int, int] = {}
        lever = 0.0
        for t, g in zip(future, groups, strict=True):
            per_group[g] = per_group.get(g, 0) + 1
            lever += t - self.mean_t[g]
        levels = sum(c * c / self.count[g] for g, c in per_group.items())
        return self.residual_var * (days + levels + lever * lever / self.sxx)


def _from_mean(history: Sequence[int], days: int) -> Forecast:
    n = len(history)
    mean = sum(history) / n
    daily_micros = (round(mean),) * days
    total = sum(daily_micros)
    if n == 1:
        method = (
            "1 day of history: its spend repeated for each future day; one day shows no spread, "
            "so the 80% interval is the forecast itself"
        )
        return Forecast(total, total, total, daily_micros, method, n)
    spread = sum((v - mean) ** 2 for v in history) / (n - 1)
    # Each future day's own variance plus the mean's, summed over the horizon.
    low, high = _interval(total, spread * (days + days * days / n))
    method = (
        f"{n} days of history, too few for a trend: their mean spend for each future day; "
        f"80% interval from the spread of those {n} days"
    )
    return Forecast(total, low, high, daily_micros, method, n)


def _interval(total: int, variance: float) -> tuple[int, int]:
    half = Z80 * math.sqrt(max(0.0, variance))
    return max(0, round(total - half)), round(total + half)


def _describe(n: int, gaps: int, seasonal: bool, *, clamped: bool) -> str:
    history = f"{n} days" + (f" ({gaps} without usage counted as zero)" if gaps else "")
    if seasonal:
        weeks, extra = divmod(n, 7)
        span = f"{weeks} full weeks" + (f" and {extra} days" if extra else "")
        model = (
            f"least-squares linear trend over {history} "
            f"with additive weekday offsets fitted jointly from {span}"
        )
        parameters = "the fitted trend and weekday levels"
    else:
        model = f"least-squares linear trend over {history}, without a weekday pattern (that needs 14 days)"
        parameters = "the fitted trend"
    interval = (
        f"80% interval (z = {Z80:.4f}) from the residual spread of each future day "
        f"plus the uncertainty of {parameters}"
    )
    floor = "; days forecast below zero set to zero" if clamped else ""
    return f"{model}; {interval}{floor}"
