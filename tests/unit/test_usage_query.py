"""Usage aggregation: group keys for every dimension, every metric of a group, percentiles and order.

Expected values are worked out here from the records themselves (sums, sorted() and a ceil rank),
never by asking the aggregator.
"""

from __future__ import annotations

import calendar
import math
import random
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import pytest

from omnirelay.domain import TokenUsage
from omnirelay.usage.query import Aggregator, Dimension, Group, Percentiles, aggregate
from omnirelay.usage.records import UsageRecord

NOON = calendar.timegm((2026, 11, 22, 12, 0, 0))  # a Sunday


def utc(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: float = 0) -> float:
    return calendar.timegm((y, mo, d, h, mi, 0)) + s


_ids = iter(range(1_000_000))


def rec(**fields: Any) -> UsageRecord:
    usage = TokenUsage(
        input_tokens=fields.pop("input_tokens", 0),
        output_tokens=fields.pop("output_tokens", 0),
        cached_input_tokens=fields.pop("cached_input_tokens", 0),
        cache_write_input_tokens=fields.pop("cache_write_input_tokens", 0),
        reasoning_tokens=fields.pop("reasoning_tokens", 0),
        cost_micros=fields.pop("cost_micros", 0),
        estimated=fields.pop("estimated", False),
    )
    fields.setdefault("time", NOON)
    fields.setdefault("requested_model", "m")
    fields.setdefault("status_code", 0)
    n = next(_ids)
    return UsageRecord(record_id=f"r{n}", request_id=f"q{n}", usage=usage, **fields)


def group_of(records: Sequence[UsageRecord], *dims: Dimension, tag_key: str = "") -> list[Group]:
    agg = Aggregator(dims, tag_key)
    for r in records:
        agg.add(r)
    return agg.groups()


def calls_by_key(groups: list[Group]) -> dict[tuple[str, ...], int]:
    return {g.keys: g.calls for g in groups}


def nearest_rank(values: Sequence[float], p: int) -> float:
    ordered = sorted(values)
    return ordered[math.ceil(p * len(ordered) / 100) - 1]


# --- keys per dimension ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dimension", "field"),
    [
        (Dimension.PROJECT, "project"),
        (Dimension.USER, "user"),
        (Dimension.PROVIDER, "provider"),
        (Dimension.DEPLOYMENT, "deployment"),
    ],
)
def test_groups_by_a_record_field(dimension: Dimension, field: str) -> None:
    values = ["a", "b", "a", "c", "a", "b", ""]
    groups = group_of([rec(**{field: v}) for v in values], dimension)
    assert calls_by_key(groups) == {("a",): 3, ("b",): 2, ("c",): 1, ("",): 1}


def test_model_is_the_resolved_model_or_else_the_requested_one() -> None:
    records = [
        rec(requested_model="fast", resolved_model="openai/gpt-4o-mini"),
        rec(requested_model="openai/gpt-4o-mini", resolved_model="openai/gpt-4o-mini"),
        rec(requested_model="no-such-model", resolved_model=""),
    ]
    assert calls_by_key(group_of(records, Dimension.MODEL)) == {
        ("openai/gpt-4o-mini",): 2,
        ("no-such-model",): 1,
    }


def test_status_is_the_grpc_code_name_or_the_number_for_an_unknown_code() -> None:
    codes = [0, 0, 14, 4, 14, 16, 99]
    groups = group_of([rec(status_code=c) for c in codes], Dimension.STATUS)
    assert calls_by_key(groups) == {
        ("OK",): 2,
        ("UNAVAILABLE",): 2,
        ("DEADLINE_EXCEEDED",): 1,
        ("UNAUTHENTICATED",): 1,
        ("99",): 1,
    }


