"""What the load scenarios produced: measurements, their summaries over repeats, omnirelay / baseline ratios.

`echo` compares omnirelay with a bare grpc.aio server, omnirelay answering from its response cache
(`cache-hit`) with the same server, omnirelay with a second omnirelay server that records no usage
(`unrecorded`), and a third omnirelay server that traces every call (`traced`) with omnirelay;
`sim` compares omnirelay relaying the provider simulator with a bare grpc.aio relay in front of it
and with a client calling the simulator directly; `workers` compares omnirelay serving with one and
with two worker processes. The other scenarios (`streams`, `start`) have figures of their own
(bench.holdload, bench.startup).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from bench.loadcore import LoadResult
from bench.stats import Spread

ECHO_SCENARIO = "echo"
SIM_SCENARIO = "sim"
STREAMS_SCENARIO = "streams"
START_SCENARIO = "start"
WORKERS_SCENARIO = "workers"
SCENARIOS = (ECHO_SCENARIO, SIM_SCENARIO, STREAMS_SCENARIO, START_SCENARIO, WORKERS_SCENARIO)
BASELINE = "echo"
# The simulator's HTTP API called without omnirelay.
DIRECT = "direct"
# bench.relay_server in front of the simulator: gRPC in, httpx out, no gateway logic.
RELAY = "relay"
SUBJECT = "omnirelay"
# The echo scenario's omnirelay server called with deterministic requests (temperature 0), which it
# answers from its response cache: every measured call is a hit.
CACHE_HIT = "cache-hit"
# The echo scenario's second omnirelay server, with usage recording off: omnirelay's unary calls/s
# over its own are what recording costs.
UNRECORDED = "unrecorded"
# The echo scenario's third omnirelay server, with tracing on (every call sampled, spans exported over
# OTLP to bench.otlp_sink): its unary calls/s over omnirelay's (tracing off) are what tracing costs.
TRACED = "traced"
# The echo scenario's second bare echo server, its gRPC socket work on the polling thread as
# omnirelay's is by default (server.grpc_io = "poller"): omnirelay's unary calls/s over its are
# omnirelay's cost with the transport held equal; the target stays against the bare `echo`.
ECHO_POLLER = "echo-poller"
# The workers scenario's targets: omnirelay serving with this many worker processes.
WORKER_COUNTS = (1, 2)


def workers_target(count: int) -> str:
    return f"{count}-worker" if count == 1 else f"{count}-workers"


# omnirelay's baselines in each scenario, the first the one its targets are judged against.
BASELINES: dict[str, tuple[str, ...]] = {ECHO_SCENARIO: (BASELINE,), SIM_SCENARIO: (RELAY, DIRECT)}
# Every target of the scenarios measured with bench.loadgen, in the order they are measured.
TARGETS: dict[str, tuple[str, ...]] = {
    ECHO_SCENARIO: (BASELINE, ECHO_POLLER, SUBJECT, UNRECORDED, TRACED, CACHE_HIT),
    SIM_SCENARIO: (DIRECT, RELAY, SUBJECT),
    WORKERS_SCENARIO: tuple(workers_target(n) for n in WORKER_COUNTS),
}
LOAD_SCENARIOS = tuple(TARGETS)


@dataclass(frozen=True, slots=True)
class RunConfig:
    duration_s: float
    warmup_s: float
    repeats: int
    concurrency: tuple[int, ...]
    channels: int
    modes: tuple[str, ...]
    scenarios: tuple[str, ...]
    # The simulator scenario's concurrency levels (its unary calls wait on an upstream).
    sim_concurrency: tuple[int, ...]
    # The echo scenario's levels at which cache hits are measured too (unary; among `concurrency`).
    cache_concurrency: tuple[int, ...]
    # The workers scenario's concurrency level and client channels (enough connections for the
    # kernel to spread them over the workers' sockets).
    workers_concurrency: int
    workers_channels: int
    # The streams scenario: streams open at once through the local provider and through the
    # simulator, and whether the bare relay is measured through the simulator too.
    streams_local: int
    streams_sim: int
    streams_relay: bool
    # The start scenario: omnirelay's starts, and the calls before the second memory reading.
    start_repeats: int
    warm_calls: int
    # Before each measurement, wait this long at most for other load to stop; measure a disturbed
    # measurement again this many times; spend at most `patience_s` in all on both, so that a busy
    # machine cannot stretch the run without bound.
    quiet_wait_s: float
    retries: int
    patience_s: float
    # CPU sets of the servers and of the load generator; empty when not pinned (a single core).
    server_cpus: tuple[int, ...]
    loadgen_cpus: tuple[int, ...]
    # Every CPU the run may use: the unpinned processes' (workers scenario).
    all_cpus: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Measurement:
    scenario: str
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

    scenario: str
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
    ttft_p50_ms: Spread
    ttft_p99_ms: Spread
    server_cpu: Spread
    server_core_busy: Spread
    loadgen_cpu: Spread
    # The simulator behind omnirelay (sim scenario); -1 when there is none.
    upstream_cpu: Spread
    errors: int
    probe_messages: int
    probe_bytes: int


@dataclass(frozen=True, slots=True)
class Ratio:
    """omnirelay's rate over a baseline's. The range pairs the repeats, which ran back to back."""

    scenario: str
    baseline: str
    mode: str
    concurrency: int
    of_medians: float
    low: float
    high: float
    # The target over the baseline: omnirelay (over echo, the relays, or itself unrecorded), its cache
    # hits, omnirelay traced (over omnirelay), or a worker count.
    subject: str = SUBJECT


def _rate(result: LoadResult) -> float:
    return result.calls_per_s if result.mode == "unary" else result.messages_per_s


def _picked(
    measurements: Sequence[Measurement], scenario: str, target: str, mode: str, concurrency: int
) -> list[Measurement]:
    key = (scenario, target, mode, concurrency)
    return [m for m in measurements if (m.scenario, m.target, m.mode, m.concurrency) == key]


def summarize(
    measurements: Sequence[Measurement], scenario: str, target: str, mode: str, concurrency: int
) -> Summary | None:
    picked = _picked(measurements, scenario, target, mode, concurrency)
    results = [m.result for m in picked if m.result is not None]
    if not results:
        return None
    return Summary(
        scenario=scenario,
        target=target,
        mode=mode,
        concurrency=concurrency,
        repeats=len(results),
        rate=Spread.of([_rate(r) for r in results]),
        calls_per_s=Spread.of([r.calls_per_s for r in results]),
        latency_p50_ms=Spread.of([r.latency_p50_ms for r in results]),
        latency_p99_ms=Spread.of([r.latency_p99_ms for r in results]),
        ttfm_p50_ms=Spread.of([r.ttfm_p50_ms for r in results]),
        ttft_p50_ms=Spread.of([r.ttft_p50_ms for r in results]),
        ttft_p99_ms=Spread.of([r.ttft_p99_ms for r in results]),
        server_cpu=Spread.of([r.server_cpu for r in results]),
        server_core_busy=Spread.of([r.server_core_busy for r in results]),
        loadgen_cpu=Spread.of([r.loadgen_cpu for r in results]),
        upstream_cpu=Spread.of([r.upstream_cpu for r in results]),
        errors=sum(r.errors for r in results),
        probe_messages=results[0].probe_messages,
        probe_bytes=results[0].probe_bytes,
    )


def ratio(
    measurements: Sequence[Measurement],
    scenario: str,
    mode: str,
    concurrency: int,
    baseline_name: str,
    subject_name: str = SUBJECT,
) -> Ratio | None:
    def rates(target: str) -> dict[int, float]:
        picked = _picked(measurements, scenario, target, mode, concurrency)
        return {m.repeat: _rate(m.result) for m in picked if m.result is not None}

    subject, baseline = rates(subject_name), rates(baseline_name)
    if not subject or not baseline:
        return None
    median_subject = Spread.of(list(subject.values())).median
    median_baseline = Spread.of(list(baseline.values())).median
    paired = [subject[r] / baseline[r] for r in subject.keys() & baseline.keys() if baseline[r] > 0]
    return Ratio(
        scenario=scenario,
        baseline=baseline_name,
        mode=mode,
        concurrency=concurrency,
        of_medians=median_subject / median_baseline if median_baseline > 0 else math.nan,
        low=min(paired, default=math.nan),
        high=max(paired, default=math.nan),
        subject=subject_name,
    )


@dataclass(frozen=True, slots=True)
class AddedLatency:
    """omnirelay's latency minus a baseline's (sim scenario: the relay's or the direct call's), of the
    medians over repeats.

    Unary: the whole call. Streaming: the time to the first text, what a user waits for.
    """

    baseline: str
    mode: str
    concurrency: int
    p50_ms: float
    p99_ms: float
    subject_p50_ms: float
    baseline_p50_ms: float


def find_summary(
    summaries: Sequence[Summary], scenario: str, target: str, mode: str, concurrency: int
) -> Summary | None:
    key = (scenario, target, mode, concurrency)
    return next((s for s in summaries if (s.scenario, s.target, s.mode, s.concurrency) == key), None)


def added_latency(
    summaries: Sequence[Summary], mode: str, concurrency: int, baseline_name: str
) -> AddedLatency | None:
    subject = find_summary(summaries, SIM_SCENARIO, SUBJECT, mode, concurrency)
    baseline = find_summary(summaries, SIM_SCENARIO, baseline_name, mode, concurrency)
    if subject is None or baseline is None:
        return None
    if mode == "unary":
        p50 = (subject.latency_p50_ms.median, baseline.latency_p50_ms.median)
        p99 = (subject.latency_p99_ms.median, baseline.latency_p99_ms.median)
    else:
        p50 = (subject.ttft_p50_ms.median, baseline.ttft_p50_ms.median)
        p99 = (subject.ttft_p99_ms.median, baseline.ttft_p99_ms.median)
    return AddedLatency(
        baseline=baseline_name,
        mode=mode,
        concurrency=concurrency,
        p50_ms=p50[0] - p50[1],
        p99_ms=p99[0] - p99[1],
        subject_p50_ms=p50[0],
        baseline_p50_ms=p50[1],
    )
