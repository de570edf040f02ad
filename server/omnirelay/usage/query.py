"""Usage records aggregated into groups: counts, tokens, cost, rates and latency percentiles.

An ``Aggregator`` takes records one at a time, so a report over a long range
reads the ledger as a stream and keeps only one accumulator per group. Each
group keeps its latency and time-to-first-token samples, because exact
percentiles need them; everything else is a running sum.

Percentiles use the nearest-rank method: the p-th percentile of n samples is
the smallest sample such that at least p% of the samples are less than or
equal to it, i.e. the ``ceil(p * n / 100)``-th smallest. It always returns an
observed value (no interpolation), so a p99 is a latency some call really had.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import grpc

from omnirelay.domain import TokenUsage
from omnirelay.usage.records import UsageRecord

# Both count as answered from the cache: a coalesced call shared an identical call's upstream answer.
_CACHE_HITS = frozenset({"hit", "coalesced"})

_STATUS_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


class Dimension(enum.Enum):
    """What a group is keyed by; the values are the names queries and the CLI use."""

    PROJECT = "project"
    USER = "user"
    MODEL = "model"
    PROVIDER = "provider"
    DEPLOYMENT = "deployment"
    STATUS = "status"
    MINUTE = "minute"
    HOUR = "hour"
    DAY = "day"
    WEEK = "week"
    MONTH = "month"
    TAG = "tag"


@dataclass(frozen=True, slots=True)
class Percentiles:
    """Nearest-rank percentiles in seconds; all zero when there were no samples."""

    p50: float
    p95: float
    p99: float
    samples: int


@dataclass(frozen=True, slots=True)
class Group:
    """One group's totals. Rates are 0.0 when the group has no calls."""

    keys: tuple[str, ...]  # one per group_by dimension, in group_by order
    calls: int
    failed_calls: int
    error_rate: float
    status_codes: tuple[tuple[int, int], ...]  # (gRPC status code, calls), by code
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int
    cache_write_input_tokens: int
    reasoning_tokens: int
    cost_micros: int
    saved_cost_micros: int
    cache_hits: int
    cache_hit_rate: float
    fallback_calls: int
    fallback_rate: float
    estimated_calls: int
    latency: Percentiles
    ttft: Percentiles  # over the calls that received a first token

    @property
    def usage(self) -> TokenUsage:
        # A group is "estimated" when any of its calls was: its totals are then not all provider-reported.
        return TokenUsage(
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            cached_input_tokens=self.cached_input_tokens,
            cache_write_input_tokens=self.cache_write_input_tokens,
            reasoning_tokens=self.reasoning_tokens,
            cost_micros=self.cost_micros,
            estimated=self.estimated_calls > 0,
        )


def status_name(code: int) -> str:
    """The gRPC name of a status code ("OK", "UNAVAILABLE"...), or the number for a code gRPC lacks."""
    return _STATUS_NAMES.get(code, str(code))


