"""Budget periods: UTC bounds and keys at day, week, month and leap-day boundaries."""

from __future__ import annotations

import calendar
import math

import pytest

from omnirelay.usage.periods import PERIODS, current_window, iso_utc, period_bounds, period_key


def ts(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> float:
    return float(calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0)))


def test_sunday_last_second_is_in_the_week_that_started_monday_before() -> None:
    sunday = ts(2026, 11, 22, 23, 59, 59)
    assert period_bounds("week", sunday) == (ts(2026, 11, 16), ts(2026, 11, 23))
    assert period_key("week", sunday) == "w20261116"


def test_monday_midnight_starts_a_new_week() -> None:
    monday = ts(2026, 11, 23)
    assert period_bounds("week", monday) == (ts(2026, 11, 23), ts(2026, 11, 30))
    assert period_key("week", monday) == "w20261123"


def test_the_instant_just_before_midnight_belongs_to_the_old_day_and_week() -> None:
    # Rounding to microseconds (datetime.fromtimestamp) would put this in Monday.
    before = math.nextafter(ts(2026, 11, 23), 0.0)
    assert before < ts(2026, 11, 23)
    assert period_key("day", before) == "d20261122"
    assert period_key("week", before) == "w20261116"
    assert period_bounds("day", before) == (ts(2026, 11, 22), ts(2026, 11, 23))


def test_day_bounds_and_key() -> None:
    noon = ts(2026, 11, 22, 12, 30)
    assert period_bounds("day", noon) == (ts(2026, 11, 22), ts(2026, 11, 23))
    assert period_key("day", noon) == "d20261122"
    assert period_key("day", ts(2026, 11, 23)) == "d20261123"


def test_month_end_and_year_end() -> None:
    last = ts(2026, 11, 30, 23, 59, 59)
    assert period_bounds("month", last) == (ts(2026, 11, 1), ts(2026, 12, 1))
    assert period_key("month", last) == "m202611"
    assert period_key("month", ts(2026, 12, 1)) == "m202612"
    assert period_bounds("month", ts(2026, 12, 31, 23, 59, 59)) == (ts(2026, 12, 1), ts(2027, 1, 1))


def test_leap_day() -> None:
    leap = ts(2028, 2, 29, 18)
    assert period_key("day", leap) == "d20280229"
    assert period_bounds("day", leap) == (ts(2028, 2, 29), ts(2028, 3, 1))
    start, end = period_bounds("month", leap)
    assert (start, end) == (ts(2028, 2, 1), ts(2028, 3, 1))
    assert end is not None
    assert (end - start) / 86_400 == 29
    # Not a leap year: February has 28 days.
    start, end = period_bounds("month", ts(2027, 2, 28, 23))
    assert end == ts(2027, 3, 1)
    assert (end - start) / 86_400 == 28
    # The week containing the leap day: Monday 2028-02-28 to Monday 2028-03-06.
    assert period_bounds("week", leap) == (ts(2028, 2, 28), ts(2028, 3, 6))


def test_a_week_spanning_a_year_boundary() -> None:
    # 2026-12-28 is a Monday; the week runs into 2027.
    assert period_bounds("week", ts(2027, 1, 2)) == (ts(2026, 12, 28), ts(2027, 1, 4))
    assert period_key("week", ts(2027, 1, 3, 23, 59, 59)) == "w20261228"


def test_total_never_ends() -> None:
    assert period_bounds("total", ts(2026, 11, 22)) == (0.0, None)
    assert period_key("total", ts(2030, 1, 1)) == "total"
    assert current_window("total", 5.0).seconds_left(5.0) is None


def test_seconds_left_counts_to_the_end_and_not_below_zero() -> None:
    window = current_window("day", ts(2026, 11, 22, 23, 0))
    assert window.seconds_left(ts(2026, 11, 22, 23, 0)) == 3600.0
    assert window.seconds_left(ts(2026, 11, 23, 1, 0)) == 0.0


def test_unknown_period_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"'fortnight'.*day, week, month, total"):
        period_bounds("fortnight", 0.0)
    assert PERIODS == ("day", "week", "month", "total")


def test_iso_utc() -> None:
    assert iso_utc(ts(2026, 11, 23)) == "2026-11-23T00:00:00Z"
    assert iso_utc(ts(2028, 2, 29, 7, 8, 9) + 0.75) == "2028-02-29T07:08:09Z"
