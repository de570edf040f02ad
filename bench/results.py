"""What a run produced: the measurements, their summaries over repeats, and omnirelay / echo ratios."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from bench.loadgen import LoadResult
from bench.stats import Spread

BASELINE = "echo"
SUBJECT = "omnirelay"


@dataclass(frozen=True, slots=True)
class RunConfig:
    duration_s: float
    warmup_s: float
    repeats: int
    concurrency: tuple[int, ...]
    channels: int
    modes: tuple[str, ...]
    # Before each measurement, wait this long at most for other load to stop; measure a disturbed
    # measurement again this many times.
    quiet_wait_s: float
    retries: int
    # CPU sets of the servers and of the load generator; empty when not pinned (a single core).
    server_cpus: tuple[int, ...]
    loadgen_cpus: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Measurement:
    target: str
    mode: str
    concurrency: int
    repeat: int
    # None when the load generator failed; `failure` then says why.
    result: LoadResult | None
    failure: str = ""


@dataclass(frozen=True, slots=True)
class Summary:
    """One target, mode and concurrency over its repeats."""

    target: str
    mode: str
    concurrency: int
    repeats: int
    # Calls per second (unary) or messages per second (streaming): the figure the ratios compare.
    rate: Spread
    calls_per_s: Spread
    latency_p50_ms: Spread
    latency_p99_ms: Spread
    ttfm_p50_ms: Spread
    server_cpu: Spread
    server_core_busy: Spread
    loadgen_cpu: Spread
    errors: int
    probe_messages: int
    probe_bytes: int


@dataclass(frozen=True, slots=True)
class Ratio:
    """omnirelay's rate over echo's. The range pairs the repeats, which ran back to back."""

    mode: str
    concurrency: int
    of_medians: float
    low: float
    high: float


def _rate(result: LoadResult) -> float:
    return result.calls_per_s if result.mode == "unary" else result.messages_per_s


def summarize(
    measurements: Sequence[Measurement], target: str, mode: str, concurrency: int
) -> Summary | None:
    picked = [m for m in measurements if (m.target, m.mode, m.concurrency) == (target, mode, concurrency)]
    results = [m.result for m in picked if m.result is not None]
    if not results:
        return None
    return Summary(
        target=target,
        mode=mode,
        concurrency=concurrency,
        repeats=len(results),
        rate=Spread.of([_rate(r) for r in results]),
        calls_per_s=Spread.of([r.calls_per_s for r in results]),
        latency_p50_ms=Spread.of([r.latency_p50_ms for r in results]),
        latency_p99_ms=Spread.of([r.latency_p99_ms for r in results]),
        ttfm_p50_ms=Spread.of([r.ttfm_p50_ms for r in results]),
        server_cpu=Spread.of([r.server_cpu for r in results]),
        server_core_busy=Spread.of([r.server_core_busy for r in results]),
        loadgen_cpu=Spread.of([r.loadgen_cpu for r in results]),
        errors=sum(r.errors for r in results),
        probe_messages=results[0].probe_messages,
        probe_bytes=results[0].probe_bytes,
    )


def ratio(measurements: Sequence[Measurement], mode: str, concurrency: int) -> Ratio | None:
    def rates(target: str) -> dict[int, float]:
        return {
            m.repeat: _rate(m.result)
            for m in measurements
            if m.result is not None and (m.target, m.mode, m.concurrency) == (target, mode, concurrency)
        }

    subject, baseline = rates(SUBJECT), rates(BASELINE)
    if not subject or not baseline:
        return None
    median_subject = Spread.of(list(subject.values())).median
    median_baseline = Spread.of(list(baseline.values())).median
    paired = [subject[r] / baseline[r] for r in subject.keys() & baseline.keys() if baseline[r] > 0]
    return Ratio(
        mode=mode,
        concurrency=concurrency,
        of_medians=median_subject / median_baseline if median_baseline > 0 else math.nan,
        low=min(paired, default=math.nan),
        high=max(paired, default=math.nan),
    )