def percentiles(samples: Sequence[float]) -> Percentiles:
    """p50/p95/p99 by nearest rank (see the module docstring)."""
    n = len(samples)
    if n == 0:
        return Percentiles(0.0, 0.0, 0.0, 0)
    ordered = sorted(samples)

    def rank(p: int) -> float:
        # Integer ceil(p * n / 100): float division can land just above a whole rank and skip a sample.
        return ordered[max(1, -(-p * n // 100)) - 1]

    return Percentiles(rank(50), rank(95), rank(99), n)


def _utc(record: UsageRecord) -> datetime:
    return datetime.fromtimestamp(record.time, tz=UTC)


def _week(record: UsageRecord) -> str:
    day = _utc(record).date()
    return (day - timedelta(days=day.weekday())).isoformat()


def _tag(record: UsageRecord, key: str) -> str:
    for name, value in record.tags:
        if name == key:
            return value
    return ""


def _key_function(dimension: Dimension, tag_key: str) -> Callable[[UsageRecord], str]:
    match dimension:
        case Dimension.PROJECT:
            return lambda r: r.project
        case Dimension.USER:
            return lambda r: r.user
        case Dimension.MODEL:
            # A call that never resolved (an unknown model) is still shown under what was asked for.
            return lambda r: r.resolved_model or r.requested_model
        case Dimension.PROVIDER:
            return lambda r: r.provider
        case Dimension.DEPLOYMENT:
            return lambda r: r.deployment
        case Dimension.STATUS:
            return lambda r: status_name(r.status_code)
        case Dimension.MINUTE:
            return lambda r: _utc(r).strftime("%Y-%m-%dT%H:%M")
        case Dimension.HOUR:
            return lambda r: _utc(r).strftime("%Y-%m-%dT%H")
        case Dimension.DAY:
            return lambda r: _utc(r).date().isoformat()
        case Dimension.WEEK:
            return _week
        case Dimension.MONTH:
            return lambda r: _utc(r).strftime("%Y-%m")
        case Dimension.TAG:
            return lambda r: _tag(r, tag_key)


class _Totals:
    """A group's running sums; the duration samples are the only part that grows with calls."""

    __slots__ = (
        "cache_hits",
        "cache_write_input_tokens",
        "cached_input_tokens",
        "calls",
        "cost_micros",
        "estimated_calls",
        "failed_calls",
        "fallback_calls",
        "input_tokens",
        "latencies",
        "output_tokens",
        "reasoning_tokens",
        "saved_cost_micros",
        "status_codes",
        "ttfts",
    )

    def __init__(self) -> None:
        self.calls = 0
        self.failed_calls = 0
        self.status_codes: dict[int, int] = {}
        self.input_tokens = 0
        self.output_tokens = 0
        self.cached_input_tokens = 0
        self.cache_write_input_tokens = 0
        self.reasoning_tokens = 0
        self.cost_micros = 0
        self.saved_cost_micros = 0
        self.cache_hits = 0
        self.fallback_calls = 0
        self.estimated_calls = 0
        self.latencies: list[float] = []
        self.ttfts: list[float] = []

    def add(self, r: UsageRecord) -> None:
        u = r.usage
        self.calls += 1
        self.failed_calls += r.failed
        self.status_codes[r.status_code] = self.status_codes.get(r.status_code, 0) + 1
        self.input_tokens += u.input_tokens
        self.output_tokens += u.output_tokens
        self.cached_input_tokens += u.cached_input_tokens
        self.cache_write_input_tokens += u.cache_write_input_tokens
        self.reasoning_tokens += u.reasoning_tokens
        self.cost_micros += u.cost_micros
        self.saved_cost_micros += r.saved_cost_micros
        self.cache_hits += r.cache in _CACHE_HITS
        self.fallback_calls += r.fallback_used
        self.estimated_calls += u.estimated
        self.latencies.append(r.latency_seconds)
        if r.ttft_seconds is not None:
            self.ttfts.append(r.ttft_seconds)

    def group(self, keys: tuple[str, ...]) -> Group:
        return Group(
            keys=keys,
            calls=self.calls,
            failed_calls=self.failed_calls,
            error_rate=_rate(self.failed_calls, self.calls),
            status_codes=tuple(sorted(self.status_codes.items())),
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            cached_input_tokens=self.cached_input_tokens,
            cache_write_input_tokens=self.cache_write_input_tokens,
            reasoning_tokens=self.reasoning_tokens,
            cost_micros=self.cost_micros,
            saved_cost_micros=self.saved_cost_micros,
            cache_hits=self.cache_hits,
            cache_hit_rate=_rate(self.cache_hits, self.calls),
            fallback_calls=self.fallback_calls,
            fallback_rate=_rate(self.fallback_calls, self.calls),
            estimated_calls=self.estimated_calls,
            latency=percentiles(self.latencies),
            ttft=percentiles(self.ttfts),
        )


def _rate(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


class Aggregator:
    """Groups records by ``group_by`` (in order); no dimensions means one total group keyed ``()``."""

    def __init__(self, group_by: Sequence[Dimension], tag_key: str = "") -> None:
        if Dimension.TAG in group_by and not tag_key:
            # Every record would land in one "" group, which reads like an answer but is a caller mistake.
            raise ValueError("grouping by tag needs the tag key to group by")
        self._keys = tuple(_key_function(d, tag_key) for d in group_by)
        self._totals: dict[tuple[str, ...], _Totals] = {}

    def add(self, record: UsageRecord) -> None:
        keys = tuple(key(record) for key in self._keys)
        totals = self._totals.get(keys)
        if totals is None:
            totals = self._totals[keys] = _Totals()
        totals.add(record)

    def groups(self) -> list[Group]:
        """Every group so far: most expensive first, ties by keys."""
        groups = [totals.group(keys) for keys, totals in self._totals.items()]
        groups.sort(key=lambda g: (-g.cost_micros, g.keys))
        return groups


async def aggregate(
    records: AsyncIterable[UsageRecord], group_by: Sequence[Dimension], tag_key: str = ""
) -> list[Group]:
    """Aggregates a stream of records (e.g. a ledger query) in one pass."""
    aggregator = Aggregator(group_by, tag_key)
    async for record in records:
        aggregator.add(record)
    return aggregator.groups()