@pytest.mark.parametrize(
    ("dimension", "before", "after"),
    [
        # The last instant of a bucket and the first of the next.
        (
            Dimension.MINUTE,
            ("2026-11-22T10:05", utc(2026, 11, 22, 10, 5, 59.999)),
            ("2026-11-22T10:06", utc(2026, 11, 22, 10, 6)),
        ),
        (
            Dimension.HOUR,
            ("2026-11-22T10", utc(2026, 11, 22, 10, 59, 59)),
            ("2026-11-22T11", utc(2026, 11, 22, 11)),
        ),
        (Dimension.DAY, ("2026-11-22", utc(2026, 11, 22, 23, 59, 59.5)), ("2026-11-23", utc(2026, 11, 23))),
        # 2026-11-22 is a Sunday: its week is Monday the 16th's; Monday the 23rd starts the next.
        (Dimension.WEEK, ("2026-11-16", utc(2026, 11, 22, 23, 59, 59)), ("2026-11-23", utc(2026, 11, 23))),
        (Dimension.MONTH, ("2026-11", utc(2026, 11, 30, 23, 59, 59)), ("2026-12", utc(2026, 12, 1))),
        (Dimension.MONTH, ("2026-12", utc(2026, 12, 31, 23, 59, 59)), ("2027-01", utc(2027, 1, 1))),
        (Dimension.DAY, ("2028-02-29", utc(2028, 2, 29, 23, 59, 59)), ("2028-03-01", utc(2028, 3, 1))),
    ],
)
def test_time_buckets_are_utc_and_split_exactly_at_their_boundary(
    dimension: Dimension, before: tuple[str, float], after: tuple[str, float]
) -> None:
    groups = group_of([rec(time=before[1]), rec(time=before[1]), rec(time=after[1])], dimension)
    assert calls_by_key(groups) == {(before[0],): 2, (after[0],): 1}


@pytest.fixture
def local_time_far_from_utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # A POSIX zone ten hours behind UTC, so a bucket taken from local time would land on another day.
    monkeypatch.setenv("TZ", "XXX+10")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("local_time_far_from_utc")
def test_time_buckets_ignore_the_local_time_zone() -> None:
    t = utc(2026, 11, 30, 3, 30)
    expected = ["2026-11-30T03:30", "2026-11-30T03", "2026-11-30", "2026-11-30", "2026-11"]
    dims = [Dimension.MINUTE, Dimension.HOUR, Dimension.DAY, Dimension.WEEK, Dimension.MONTH]
    assert [group_of([rec(time=t)], d)[0].keys[0] for d in dims] == expected


def test_a_week_across_new_year_is_named_by_its_monday_in_the_old_year() -> None:
    # Monday 2026-12-28 to Sunday 2027-01-03 is one ISO week; Monday 2027-01-04 starts the next.
    times = [utc(2026, 12, 28), utc(2026, 12, 31, 23, 59, 59), utc(2027, 1, 1), utc(2027, 1, 3, 23, 59, 59)]
    groups = group_of([rec(time=t) for t in [*times, utc(2027, 1, 4)]], Dimension.WEEK)
    assert calls_by_key(groups) == {("2026-12-28",): 4, ("2027-01-04",): 1}


def test_minute_and_hour_keys_have_zero_padded_fields() -> None:
    t = utc(2026, 3, 5, 7, 8, 9)
    assert group_of([rec(time=t)], Dimension.MINUTE)[0].keys == ("2026-03-05T07:08",)
    assert group_of([rec(time=t)], Dimension.HOUR)[0].keys == ("2026-03-05T07",)


def test_tag_groups_by_the_named_tag_and_records_without_it_share_the_empty_key() -> None:
    records = [
        rec(tags=(("env", "prod"), ("team", "search"))),
        rec(tags=(("team", "search"),)),
        rec(tags=(("env", "dev"), ("team", "ads"))),
        rec(tags=(("env", "prod"),)),
        rec(),
    ]
    assert calls_by_key(group_of(records, Dimension.TAG, tag_key="team")) == {
        ("search",): 2,
        ("ads",): 1,
        ("",): 2,
    }
    assert calls_by_key(group_of(records, Dimension.TAG, tag_key="env")) == {
        ("prod",): 2,
        ("dev",): 1,
        ("",): 2,
    }


