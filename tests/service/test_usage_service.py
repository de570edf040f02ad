"""omnirelay.v1.UsageService reports over gRPC: QueryUsage, ExportUsage and ForecastCost.

The ledger of an in-process server is seeded with synthetic records written
directly; every expected value is computed here, in plain Python over those
records (nearest-rank percentiles, our own grouping and ordering, our own
least-squares fit), never with the code under test.
"""

from __future__ import annotations

import dataclasses
import math
import random
import statistics
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from typing import Any, TypeAlias

import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from grpc import aio

from omnirelay.app import App
from omnirelay.config import Settings
from omnirelay.config.routing import PricingSettings
from omnirelay.domain import TokenUsage
from omnirelay.usage.records import BilledAttempt, UsageRecord
from omnirelay_client.v1 import (
    completion_pb2_grpc,
    stream_pb2_grpc,
    types_pb2,
    usage_pb2,
    usage_pb2_grpc,
)
from tests.conftest import StartServer
from tests.helpers import field_violations, request, stream_request

Dim: TypeAlias = usage_pb2.UsageDimension.ValueType
D = usage_pb2  # the dimension constants, shorter

# --- the synthetic ledger ---------------------------------------------------------------------

BASE = datetime(2026, 2, 25, tzinfo=UTC)  # a Wednesday: eleven days run into March and two ISO weeks
ROUTES = (
    ("gpt-4o", "openai", "openai/gpt-4o-2024-08-06"),
    ("gpt-4o", "azure", "azure/gpt-4o"),
    ("claude-sonnet", "anthropic", "anthropic/claude-sonnet"),
    ("local-small", "local", "local/small"),
)
PROJECTS = ("harbor", "dock", "pier")
USERS = ("ana", "bo", "cy", "")
STATUS_NAMES = {0: "OK", 8: "RESOURCE_EXHAUSTED", 14: "UNAVAILABLE"}
CACHE_ENUM = {
    "": types_pb2.CACHE_OUTCOME_UNSPECIFIED,
    "hit": types_pb2.CACHE_OUTCOME_HIT,
    "miss": types_pb2.CACHE_OUTCOME_MISS,
    "coalesced": types_pb2.CACHE_OUTCOME_COALESCED,
}
OUTCOME_ENUM = {
    "success": types_pb2.ATTEMPT_OUTCOME_SUCCESS,
    "upstream_error": types_pb2.ATTEMPT_OUTCOME_UPSTREAM_ERROR,
    "rate_limited": types_pb2.ATTEMPT_OUTCOME_RATE_LIMITED,
    "stream_broken": types_pb2.ATTEMPT_OUTCOME_STREAM_BROKEN,
}


@dataclass(frozen=True)
class Seeded:
    """One record and the exact values it was made from (latencies in whole milliseconds)."""

    record: UsageRecord
    when: datetime
    latency_ms: int
    ttft_ms: int | None
    attempt_ms: tuple[int, ...]


