"""Budget periods in UTC: where the current one starts and ends, and a short key naming it.

A period is one of ``day``, ``week`` (Monday 00:00 UTC to the next Monday),
``month`` (the calendar month) or ``total`` (never resets). Arithmetic is done
on whole days since the Unix epoch, not on ``datetime.fromtimestamp``, whose
rounding to microseconds could put an instant a hair before midnight into the
next day; an instant exactly at a boundary belongs to the period it starts.

The key (``d20261122``, ``w20261116``, ``m202611``, ``total``) is part of every
counter key, so a new period starts from zero without anything being reset,
and replicas agree on it without talking to each other.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

PERIODS = ("day", "week", "month", "total")

_DAY = 86_400
_EPOCH = dt.date(1970, 1, 1)
# 1970-01-01 was a Thursday: weekday() 3, counting Monday as 0.
_EPOCH_WEEKDAY = 3


@dataclass(frozen=True, slots=True)
class PeriodWindow:
    """One concrete period: ``start`` inclusive, ``end`` exclusive (None: it never ends)."""

    period: str
    key: str
    start: float
    end: float | None

    def seconds_left(self, now: float) -> float | None:
        """Seconds from ``now`` until the period ends (never negative); None for ``total``."""
        return None if self.end is None else max(self.end - now, 0.0)


def check_period(period: str) -> None:
    """Raise ValueError naming the period and the allowed ones if it is not one of PERIODS."""
    if period not in PERIODS:
        raise ValueError(f"unknown budget period {period!r}: expected one of {', '.join(PERIODS)}")


def current_window(period: str, now: float) -> PeriodWindow:
    """The period of kind ``period`` that contains the Unix time ``now``."""
    check_period(period)
    if period == "total":
        # "Since the beginning": start is the epoch so callers always have a number to show.
        return PeriodWindow(period, "total", 0.0, None)
    day = math.floor(now / _DAY)
    if period == "day":
        first, after = day, day + 1
        key = "d" + _date(first).strftime("%Y%m%d")
    elif period == "week":
        first = day - (day + _EPOCH_WEEKDAY) % 7
        after = first + 7
        key = "w" + _date(first).strftime("%Y%m%d")
    else:
        date = _date(day)
        month_start = date.replace(day=1)
        next_month = (
            month_start.replace(year=date.year + 1, month=1)
            if date.month == 12
            else month_start.replace(month=date.month + 1)
        )
        first, after = _day_index(month_start), _day_index(next_month)
        key = "m" + month_start.strftime("%Y%m")
    return PeriodWindow(period, key, float(first * _DAY), float(after * _DAY))


def period_bounds(period: str, now: float) -> tuple[float, float | None]:
    """(start, end) in Unix seconds of the period containing ``now``; end is None for ``total``."""
    window = current_window(period, now)
    return window.start, window.end


def period_key(period: str, now: float) -> str:
    """The compact name of the period containing ``now``, as used in counter keys."""
    return current_window(period, now).key


def iso_utc(seconds: float) -> str:
    """Unix seconds as ISO 8601 UTC with a ``Z`` and whole seconds (what people and webhooks read)."""
    moment = dt.datetime.fromtimestamp(math.floor(seconds), dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _date(day_index: int) -> dt.date:
    return _EPOCH + dt.timedelta(days=day_index)


def _day_index(date: dt.date) -> int:
    return (date - _EPOCH).days