def test_grouping_by_tag_without_a_tag_key_is_refused() -> None:
    with pytest.raises(ValueError, match="tag"):
        Aggregator([Dimension.PROJECT, Dimension.TAG])


def test_two_dimensions_key_every_combination_in_group_by_order() -> None:
    rng = random.Random(7)
    records = [
        rec(
            project=rng.choice(["alpha", "beta", "gamma"]),
            resolved_model=rng.choice(["m1", "m2"]),
            cost_micros=rng.randrange(0, 5000),
        )
        for _ in range(200)
    ]
    expected_calls: dict[tuple[str, str], int] = {}
    expected_cost: dict[tuple[str, str], int] = {}
    for r in records:
        k = (r.project, r.resolved_model)
        expected_calls[k] = expected_calls.get(k, 0) + 1
        expected_cost[k] = expected_cost.get(k, 0) + r.usage.cost_micros

    groups = group_of(records, Dimension.PROJECT, Dimension.MODEL)
    assert calls_by_key(groups) == expected_calls
    assert {g.keys: g.cost_micros for g in groups} == expected_cost

    flipped = group_of(records, Dimension.MODEL, Dimension.PROJECT)
    assert calls_by_key(flipped) == {(m, p): n for (p, m), n in expected_calls.items()}


def test_no_dimensions_make_one_total_and_no_records_make_no_groups() -> None:
    records = [rec(project=p, cost_micros=c) for p, c in [("a", 5), ("b", 7), ("a", 11)]]
    [total] = group_of(records)
    assert total.keys == ()
    assert total.calls == 3
    assert total.cost_micros == 23
    assert group_of([]) == []
    assert group_of([], Dimension.PROJECT) == []


# --- metrics ----------------------------------------------------------------------------------------


def mixed_records() -> list[UsageRecord]:
    rng = random.Random(2026)
    records = []
    for i in range(57):
        input_tokens = rng.randrange(10, 5000)
        output_tokens = rng.randrange(1, 2000)
        records.append(
            rec(
                project="p",
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                cached_input_tokens=rng.randrange(0, input_tokens),
                cache_write_input_tokens=rng.randrange(0, 50),
                reasoning_tokens=rng.randrange(0, output_tokens),
                cost_micros=rng.randrange(0, 20_000),
                estimated=rng.random() < 0.2,
                status_code=rng.choice([0, 0, 0, 0, 8, 14, 4, 13]),
                cache=rng.choice(["", "hit", "miss", "coalesced", "bypass", "refresh"]),
                saved_cost_micros=rng.randrange(0, 9000),
                fallback_used=rng.random() < 0.3,
                latency_seconds=round(rng.uniform(0.01, 9.0), 3),
                ttft_seconds=round(rng.uniform(0.01, 2.0), 3) if i % 3 else None,
                streamed=i % 3 != 0,
            )
        )
    return records


