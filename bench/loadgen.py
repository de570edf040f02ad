"""grpc.aio load generator: a fixed number of workers looping calls over a few channels.

Each worker keeps one call in flight, so the concurrency level is the number of calls in flight.
After a warm-up the generator measures a fixed window: the calls that completed in it with their
latencies (and, streaming, their time to first message), and the stream messages delivered in it.
It prints one JSON object (`LoadResult`) on stdout, which is how `bench.run` reads it.

Run: python -m bench.loadgen --target 127.0.0.1:PORT --mode unary --concurrency 16
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import time
from array import array
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Final

import grpc

from bench.cpu import CpuWindow
from bench.stats import percentile
from bench.workload import MODES, STREAM_EVENTS, stream_request, unary_request
from omnirelay_client.v1 import completion_pb2, completion_pb2_grpc, stream_pb2, stream_pb2_grpc

NS_PER_MS: Final = 1_000_000
# Calls still in flight this long after the window are cancelled and counted as errors.
DRAIN_TIMEOUT_S: Final = 10.0


@dataclass(frozen=True, slots=True)
class LoadConfig:
    target: str
    mode: str
    concurrency: int
    duration_s: float
    warmup_s: float
    channels: int
    # The server's pid, to measure its CPU use over the window; 0 when unknown.
    server_pid: int = 0


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


class _Recorder:
    """One worker's figures. Arrays of int64 keep samples unboxed: no object per call is kept."""

    __slots__ = ("latencies", "messages", "ttfm")

    def __init__(self) -> None:
        self.latencies = array("q")
        self.ttfm = array("q")
        # Fractional: see _stream_worker.
        self.messages = 0.0


class _Errors:
    """Errors of all workers; the first one's text is kept for the report."""

    __slots__ = ("count", "first")

    def __init__(self) -> None:
        self.count = 0
        self.first = ""

    def add(self, detail: str) -> None:
        self.count += 1
        if not self.first:
            self.first = detail


def _rpc_error(exc: grpc.aio.AioRpcError) -> str:
    return f"{exc.code().name}: {exc.details()}"


async def _unary_worker(
    stub: completion_pb2_grpc.CompletionServiceAsyncStub,
    request: completion_pb2.CompleteRequest,
    start_ns: int,
    end_ns: int,
    rec: _Recorder,
    errors: _Errors,
) -> None:
    complete = stub.Complete
    latencies = rec.latencies
    clock = time.perf_counter_ns
    while True:
        t0 = clock()
        if t0 >= end_ns:
            return
        try:
            await complete(request)
        except grpc.aio.AioRpcError as exc:
            errors.add(_rpc_error(exc))
            continue
        t1 = clock()
        # A call counts in the window it completes in: the rate is then completions per second.
        if t1 >= start_ns and t1 < end_ns:
            latencies.append(t1 - t0)


async def _stream_worker(
    stub: stream_pb2_grpc.StreamCompletionServiceAsyncStub,
    request: stream_pb2.StreamCompleteRequest,
    start_ns: int,
    end_ns: int,
    rec: _Recorder,
    errors: _Errors,
) -> None:
    stream_complete = stub.StreamComplete
    latencies = rec.latencies
    ttfm = rec.ttfm
    clock = time.perf_counter_ns
    while True:
        t0 = clock()
        if t0 >= end_ns:
            return
        events = stream_complete(request).__aiter__()
        try:
            # The first message is read apart so the per-message loop below carries no branch.
            await events.__anext__()
            first = clock()
            received = 1
            async for _ in events:
                received += 1
        except grpc.aio.AioRpcError as exc:
            errors.add(_rpc_error(exc))
            continue
        except StopAsyncIteration:
            errors.add("stream ended without a message")
            continue
        t1 = clock()
        if received != STREAM_EVENTS:
            errors.add(f"stream of {received} events, expected {STREAM_EVENTS}")
            continue
        # A stream's messages count for the window in proportion to the part of their delivery
        # (first to last) inside it. Counting whole streams by completion time would be quantized:
        # at high concurrency a stream lasts about as long as a short window, and streams started
        # together end together.
        lo = first if first > start_ns else start_ns
        hi = t1 if t1 < end_ns else end_ns
        if hi > lo:
            rec.messages += received * (hi - lo) / (t1 - first)
        if t1 >= start_ns and t1 < end_ns:
            latencies.append(t1 - t0)
            ttfm.append(first - t0)