def _make_records() -> list[Seeded]:
    rng = random.Random(20260225)
    used_times: set[datetime] = set()
    out: list[Seeded] = []
    for i in range(96):
        while True:
            when = BASE + timedelta(
                days=rng.randrange(11),
                hours=rng.choice((0, 9, 13, 23)),
                minutes=rng.choice((0, 1, 30)),
                seconds=rng.randrange(60),
            )
            if when not in used_times:
                used_times.add(when)
                break
        model, provider, deployment = rng.choice(ROUTES)
        status = rng.choices((0, 8, 14), weights=(7, 2, 2))[0]
        cache = rng.choice(("hit", "coalesced", "miss", "", "")) if status == 0 else rng.choice(("", "miss"))
        from_cache = cache in ("hit", "coalesced")
        input_tokens = rng.randrange(10, 5000)
        cached = rng.randrange(0, input_tokens // 2) if rng.random() < 0.4 else 0
        cache_write = rng.randrange(0, input_tokens // 4) if rng.random() < 0.2 else 0
        output = rng.randrange(1, 2000) if status == 0 else rng.randrange(0, 50)
        reasoning = rng.randrange(0, output) if output and rng.random() < 0.3 else 0
        cost = 0 if from_cache else rng.randrange(0 if status else 1, 90_000)
        usage = TokenUsage(
            input_tokens=input_tokens,
            output_tokens=output,
            cached_input_tokens=cached,
            reasoning_tokens=reasoning,
            estimated=rng.random() < 0.2,
            cache_write_input_tokens=cache_write,
            cost_micros=cost,
        )
        fallback = not from_cache and rng.random() < 0.3
        streamed = rng.random() < 0.5
        latency_ms = rng.randrange(1, 4000)
        ttft_ms = rng.randrange(1, latency_ms + 1) if streamed and rng.random() < 0.8 else None
        attempts: list[BilledAttempt] = []
        attempt_ms: list[int] = []
        if fallback:
            ms = rng.randrange(1, 500)
            attempts.append(
                BilledAttempt(
                    model,
                    "other",
                    "other/" + model,
                    rng.choice(("upstream_error", "rate_limited")),
                    "503 from the upstream",
                    ms / 1000,
                    f"up-{i}-a",
                )
            )
            attempt_ms.append(ms)
        if not from_cache:
            ms = rng.randrange(1, latency_ms + 1)
            outcome = "success" if status == 0 else rng.choice(("upstream_error", "stream_broken"))
            attempts.append(
                BilledAttempt(model, provider, deployment, outcome, "", ms / 1000, f"up-{i}-b", usage)
            )
            attempt_ms.append(ms)
        tags = {}
        feature = rng.choice(("search", "chat", None))
        env = rng.choice(("prod", "dev", None))
        if feature:
            tags["feature"] = feature
        if env:
            tags["env"] = env
        record = UsageRecord(
            record_id=f"rec-{i:03d}",
            request_id=f"req-{i:03d}",
            time=when.timestamp(),
            requested_model=rng.choice((model, "fast")) if model == "local-small" else model,
            status_code=status,
            trace_id=f"{i:032x}",
            project=rng.choice(PROJECTS),
            user=rng.choice(USERS),
            tags=tuple(sorted(tags.items())),
            tenant=rng.choice(("", "acme")),
            resolved_model=model,
            provider=provider,
            deployment=deployment,
            attempts=tuple(attempts),
            usage=usage,
            price_table_version="pt-test",
            latency_seconds=latency_ms / 1000,
            ttft_seconds=None if ttft_ms is None else ttft_ms / 1000,
            cache=cache,
            saved_cost_micros=rng.randrange(1, 50_000) if from_cache else 0,
            streamed=streamed,
            fallback_used=fallback,
        )
        out.append(Seeded(record, when, latency_ms, ttft_ms, tuple(attempt_ms)))
    # A call refused before it resolved a model: it is grouped under the model it asked for.
    when = BASE + timedelta(days=3, hours=13, minutes=1, seconds=7, milliseconds=500)
    refused = UsageRecord(
        record_id="rec-refused",
        request_id="req-refused",
        time=when.timestamp(),
        requested_model="mystery",
        status_code=8,
        project="harbor",
        user="ana",
        tags=(("feature", "search"),),
        latency_seconds=0.002,
    )
    out.append(Seeded(refused, when, 2, None, ()))
    return out


DATA = _make_records()


def _check_data() -> None:
    # The filters and groupings below only prove something if the data varies along them.
    records = [s.record for s in DATA]
    assert {r.status_code for r in records} == {0, 8, 14}
    assert {r.cache for r in records} == {"hit", "coalesced", "miss", ""}
    assert any(r.fallback_used for r in records)
    assert any(r.usage.estimated for r in records)
    assert any(s.ttft_ms is not None for s in DATA)
    assert any(s.ttft_ms is None for s in DATA)
    assert len({s.when.isocalendar()[1] for s in DATA}) >= 2
    assert len({s.when.month for s in DATA}) == 2


_check_data()


async def _seed(
    start_server: StartServer, settings: Settings
) -> tuple[App, usage_pb2_grpc.UsageServiceAsyncStub]:
    app, channel = await start_server(settings)
    shuffled = [s.record for s in DATA]
    random.Random(7).shuffle(shuffled)  # written out of order: the server orders by time itself
    await app.usage.ledger.write(shuffled)
    return app, usage_pb2_grpc.UsageServiceStub(channel)


@pytest.fixture
async def usage(start_server: StartServer, settings: Settings) -> usage_pb2_grpc.UsageServiceAsyncStub:
    return (await _seed(start_server, settings))[1]


# --- what the groups should be, computed here ---------------------------------------------------


def duration_ms(ms: int) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000)


def nearest_rank(values: Sequence[int], p: int) -> int:
    """The ceil(p/100 * n)-th smallest value."""
    ordered = sorted(values)
    return ordered[math.ceil(Fraction(p, 100) * len(ordered)) - 1]


def percentiles_of(values: Sequence[int]) -> usage_pb2.DurationPercentiles:
    if not values:
        zero = duration_pb2.Duration()
        return usage_pb2.DurationPercentiles(p50=zero, p95=zero, p99=zero, samples=0)
    return usage_pb2.DurationPercentiles(
        p50=duration_ms(nearest_rank(values, 50)),
        p95=duration_ms(nearest_rank(values, 95)),
        p99=duration_ms(nearest_rank(values, 99)),
        samples=len(values),
    )


def _week(s: Seeded) -> str:
    day = s.when.date()
    return (day - timedelta(days=day.weekday())).isoformat()


def key_function(dim: Dim, tag: str = "") -> Callable[[Seeded], str]:
    functions: dict[Dim, Callable[[Seeded], str]] = {
        D.USAGE_DIMENSION_PROJECT: lambda s: s.record.project,
        D.USAGE_DIMENSION_USER: lambda s: s.record.user,
        D.USAGE_DIMENSION_MODEL: lambda s: s.record.resolved_model or s.record.requested_model,
        D.USAGE_DIMENSION_PROVIDER: lambda s: s.record.provider,
        D.USAGE_DIMENSION_DEPLOYMENT: lambda s: s.record.deployment,
        D.USAGE_DIMENSION_STATUS: lambda s: STATUS_NAMES[s.record.status_code],
        D.USAGE_DIMENSION_MINUTE: lambda s: s.when.strftime("%Y-%m-%dT%H:%M"),
        D.USAGE_DIMENSION_HOUR: lambda s: s.when.strftime("%Y-%m-%dT%H"),
        D.USAGE_DIMENSION_DAY: lambda s: s.when.date().isoformat(),
        D.USAGE_DIMENSION_WEEK: _week,
        D.USAGE_DIMENSION_MONTH: lambda s: s.when.strftime("%Y-%m"),
        D.USAGE_DIMENSION_TAG: lambda s: dict(s.record.tags).get(tag, ""),
    }
    return functions[dim]


def group_of(keys: tuple[str, ...], rows: Sequence[Seeded]) -> usage_pb2.UsageGroup:
    records = [s.record for s in rows]
    calls = len(records)
    failed = sum(1 for r in records if r.status_code != 0)
    hits = sum(1 for r in records if r.cache in ("hit", "coalesced"))
    fallbacks = sum(1 for r in records if r.fallback_used)
    estimated = sum(1 for r in records if r.usage.estimated)
    return usage_pb2.UsageGroup(
        keys=keys,
        calls=calls,
        failed_calls=failed,
        usage=types_pb2.Usage(
            input_tokens=sum(r.usage.input_tokens for r in records),
            output_tokens=sum(r.usage.output_tokens for r in records),
            cached_input_tokens=sum(r.usage.cached_input_tokens for r in records),
            reasoning_tokens=sum(r.usage.reasoning_tokens for r in records),
            cost_micros=sum(r.usage.cost_micros for r in records),
            estimated=estimated > 0,
            cache_write_input_tokens=sum(r.usage.cache_write_input_tokens for r in records),
        ),
        saved_cost_micros=sum(r.saved_cost_micros for r in records),
        error_rate=failed / calls,
        status_codes=dict(Counter(r.status_code for r in records)),
        cache_hits=hits,
        cache_hit_rate=hits / calls,
        fallback_calls=fallbacks,
        fallback_rate=fallbacks / calls,
        latency=percentiles_of([s.latency_ms for s in rows]),
        time_to_first_token=percentiles_of([s.ttft_ms for s in rows if s.ttft_ms is not None]),
        estimated_calls=estimated,
    )


def expected_groups(rows: Sequence[Seeded], dims: Sequence[Dim], tag: str = "") -> list[usage_pb2.UsageGroup]:
    keyers = [key_function(d, tag) for d in dims]
    buckets: dict[tuple[str, ...], list[Seeded]] = defaultdict(list)
    for s in rows:
        buckets[tuple(k(s) for k in keyers)].append(s)
    groups = [group_of(keys, members) for keys, members in buckets.items()]
    # Most expensive first; equal costs by their keys.
    return sorted(groups, key=lambda g: (-g.usage.cost_micros, tuple(g.keys)))


def ts(when: datetime) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=int(when.timestamp() // 1), nanos=when.microsecond * 1000)


# --- QueryUsage: groupings -----------------------------------------------------------------------

GROUPINGS: list[tuple[str, list[Dim], str]] = [
    ("total", [], ""),
    ("model", [D.USAGE_DIMENSION_MODEL], ""),
    ("project-day", [D.USAGE_DIMENSION_PROJECT, D.USAGE_DIMENSION_DAY], ""),
    ("status", [D.USAGE_DIMENSION_STATUS], ""),
    ("tag-feature", [D.USAGE_DIMENSION_TAG], "feature"),
    ("tag-env-user", [D.USAGE_DIMENSION_TAG, D.USAGE_DIMENSION_USER], "env"),
    ("week", [D.USAGE_DIMENSION_WEEK], ""),
    ("month", [D.USAGE_DIMENSION_MONTH], ""),
    ("minute", [D.USAGE_DIMENSION_MINUTE], ""),
    ("hour", [D.USAGE_DIMENSION_HOUR], ""),
    ("provider-deployment", [D.USAGE_DIMENSION_PROVIDER, D.USAGE_DIMENSION_DEPLOYMENT], ""),
]


@pytest.mark.parametrize(("dims", "tag"), [(d, t) for _, d, t in GROUPINGS], ids=[n for n, _, _ in GROUPINGS])
async def test_query_usage_groups_every_field(
    usage: usage_pb2_grpc.UsageServiceAsyncStub, dims: list[Dim], tag: str
) -> None:
    reply = await usage.QueryUsage(usage_pb2.QueryUsageRequest(group_by=dims, group_by_tag=tag))
    expected = expected_groups(DATA, dims, tag)
    assert [tuple(g.keys) for g in reply.groups] == [tuple(g.keys) for g in expected]
    for got, want in zip(reply.groups, expected, strict=True):
        assert got == want, f"group {tuple(want.keys)}"
    assert reply.next_page_token == ""
    assert sum(g.calls for g in reply.groups) == len(DATA)


async def test_query_usage_groupings_have_the_expected_shape(
    usage: usage_pb2_grpc.UsageServiceAsyncStub,
) -> None:
    """Spot checks written out by hand, so the expected-value helpers are not the only judge."""
    total = (await usage.QueryUsage(usage_pb2.QueryUsageRequest())).groups
    assert len(total) == 1
    assert list(total[0].keys) == []
    assert total[0].calls == len(DATA)
    months = await usage.QueryUsage(usage_pb2.QueryUsageRequest(group_by=[D.USAGE_DIMENSION_MONTH]))
    assert sorted(g.keys[0] for g in months.groups) == ["2026-02", "2026-03"]
    weeks = await usage.QueryUsage(usage_pb2.QueryUsageRequest(group_by=[D.USAGE_DIMENSION_WEEK]))
    # ISO weeks named by their Monday: 2026-02-23 and 2026-03-02 (the data ends on 2026-03-07).
    assert sorted(g.keys[0] for g in weeks.groups) == ["2026-02-23", "2026-03-02"]
    statuses = await usage.QueryUsage(usage_pb2.QueryUsageRequest(group_by=[D.USAGE_DIMENSION_STATUS]))
    assert {g.keys[0] for g in statuses.groups} == {"OK", "RESOURCE_EXHAUSTED", "UNAVAILABLE"}
    by_model = await usage.QueryUsage(usage_pb2.QueryUsageRequest(group_by=[D.USAGE_DIMENSION_MODEL]))
    (mystery,) = [g for g in by_model.groups if list(g.keys) == ["mystery"]]
    assert (mystery.calls, mystery.failed_calls, dict(mystery.status_codes)) == (1, 1, {8: 1})
    assert mystery.error_rate == 1.0
    costs = [g.usage.cost_micros for g in by_model.groups]
    assert costs == sorted(costs, reverse=True)


async def test_percentiles_are_nearest_rank(start_server: StartServer, settings: Settings) -> None:
    app, channel = await start_server(settings)
    # Latencies 1..20 ms: nearest rank gives p50 = 10th, p95 = 19th, p99 = 20th smallest (no interpolation).
    # Seven TTFTs: p50 = 4th, p95 = p99 = 7th smallest.
    ttfts = [30, 10, 70, 20, 60, 40, 50]
    records = [
        UsageRecord(
            record_id=f"pct-{ms}",
            request_id=f"pct-{ms}",
            time=BASE.timestamp() + ms,
            requested_model="m",
            status_code=0,
            latency_seconds=ms / 1000,
            ttft_seconds=ttfts[ms - 1] / 1000 if ms <= len(ttfts) else None,
        )
        for ms in (7, 3, 20, 1, 14, 2, 9, 18, 5, 11, 16, 4, 13, 6, 19, 8, 12, 15, 10, 17)
    ]
    await app.usage.ledger.write(records)
    (group,) = (
        await usage_pb2_grpc.UsageServiceStub(channel).QueryUsage(usage_pb2.QueryUsageRequest())
    ).groups
    ms = 1_000_000
    assert group.latency == usage_pb2.DurationPercentiles(
        p50=duration_pb2.Duration(nanos=10 * ms),
        p95=duration_pb2.Duration(nanos=19 * ms),
        p99=duration_pb2.Duration(nanos=20 * ms),
        samples=20,
    )
    assert group.time_to_first_token == usage_pb2.DurationPercentiles(
        p50=duration_pb2.Duration(nanos=40 * ms),
        p95=duration_pb2.Duration(nanos=70 * ms),
        p99=duration_pb2.Duration(nanos=70 * ms),
        samples=7,
    )


# --- QueryUsage: filters -------------------------------------------------------------------------

RANGE_START = BASE + timedelta(days=2, hours=9)
RANGE_END = BASE + timedelta(days=6, hours=13, minutes=1)


@dataclass(frozen=True)
class FilterCase:
    name: str
    fields: dict[str, Any]
    matches: Callable[[Seeded], bool]


FILTERS = [
    FilterCase(
        "time-range",
        {"start_time": RANGE_START, "end_time": RANGE_END},
        lambda s: RANGE_START <= s.when < RANGE_END,
    ),
    FilterCase("start-only", {"start_time": RANGE_START}, lambda s: s.when >= RANGE_START),
    FilterCase("end-only", {"end_time": RANGE_END}, lambda s: s.when < RANGE_END),
    FilterCase("project", {"project": "harbor"}, lambda s: s.record.project == "harbor"),
    FilterCase("user", {"user": "ana"}, lambda s: s.record.user == "ana"),
    FilterCase("model", {"model": "gpt-4o"}, lambda s: s.record.resolved_model == "gpt-4o"),
    FilterCase("provider", {"provider": "azure"}, lambda s: s.record.provider == "azure"),
    FilterCase(
        "deployment",
        {"deployment": "openai/gpt-4o-2024-08-06"},
        lambda s: s.record.deployment == "openai/gpt-4o-2024-08-06",
    ),
    FilterCase("one-tag", {"tags": {"feature": "search"}}, lambda s: ("feature", "search") in s.record.tags),
    FilterCase(
        "two-tags",
        {"tags": {"feature": "search", "env": "prod"}},
        lambda s: {("feature", "search"), ("env", "prod")} <= set(s.record.tags),
    ),
    FilterCase("status-codes", {"status_codes": [8, 14]}, lambda s: s.record.status_code in (8, 14)),
    FilterCase("status-ok", {"status_codes": [0]}, lambda s: s.record.status_code == 0),
    FilterCase(
        "combined",
        {
            "start_time": RANGE_START,
            "end_time": RANGE_END,
            "project": "harbor",
            "status_codes": [0],
            "tags": {"env": "prod"},
        },
        lambda s: (
            RANGE_START <= s.when < RANGE_END
            and s.record.project == "harbor"
            and s.record.status_code == 0
            and ("env", "prod") in s.record.tags
        ),
    ),
]


def usage_filter(fields: dict[str, Any]) -> usage_pb2.UsageFilter:
    f = usage_pb2.UsageFilter(
        project=fields.get("project", ""),
        user=fields.get("user", ""),
        model=fields.get("model", ""),
        provider=fields.get("provider", ""),
        deployment=fields.get("deployment", ""),
        tags=fields.get("tags", {}),
        status_codes=fields.get("status_codes", []),
    )
    if "start_time" in fields:
        f.start_time.CopyFrom(ts(fields["start_time"]))
    if "end_time" in fields:
        f.end_time.CopyFrom(ts(fields["end_time"]))
    return f


@pytest.mark.parametrize("case", FILTERS, ids=[c.name for c in FILTERS])
@pytest.mark.parametrize(
    "dims",
    [[], [D.USAGE_DIMENSION_DAY, D.USAGE_DIMENSION_MODEL]],
    ids=["total", "day-model"],
)
async def test_query_usage_filters(
    usage: usage_pb2_grpc.UsageServiceAsyncStub, case: FilterCase, dims: list[Dim]
) -> None:
    matching = [s for s in DATA if case.matches(s)]
    assert 0 < len(matching) < len(DATA), "a filter case must both keep and drop records"
    reply = await usage.QueryUsage(
        usage_pb2.QueryUsageRequest(filter=usage_filter(case.fields), group_by=dims)
    )
    assert list(reply.groups) == expected_groups(matching, dims)
    assert sum(g.calls for g in reply.groups) == len(matching)


async def test_query_usage_filter_matching_nothing_has_no_groups(
    usage: usage_pb2_grpc.UsageServiceAsyncStub,
) -> None:
    reply = await usage.QueryUsage(
        usage_pb2.QueryUsageRequest(filter=usage_pb2.UsageFilter(project="nobody"))
    )
    assert list(reply.groups) == []
    assert reply.next_page_token == ""


# --- QueryUsage: paging --------------------------------------------------------------------------


@pytest.mark.parametrize("page_size", [1, 7, 10])
async def test_paging_walks_every_group_once(
    usage: usage_pb2_grpc.UsageServiceAsyncStub, page_size: int
) -> None:
    dims = [D.USAGE_DIMENSION_PROJECT, D.USAGE_DIMENSION_DAY]
    expected = expected_groups(DATA, dims)
    assert len(expected) > 2 * page_size
    seen: list[usage_pb2.UsageGroup] = []
    token = ""
    pages = 0
    while True:
        reply = await usage.QueryUsage(
            usage_pb2.QueryUsageRequest(group_by=dims, page_size=page_size, page_token=token)
        )
        pages += 1
        assert 0 < len(reply.groups) <= page_size
        seen.extend(reply.groups)
        token = reply.next_page_token
        if not token:
            break
        assert pages <= len(expected), "paging does not end"
    assert pages == math.ceil(len(expected) / page_size)
    assert seen == expected
    assert len({tuple(g.keys) for g in seen}) == len(seen)


async def test_page_size_zero_returns_everything_on_one_page(
    usage: usage_pb2_grpc.UsageServiceAsyncStub,
) -> None:
    dims = [D.USAGE_DIMENSION_MINUTE]
    reply = await usage.QueryUsage(usage_pb2.QueryUsageRequest(group_by=dims, page_size=0))
    assert len(reply.groups) == len(expected_groups(DATA, dims)) > 50
    assert reply.next_page_token == ""


# --- QueryUsage / ExportUsage / ForecastCost: invalid arguments ----------------------------------


def _later_earlier(later: datetime, earlier: datetime) -> usage_pb2.UsageFilter:
    return usage_pb2.UsageFilter(start_time=ts(later), end_time=ts(earlier))


INVALID: list[tuple[str, usage_pb2.QueryUsageRequest, set[str]]] = [
    (
        "unknown-dimension",
        usage_pb2.QueryUsageRequest(group_by=[D.USAGE_DIMENSION_MODEL, 99]),  # type: ignore[list-item]
        {"group_by[1]"},
    ),
    (
        "unspecified-dimension",
        usage_pb2.QueryUsageRequest(group_by=[D.USAGE_DIMENSION_UNSPECIFIED]),
        {"group_by[0]"},
    ),
    ("tag-without-key", usage_pb2.QueryUsageRequest(group_by=[D.USAGE_DIMENSION_TAG]), {"group_by_tag"}),
    (
        "end-before-start",
        usage_pb2.QueryUsageRequest(filter=_later_earlier(BASE + timedelta(days=1), BASE)),
        {"filter.end_time"},
    ),
    ("end-equals-start", usage_pb2.QueryUsageRequest(filter=_later_earlier(BASE, BASE)), {"filter.end_time"}),
    ("bad-page-token", usage_pb2.QueryUsageRequest(page_token="abc"), {"page_token"}),
    ("negative-page-token", usage_pb2.QueryUsageRequest(page_token="-5"), {"page_token"}),
    ("negative-page-size", usage_pb2.QueryUsageRequest(page_size=-1), {"page_size"}),
    (
        "all-at-once",
        usage_pb2.QueryUsageRequest(
            filter=_later_earlier(BASE + timedelta(hours=1), BASE),
            group_by=[D.USAGE_DIMENSION_TAG, D.USAGE_DIMENSION_UNSPECIFIED],
            page_size=-3,
            page_token="next",
        ),
        {"filter.end_time", "group_by[1]", "group_by_tag", "page_size", "page_token"},
    ),
]


@pytest.mark.parametrize(("req", "fields"), [(r, f) for _, r, f in INVALID], ids=[n for n, _, _ in INVALID])
async def test_query_usage_invalid_arguments_name_the_fields(
    usage: usage_pb2_grpc.UsageServiceAsyncStub, req: usage_pb2.QueryUsageRequest, fields: set[str]
) -> None:
    with pytest.raises(aio.AioRpcError) as caught:
        await usage.QueryUsage(req)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(caught.value)) == fields


async def test_query_usage_non_decimal_digit_page_token_is_invalid_argument(
    usage: usage_pb2_grpc.UsageServiceAsyncStub,
) -> None:
    with pytest.raises(aio.AioRpcError) as caught:
        await usage.QueryUsage(usage_pb2.QueryUsageRequest(page_token="²"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(caught.value)) == {"page_token"}


async def test_export_usage_invalid_filter_names_the_field(
    usage: usage_pb2_grpc.UsageServiceAsyncStub,
) -> None:
    with pytest.raises(aio.AioRpcError) as caught:
        async for _ in usage.ExportUsage(
            usage_pb2.ExportUsageRequest(filter=_later_earlier(BASE + timedelta(days=1), BASE))
        ):
            pass
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(caught.value)) == {"filter.end_time"}


# --- ExportUsage ---------------------------------------------------------------------------------


def usage_proto(u: TokenUsage) -> types_pb2.Usage:
    return types_pb2.Usage(
        input_tokens=u.input_tokens,
        output_tokens=u.output_tokens,
        cached_input_tokens=u.cached_input_tokens,
        reasoning_tokens=u.reasoning_tokens,
        cost_micros=u.cost_micros,
        estimated=u.estimated,
        cache_write_input_tokens=u.cache_write_input_tokens,
    )


def expected_export(s: Seeded) -> usage_pb2.UsageRecord:
    r = s.record
    out = usage_pb2.UsageRecord(
        request_id=r.request_id,
        trace_id=r.trace_id,
        time=ts(s.when),
        attribution=types_pb2.Attribution(project=r.project, user=r.user, tags=dict(r.tags)),
        tenant=r.tenant,
        requested_model=r.requested_model,
        resolved_model=r.resolved_model,
        provider=r.provider,
        deployment=r.deployment,
        attempts=[
            usage_pb2.UsageAttempt(
                attempt=types_pb2.Attempt(
                    model=a.model,
                    provider=a.provider,
                    deployment=a.deployment,
                    outcome=OUTCOME_ENUM[a.outcome],
                    detail=a.detail,
                    latency=duration_ms(ms),
                    upstream_request_id=a.upstream_request_id,
                ),
                usage=usage_proto(a.usage),
            )
            for a, ms in zip(r.attempts, s.attempt_ms, strict=True)
        ],
        usage=usage_proto(r.usage),
        price_table_version=r.price_table_version,
        latency=duration_ms(s.latency_ms),
        status_code=r.status_code,
        cache=CACHE_ENUM[r.cache],
        saved_cost_micros=r.saved_cost_micros,
        streamed=r.streamed,
        fallback_used=r.fallback_used,
    )
    if s.ttft_ms is not None:
        out.time_to_first_token.CopyFrom(duration_ms(s.ttft_ms))
    return out


async def _export(
    usage: usage_pb2_grpc.UsageServiceAsyncStub, f: usage_pb2.UsageFilter | None = None
) -> list[usage_pb2.UsageRecord]:
    return [r.record async for r in usage.ExportUsage(usage_pb2.ExportUsageRequest(filter=f))]


async def test_export_streams_every_record_oldest_first_with_every_field(
    usage: usage_pb2_grpc.UsageServiceAsyncStub,
) -> None:
    got = await _export(usage)
    oldest_first = sorted(DATA, key=lambda s: s.when)
    assert [r.request_id for r in got] == [s.record.request_id for s in oldest_first]
    for record, s in zip(got, oldest_first, strict=True):
        assert record == expected_export(s), record.request_id
    # The variety the rendering is checked on really is in there.
    assert any(r.HasField("time_to_first_token") for r in got)
    assert any(not r.HasField("time_to_first_token") for r in got)
    assert {r.cache for r in got} == set(CACHE_ENUM.values())
    assert any(len(r.attempts) == 2 and r.attempts[1].usage.cost_micros > 0 for r in got)
    assert any(r.time.nanos == 500_000_000 for r in got)


@pytest.mark.parametrize(
    "case", [c for c in FILTERS if c.name in ("time-range", "two-tags", "combined")], ids=str
)
async def test_export_streams_exactly_the_matching_records(
    usage: usage_pb2_grpc.UsageServiceAsyncStub, case: FilterCase
) -> None:
    matching = sorted((s for s in DATA if case.matches(s)), key=lambda s: s.when)
    got = await _export(usage, usage_filter(case.fields))
    assert got == [expected_export(s) for s in matching]


async def test_export_renders_an_exactly_stored_quarter_second(
    start_server: StartServer, settings: Settings
) -> None:
    app, channel = await start_server(settings)
    when = 1772000000.25  # exactly representable as a float
    await app.usage.ledger.write(
        [UsageRecord(record_id="q", request_id="q", time=when, requested_model="m", status_code=0)]
    )
    (record,) = await _export(usage_pb2_grpc.UsageServiceStub(channel))
    assert (record.time.seconds, record.time.nanos) == (1772000000, 250_000_000)


# --- QueryUsage sees calls the recorder has not flushed yet -------------------------------------

PRICE = PricingSettings(input=2.5, output=10.0, source="test", as_of="2026-11-01")


async def test_query_usage_includes_calls_made_just_before(
    start_server: StartServer, settings: Settings
) -> None:
    small = dataclasses.replace(settings.models["local-small"], pricing=PRICE)
    slow_flush = dataclasses.replace(
        settings,
        models={**settings.models, "local-small": small},
        usage=dataclasses.replace(
            settings.usage, recorder=dataclasses.replace(settings.usage.recorder, flush_interval_seconds=60.0)
        ),
    )
    app, channel = await start_server(slow_flush)
    unary = completion_pb2_grpc.CompletionServiceStub(channel)
    streaming = stream_pb2_grpc.StreamCompletionServiceStub(channel)
    replies = []
    for i, user in enumerate(("ana", "bo")):
        req = request(f"just before {i}")
        req.attribution.project = "live"
        req.attribution.user = user
        replies.append(await unary.Complete(req))
    other = request("another project")
    other.attribution.project = "elsewhere"
    await unary.Complete(other)
    streamed = stream_request("just before, streamed")
    streamed.request.attribution.project = "live"
    events = [e async for e in streaming.StreamComplete(streamed)]
    (stream_usage,) = [e.usage for e in events if e.HasField("usage")]
    assert app.usage.recorder.counters.written == 0  # nothing reached the ledger by the flush interval

    reply = await usage_pb2_grpc.UsageServiceStub(channel).QueryUsage(
        usage_pb2.QueryUsageRequest(
            filter=usage_pb2.UsageFilter(project="live"), group_by=[D.USAGE_DIMENSION_PROJECT]
        )
    )
    (group,) = reply.groups
    usages = [r.usage for r in replies] + [stream_usage]
    assert list(group.keys) == ["live"]
    assert (group.calls, group.failed_calls) == (3, 0)
    assert group.usage.input_tokens == sum(u.input_tokens for u in usages)
    assert group.usage.output_tokens == sum(u.output_tokens for u in usages)
    cost = sum(u.cost_micros for u in usages)
    assert cost > 0
    assert group.usage.cost_micros == cost
    assert (group.latency.samples, group.time_to_first_token.samples) == (3, 1)
    assert dict(group.status_codes) == {0: 3}
    assert app.usage.recorder.counters.written == 4  # the query flushed the queue first


# --- ForecastCost --------------------------------------------------------------------------------

HISTORY_START = datetime(2026, 1, 7, tzinfo=UTC)  # a Wednesday: the weekday pattern is out of phase
HISTORY_DAYS = 28
LEVEL = 4_000_000
SLOPE = 60_000  # micros per day
WEEKDAY = (300_000, 200_000, 250_000, 400_000, 150_000, -1_200_000, -1_400_000)  # Monday first
NOISE = [((i * 7919) % 61 - 30) * 1000 for i in range(HISTORY_DAYS)]  # fixed, in [-30000, 30000]


def true_daily(t: int) -> int:
    return LEVEL + SLOPE * t + WEEKDAY[(HISTORY_START + timedelta(days=t)).weekday()]


def history_records() -> tuple[list[UsageRecord], list[int]]:
    """Three records a day whose costs add up to the day's spend; plus records outside the window."""
    records: list[UsageRecord] = []
    daily: list[int] = []
    for t in range(HISTORY_DAYS):
        spend = true_daily(t) + NOISE[t]
        daily.append(spend)
        parts = (spend // 3, spend // 3, spend - 2 * (spend // 3))
        for hour, cost in zip((1, 11, 22), parts, strict=True):
            when = HISTORY_START + timedelta(days=t, hours=hour)
            records.append(
                UsageRecord(
                    record_id=f"h-{t}-{hour}",
                    request_id=f"h-{t}-{hour}",
                    time=when.timestamp(),
                    requested_model="gpt-4o",
                    resolved_model="gpt-4o",
                    status_code=0,
                    usage=TokenUsage(input_tokens=100, output_tokens=10, cost_micros=cost),
                )
            )
    for name, when in (
        ("before", HISTORY_START - timedelta(hours=1)),
        ("after", HISTORY_START + timedelta(days=HISTORY_DAYS, minutes=1)),
    ):
        records.append(
            UsageRecord(
                record_id=name,
                request_id=name,
                time=when.timestamp(),
                requested_model="gpt-4o",
                status_code=0,
                usage=TokenUsage(cost_micros=900_000_000),
            )
        )
    return records, daily


def solve(a: list[list[Fraction]], b: list[Fraction]) -> list[Fraction]:
    """Gauss-Jordan elimination, exact."""
    n = len(b)
    m = [[*row, rhs] for row, rhs in zip(a, b, strict=True)]
    for col in range(n):
        pivot = next(r for r in range(col, n) if m[r][col] != 0)
        m[col], m[pivot] = m[pivot], m[col]
        for r in range(n):
            if r != col and m[r][col] != 0:
                factor = m[r][col] / m[col][col]
                m[r] = [x - factor * y for x, y in zip(m[r], m[col], strict=True)]
    return [m[i][n] / m[i][i] for i in range(n)]


def design(t: int) -> list[Fraction]:
    """cost = level[weekday] + slope * t: seven weekday indicators and t."""
    row = [Fraction(0)] * 8
    row[(HISTORY_START + timedelta(days=t)).weekday()] = Fraction(1)
    row[7] = Fraction(t)
    return row


def ols_forecast(daily: Sequence[int], horizon: int) -> tuple[list[int], float, float]:
    """Daily forecasts and the 80% interval of their total, from the normal equations."""
    x = [design(t) for t in range(len(daily))]
    xtx = [[sum((row[i] * row[j] for row in x), Fraction(0)) for j in range(8)] for i in range(8)]
    xty = [sum((row[i] * y for row, y in zip(x, daily, strict=True)), Fraction(0)) for i in range(8)]
    beta = solve(xtx, xty)

    def fitted(row: list[Fraction]) -> Fraction:
        return sum((b * v for b, v in zip(beta, row, strict=True)), Fraction(0))

    future = [design(t) for t in range(len(daily), len(daily) + horizon)]
    days = [round(max(Fraction(0), fitted(row))) for row in future]
    ssr = sum(((y - fitted(row)) ** 2 for row, y in zip(x, daily, strict=True)), Fraction(0))
    sigma2 = ssr / (len(daily) - 8)
    summed = [sum((row[i] for row in future), Fraction(0)) for i in range(8)]
    spread = sum((s * v for s, v in zip(summed, solve(xtx, summed), strict=True)), Fraction(0))
    variance = sigma2 * (horizon + spread)
    half = statistics.NormalDist().inv_cdf(0.9) * math.sqrt(variance)
    return days, sum(days) - half, sum(days) + half


def history_filter() -> usage_pb2.UsageFilter:
    return usage_pb2.UsageFilter(
        start_time=ts(HISTORY_START), end_time=ts(HISTORY_START + timedelta(days=HISTORY_DAYS))
    )


async def test_forecast_follows_trend_and_weekday_pattern(
    start_server: StartServer, settings: Settings
) -> None:
    app, channel = await start_server(settings)
    records, daily = history_records()
    await app.usage.ledger.write(records)
    reply = await usage_pb2_grpc.UsageServiceStub(channel).ForecastCost(
        usage_pb2.ForecastCostRequest(
            filter=history_filter(), horizon=duration_pb2.Duration(seconds=7 * 86400)
        )
    )
    truth = [true_daily(t) for t in range(HISTORY_DAYS, HISTORY_DAYS + 7)]
    # Near the noise-free continuation (noise is at most 30000 a day)...
    assert abs(reply.forecast_cost_micros - sum(truth)) <= 0.005 * sum(truth)
    for got, want in zip(reply.daily_forecast_micros, truth, strict=True):
        assert abs(got - want) <= 60_000
    # ...and exactly the least-squares continuation of the noisy history, day by day.
    days, low, high = ols_forecast(daily, 7)
    assert list(reply.daily_forecast_micros) == pytest.approx(days, abs=1)
    assert len(reply.daily_forecast_micros) == 7
    assert sum(reply.daily_forecast_micros) == reply.forecast_cost_micros
    assert reply.low_cost_micros == pytest.approx(low, abs=2)
    assert reply.high_cost_micros == pytest.approx(high, abs=2)
    assert reply.low_cost_micros < reply.forecast_cost_micros < reply.high_cost_micros
    assert (reply.history_days, reply.history_records) == (HISTORY_DAYS, 3 * HISTORY_DAYS)
    assert reply.method.strip()


async def test_forecast_horizon_in_hours_rounds_up_to_whole_days(
    start_server: StartServer, settings: Settings
) -> None:
    app, channel = await start_server(settings)
    records, daily = history_records()
    await app.usage.ledger.write(records)
    reply = await usage_pb2_grpc.UsageServiceStub(channel).ForecastCost(
        usage_pb2.ForecastCostRequest(
            filter=history_filter(), horizon=duration_pb2.Duration(seconds=36 * 3600)
        )
    )
    days, _, _ = ols_forecast(daily, 2)
    assert list(reply.daily_forecast_micros) == pytest.approx(days, abs=1)
    assert reply.forecast_cost_micros == sum(reply.daily_forecast_micros)


@pytest.mark.parametrize(
    "horizon",
    [
        duration_pb2.Duration(seconds=0),
        duration_pb2.Duration(seconds=-86400),
        duration_pb2.Duration(seconds=0, nanos=-1),
        duration_pb2.Duration(seconds=3661 * 86400),
    ],
    ids=["zero", "minus-a-day", "minus-a-nanosecond", "over-ten-years"],
)
async def test_forecast_rejects_a_horizon_out_of_range(
    start_server: StartServer, settings: Settings, horizon: duration_pb2.Duration
) -> None:
    _, channel = await start_server(settings)
    with pytest.raises(aio.AioRpcError) as caught:
        await usage_pb2_grpc.UsageServiceStub(channel).ForecastCost(
            usage_pb2.ForecastCostRequest(filter=history_filter(), horizon=horizon)
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(caught.value)) == {"horizon"}


async def test_forecast_counts_the_windows_empty_last_days(
    start_server: StartServer, settings: Settings
) -> None:
    app, channel = await start_server(settings)
    # Spend every day of the first three weeks, nothing in the last week of the 28-day window.
    await app.usage.ledger.write(
        [
            UsageRecord(
                record_id=f"e-{t}",
                request_id=f"e-{t}",
                time=(HISTORY_START + timedelta(days=t, hours=12)).timestamp(),
                requested_model="m",
                status_code=0,
                usage=TokenUsage(cost_micros=1_000_000),
            )
            for t in range(21)
        ]
    )
    reply = await usage_pb2_grpc.UsageServiceStub(channel).ForecastCost(
        usage_pb2.ForecastCostRequest(
            filter=history_filter(), horizon=duration_pb2.Duration(seconds=7 * 86400)
        )
    )
    assert reply.history_days == HISTORY_DAYS
    # A week of nothing after three of $1/day: the next week is not forecast at the old rate.
    assert reply.forecast_cost_micros < 7_000_000