def test_every_metric_of_a_group_matches_a_sum_over_its_records() -> None:
    records = mixed_records()
    [g] = group_of(records, Dimension.PROJECT)
    n = len(records)

    failed = sum(1 for r in records if r.status_code != 0)
    hits = sum(1 for r in records if r.cache in ("hit", "coalesced"))
    fallbacks = sum(1 for r in records if r.fallback_used)
    codes: dict[int, int] = {}
    for r in records:
        codes[r.status_code] = codes.get(r.status_code, 0) + 1

    assert g.keys == ("p",)
    assert g.calls == n
    assert g.failed_calls == failed
    assert g.error_rate == pytest.approx(failed / n)
    assert dict(g.status_codes) == codes
    assert [code for code, _ in g.status_codes] == sorted(codes)
    assert g.input_tokens == sum(r.usage.input_tokens for r in records)
    assert g.output_tokens == sum(r.usage.output_tokens for r in records)
    assert g.cached_input_tokens == sum(r.usage.cached_input_tokens for r in records)
    assert g.cache_write_input_tokens == sum(r.usage.cache_write_input_tokens for r in records)
    assert g.reasoning_tokens == sum(r.usage.reasoning_tokens for r in records)
    assert g.cost_micros == sum(r.usage.cost_micros for r in records)
    assert g.saved_cost_micros == sum(r.saved_cost_micros for r in records)
    assert g.cache_hits == hits
    assert g.cache_hit_rate == pytest.approx(hits / n)
    assert g.fallback_calls == fallbacks
    assert g.fallback_rate == pytest.approx(fallbacks / n)
    assert g.estimated_calls == sum(1 for r in records if r.usage.estimated)

    latencies = [r.latency_seconds for r in records]
    assert g.latency == Percentiles(
        nearest_rank(latencies, 50), nearest_rank(latencies, 95), nearest_rank(latencies, 99), n
    )
    ttfts = [r.ttft_seconds for r in records if r.ttft_seconds is not None]
    assert len(ttfts) < n
    assert g.ttft == Percentiles(
        nearest_rank(ttfts, 50), nearest_rank(ttfts, 95), nearest_rank(ttfts, 99), len(ttfts)
    )


def test_status_code_distribution_and_error_rate_of_a_small_group() -> None:
    records = [rec(status_code=c) for c in [0, 14, 0, 14, 8, 0, 0, 0]]
    [g] = group_of(records)
    assert g.status_codes == ((0, 5), (8, 1), (14, 2))
    assert g.failed_calls == 3
    assert g.error_rate == 3 / 8


def test_hits_and_coalesced_calls_count_as_cache_hits_and_nothing_else_does() -> None:
    outcomes = ["hit", "coalesced", "miss", "bypass", "refresh", "", "hit"]
    [g] = group_of([rec(cache=o, saved_cost_micros=100 if o == "hit" else 0) for o in outcomes])
    assert g.cache_hits == 3
    assert g.cache_hit_rate == 3 / 7
    assert g.saved_cost_micros == 200


def test_rates_and_counts_are_zero_when_nothing_happened() -> None:
    [g] = group_of([rec(latency_seconds=0.5)])
    assert (g.failed_calls, g.error_rate) == (0, 0.0)
    assert (g.cache_hits, g.cache_hit_rate) == (0, 0.0)
    assert (g.fallback_calls, g.fallback_rate) == (0, 0.0)
    assert g.estimated_calls == 0
    assert g.status_codes == ((0, 1),)
    # No call received a first token: no samples, all zero.
    assert g.ttft == Percentiles(0.0, 0.0, 0.0, 0)
    assert g.latency == Percentiles(0.5, 0.5, 0.5, 1)


def test_fallbacks_and_estimated_calls_are_counted_per_group() -> None:
    records = [
        rec(project="a", fallback_used=True, estimated=True),
        rec(project="a", fallback_used=True),
        rec(project="a"),
        rec(project="b", estimated=True),
    ]
    groups = {g.keys: g for g in group_of(records, Dimension.PROJECT)}
    assert (groups[("a",)].fallback_calls, groups[("a",)].fallback_rate) == (2, 2 / 3)
    assert groups[("a",)].estimated_calls == 1
    assert (groups[("b",)].fallback_calls, groups[("b",)].fallback_rate) == (0, 0.0)
    assert groups[("b",)].estimated_calls == 1


def test_the_group_usage_sums_tokens_and_is_estimated_when_any_call_was() -> None:
    records = [
        rec(
            input_tokens=10, output_tokens=3, cached_input_tokens=4, cache_write_input_tokens=2, cost_micros=9
        ),
        rec(input_tokens=5, output_tokens=8, reasoning_tokens=6, cost_micros=1, estimated=True),
    ]
    [g] = group_of(records)
    assert g.usage == TokenUsage(
        input_tokens=15,
        output_tokens=11,
        cached_input_tokens=4,
        cache_write_input_tokens=2,
        reasoning_tokens=6,
        cost_micros=10,
        estimated=True,
    )
    [exact] = group_of(records[:1])
    assert exact.usage.estimated is False