async def _probe(channel: grpc.aio.Channel, mode: str) -> tuple[int, int]:
    """One call outside the measurement: the number of messages and serialized bytes of the answer."""
    if mode == "unary":
        response = await completion_pb2_grpc.CompletionServiceStub(channel).Complete(unary_request())
        return 1, response.ByteSize()
    count = size = 0
    async for event in stream_pb2_grpc.StreamCompletionServiceStub(channel).StreamComplete(stream_request()):
        count += 1
        size += event.ByteSize()
    return count, size


async def run_load(config: LoadConfig) -> LoadResult:
    # Distinct channels share one TCP connection unless each keeps its own subchannel pool.
    options = [("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.aio.insecure_channel(config.target, options=options) for _ in range(config.channels)]
    errors = _Errors()
    try:
        for channel in channels:
            await asyncio.wait_for(channel.channel_ready(), timeout=10.0)
        try:
            probe_messages, probe_bytes = await _probe(channels[0], config.mode)
        except grpc.aio.AioRpcError as exc:
            errors.add(f"probe: {_rpc_error(exc)}")
            probe_messages = probe_bytes = 0
        recorders = [_Recorder() for _ in range(config.concurrency)]
        # Set-up objects live to the end: moving them out of the collector's sight shortens its passes.
        gc.freeze()
        start_ns = time.perf_counter_ns() + int(config.warmup_s * 1e9)
        end_ns = start_ns + int(config.duration_s * 1e9)
        tasks = []
        for i, rec in enumerate(recorders):
            channel = channels[i % len(channels)]
            if config.mode == "unary":
                unary_stub = completion_pb2_grpc.CompletionServiceStub(channel)
                work = _unary_worker(unary_stub, unary_request(), start_ns, end_ns, rec, errors)
            else:
                stream_stub = stream_pb2_grpc.StreamCompletionServiceStub(channel)
                work = _stream_worker(stream_stub, stream_request(), start_ns, end_ns, rec, errors)
            tasks.append(asyncio.create_task(work))
        cpu = await CpuWindow(config.server_pid).run(start_ns, end_ns)
        _, late = await asyncio.wait(tasks, timeout=DRAIN_TIMEOUT_S)
        for task in late:
            task.cancel()
            errors.add(f"a call was still in flight {DRAIN_TIMEOUT_S:.0f} s after the window")
        for task in tasks:
            if not task.cancelled() and (failure := task.exception()) is not None:
                errors.add(f"worker failed: {failure!r}")
    finally:
        for channel in channels:
            await channel.close()
    latencies = sorted(x for rec in recorders for x in rec.latencies)
    ttfm = sorted(x for rec in recorders for x in rec.ttfm)
    calls = len(latencies)
    messages = sum(rec.messages for rec in recorders) if config.mode == "stream" else float(calls)
    # Streams: calls/s is messages/s in whole streams, as smooth as the message count; the latency
    # percentiles stay those of the streams that completed in the window.
    calls_per_s = (
        messages / STREAM_EVENTS / config.duration_s if config.mode == "stream" else calls / config.duration_s
    )
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
        server_cpu=cpu.server,
        server_core_busy=cpu.server_core,
        loadgen_cpu=cpu.loadgen,
        probe_messages=probe_messages,
        probe_bytes=probe_bytes,
        first_error=errors.first,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__)
    parser.add_argument("--target", required=True, help="host:port")
    parser.add_argument("--mode", choices=MODES, required=True)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds measured")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of load before the window")
    parser.add_argument("--channels", type=int, default=4)
    parser.add_argument("--server-pid", type=int, default=0, help="measure this process's CPU use")
    args = parser.parse_args(argv)
    config = LoadConfig(
        target=args.target,
        mode=args.mode,
        concurrency=args.concurrency,
        duration_s=args.duration,
        warmup_s=args.warmup,
        channels=max(1, min(args.channels, args.concurrency)),
        server_pid=args.server_pid,
    )
    result = asyncio.run(run_load(config))
    print(json.dumps(asdict(result)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
