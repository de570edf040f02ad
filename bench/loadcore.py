"""What the load generators share: the configuration, the per-worker records and the result.

`bench.loadgen` drives gRPC targets (echo, omnirelay) and `bench.httpload` the simulator's HTTP
API directly; both count calls, latencies and stream messages the same way, here, so that their
figures compare.
"""

from __future__ import annotations

import asyncio
import math
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from bench.cpu import CpuUse
from bench.stats import percentile
from bench.workload import STREAM_EVENTS, STREAM_MAX_TOKENS, UNARY_MAX_TOKENS

NS_PER_MS: Final = 1_000_000
# Calls still in flight this long after the window are cancelled and counted as errors.
DRAIN_TIMEOUT_S: Final = 10.0
PROTOCOLS: Final = ("grpc", "http")


@dataclass(frozen=True, slots=True)
class LoadConfig:
    # host:port for gRPC; a base URL (http://host:port/v1) for HTTP.
    target: str
    mode: str
    concurrency: int
    duration_s: float
    warmup_s: float
    channels: int
    # The server's pid, to measure its CPU use over the window; 0 when unknown.
    server_pid: int = 0
    protocol: str = "grpc"
    # The model the requests name; empty for the workload's default (bench.workload.MODEL).
    model: str = ""
    # Events every stream must have; 0: as many as the probe's stream had (a relay's framing is
    # not known in advance, but it must not change from one stream to the next).
    stream_events: int = STREAM_EVENTS
    # A process behind the server on the same core (the simulator behind omnirelay); 0 when none.
    upstream_pid: int = 0
    # The server is a parent of workers: its CPU is that of the process and its descendants.
    server_tree: bool = False
    # Unary over gRPC: deterministic requests (temperature 0), which omnirelay answers from its
    # response cache; a call not answered from it (route.cache other than HIT) is an error.
    cache_hit: bool = False


@dataclass(frozen=True, slots=True)
class LoadResult:
    """One measurement. Rates and percentiles cover the window only; errors cover the whole run."""

    mode: str
    concurrency: int
    window_s: float
    # Calls completed in the window: the latency samples.
    calls: int
    errors: int
    messages: int
    calls_per_s: float
    messages_per_s: float
    latency_p50_ms: float
    latency_p99_ms: float
    ttfm_p50_ms: float
    ttfm_p99_ms: float
    # Shares of one core over the window (see bench.cpu); -1 when not measured.
    server_cpu: float
    server_core_busy: float
    loadgen_cpu: float
    # One call made before the load, to show that both targets send answers of the same size.
    probe_messages: int
    probe_bytes: int
    first_error: str
    # Time to the first text (a relay may send a message of its own before the upstream answers).
    ttft_p50_ms: float = math.nan
    ttft_p99_ms: float = math.nan
    upstream_cpu: float = -1.0


@dataclass(frozen=True, slots=True)
class Probe:
    """The answer to one call made before the load: its size, and what is wrong with it if anything."""

    messages: int
    size: int
    problem: str = ""


def check_tokens(mode: str, tokens: int) -> str:
    """What is wrong with a probe's token count (usage for unary, text deltas for a stream)."""
    expected = UNARY_MAX_TOKENS if mode == "unary" else STREAM_MAX_TOKENS
    what = "output tokens" if mode == "unary" else "text deltas"
    return "" if tokens == expected else f"{tokens} {what}, expected {expected}"


class Recorder:
    """One worker's figures. Arrays of int64 keep samples unboxed: no object per call is kept."""

    __slots__ = ("latencies", "messages", "ttfm", "ttft")

    def __init__(self) -> None:
        self.latencies = array("q")
        self.ttfm = array("q")
        self.ttft = array("q")
        # Fractional: see stream_done.
        self.messages = 0.0

    def unary_done(self, t0: int, t1: int, start_ns: int, end_ns: int) -> None:
        # A call counts in the window it completes in: the rate is then completions per second.
        if t1 >= start_ns and t1 < end_ns:
            self.latencies.append(t1 - t0)

    def stream_done(
        self, t0: int, first: int, token: int, t1: int, received: int, start_ns: int, end_ns: int
    ) -> None:
        # A stream's messages count for the window in proportion to the part of their delivery
        # (first to last) inside it. Counting whole streams by completion time would be quantized:
        # at high concurrency a stream lasts about as long as a short window, and streams started
        # together end together.
        lo = first if first > start_ns else start_ns
        hi = t1 if t1 < end_ns else end_ns
        if hi > lo:
            self.messages += received * (hi - lo) / (t1 - first)
        if t1 >= start_ns and t1 < end_ns:
            self.latencies.append(t1 - t0)
            self.ttfm.append(first - t0)
            self.ttft.append(token - t0)


class Errors:
    """Errors of all workers; the first one's text is kept for the report."""

    __slots__ = ("count", "first")

    def __init__(self) -> None:
        self.count = 0
        self.first = ""

    def add(self, detail: str) -> None:
        self.count += 1
        if not self.first:
            self.first = detail


def result(
    config: LoadConfig, recorders: Sequence[Recorder], errors: Errors, cpu: CpuUse, probe: Probe
) -> LoadResult:
    latencies = sorted(x for rec in recorders for x in rec.latencies)
    ttfm = sorted(x for rec in recorders for x in rec.ttfm)
    ttft = sorted(x for rec in recorders for x in rec.ttft)
    calls = len(latencies)
    stream = config.mode == "stream"
    messages = sum(rec.messages for rec in recorders) if stream else float(calls)
    # Streams: calls/s is messages/s in whole streams, as smooth as the message count; the latency
    # percentiles stay those of the streams that completed in the window.
    per_stream = probe.messages or STREAM_EVENTS
    calls_per_s = messages / per_stream / config.duration_s if stream else calls / config.duration_s
    return LoadResult(
        mode=config.mode,
        concurrency=config.concurrency,
        window_s=config.duration_s,
        calls=calls,
        errors=errors.count,
        messages=round(messages),
        calls_per_s=calls_per_s,
        messages_per_s=messages / config.duration_s,
        latency_p50_ms=percentile(latencies, 50) / NS_PER_MS,
        latency_p99_ms=percentile(latencies, 99) / NS_PER_MS,
        ttfm_p50_ms=percentile(ttfm, 50) / NS_PER_MS,
        ttfm_p99_ms=percentile(ttfm, 99) / NS_PER_MS,
        ttft_p50_ms=percentile(ttft, 50) / NS_PER_MS if stream else math.nan,
        ttft_p99_ms=percentile(ttft, 99) / NS_PER_MS if stream else math.nan,
        server_cpu=cpu.server,
        server_core_busy=cpu.server_core,
        loadgen_cpu=cpu.loadgen,
        upstream_cpu=cpu.upstream,
        probe_messages=probe.messages,
        probe_bytes=probe.size,
        first_error=errors.first,
    )


async def drain(tasks: Sequence[asyncio.Task[None]], errors: Errors) -> None:
    """Wait for the workers' last calls; cancel those still running and count them as errors."""
    _, late = await asyncio.wait(tasks, timeout=DRAIN_TIMEOUT_S)
    for task in late:
        task.cancel()
        errors.add(f"a call was still in flight {DRAIN_TIMEOUT_S:.0f} s after the window")
    if late:
        # Cancelling only asks: give the tasks a moment to unwind before reading their outcome.
        await asyncio.wait(late, timeout=1.0)
    for task in tasks:
        if task.done() and not task.cancelled() and (failure := task.exception()) is not None:
            errors.add(f"worker failed: {failure!r}")