# --- percentiles -------------------------------------------------------------------------------------


def test_percentiles_of_one_to_a_hundred_are_the_ranks_themselves() -> None:
    values = list(range(100, 0, -1))  # unsorted on purpose
    [g] = group_of([rec(latency_seconds=float(v)) for v in values])
    assert g.latency == Percentiles(50.0, 95.0, 99.0, 100)


@pytest.mark.parametrize("n", [1, 2, 3, 7, 19, 20, 21, 99, 100, 101, 250])
def test_percentiles_are_nearest_rank_for_any_count(n: int) -> None:
    rng = random.Random(n)
    values = [rng.uniform(0.0, 30.0) for _ in range(n)]
    [g] = group_of([rec(latency_seconds=v, ttft_seconds=v / 10) for v in values])
    assert g.latency == Percentiles(
        nearest_rank(values, 50), nearest_rank(values, 95), nearest_rank(values, 99), n
    )
    tenths = [v / 10 for v in values]
    assert g.ttft == Percentiles(
        nearest_rank(tenths, 50), nearest_rank(tenths, 95), nearest_rank(tenths, 99), n
    )


def test_a_single_slow_call_among_twenty_is_the_p99_but_not_the_p95() -> None:
    # 19 of 20 samples (95%) are at most 0.1 s, so p95 is 0.1; p99 needs all 20.
    [g] = group_of([rec(latency_seconds=0.1) for _ in range(19)] + [rec(latency_seconds=12.0)])
    assert (g.latency.p50, g.latency.p95, g.latency.p99) == (0.1, 0.1, 12.0)


# --- order ----------------------------------------------------------------------------------------


def test_groups_are_most_expensive_first_and_ties_are_ordered_by_keys() -> None:
    spend = [("c", "x", 50), ("a", "y", 50), ("b", "x", 900), ("a", "x", 50), ("d", "x", 0), ("c", "x", 25)]
    records = [rec(project=p, user=u, cost_micros=c) for p, u, c in spend]
    groups = group_of(records, Dimension.PROJECT, Dimension.USER)
    assert [(g.keys, g.cost_micros) for g in groups] == [
        (("b", "x"), 900),
        (("c", "x"), 75),
        (("a", "x"), 50),
        (("a", "y"), 50),
        (("d", "x"), 0),
    ]


def test_groups_can_be_read_while_records_keep_arriving() -> None:
    agg = Aggregator([Dimension.PROJECT])
    agg.add(rec(project="a", cost_micros=5))
    assert [(g.keys, g.calls) for g in agg.groups()] == [(("a",), 1)]
    agg.add(rec(project="a", cost_micros=5))
    agg.add(rec(project="b", cost_micros=20))
    assert [(g.keys, g.calls, g.cost_micros) for g in agg.groups()] == [(("b",), 1, 20), (("a",), 2, 10)]


# --- async ----------------------------------------------------------------------------------------


async def test_aggregate_reads_an_async_stream_of_records() -> None:
    records = [
        rec(user=u, time=t, cost_micros=c, tags=(("team", tm),))
        for u, t, c, tm in [
            ("ann", utc(2026, 11, 22, 23, 59, 59), 30, "ads"),
            ("ann", utc(2026, 11, 23), 10, "ads"),
            ("bob", utc(2026, 11, 23, 8), 40, "ads"),
            ("ann", utc(2026, 11, 23, 9), 15, "search"),
        ]
    ]

    async def stream() -> AsyncIterator[UsageRecord]:
        for r in records:
            yield r

    groups = await aggregate(stream(), [Dimension.DAY, Dimension.TAG], tag_key="team")
    assert [(g.keys, g.calls, g.cost_micros) for g in groups] == [
        (("2026-11-23", "ads"), 2, 50),
        (("2026-11-22", "ads"), 1, 30),
        (("2026-11-23", "search"), 1, 15),
    ]
    assert await aggregate(stream(), []) == group_of(records)
