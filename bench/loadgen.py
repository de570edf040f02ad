"""grpc.aio load generator: a fixed number of workers looping calls over a few channels.

Each worker keeps one call in flight, so the concurrency level is the number of calls in flight.
After a warm-up the generator measures a fixed window: the calls that completed in it with their
latencies (and, streaming, their time to first message and to first text), and the stream messages
delivered in it. It prints one JSON object (`LoadResult`) on stdout, which is how `bench.run` reads
it. With `--protocol http` the same is measured of the simulator's HTTP API (`bench.httpload`).
With `--cache-hit` the unary request asks for temperature 0, which omnirelay answers from its
response cache: the probe fills the cache and must then be answered from it, and every measured
call must be a hit (`route.cache`), or it counts as an error.

Run: python -m bench.loadgen --target 127.0.0.1:PORT --mode unary --concurrency 16
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict

import grpc

from bench import httpload
from bench.cpu import CpuWindow
from bench.loadcore import (
    PROTOCOLS,
    Errors,
    LoadConfig,
    LoadResult,
    Probe,
    Recorder,
    check_tokens,
    drain,
    result,
)
from bench.workload import MODEL, MODES, STREAM_EVENTS, cached_unary_request, stream_request, unary_request
from omnirelay_client.v1 import completion_pb2, completion_pb2_grpc, stream_pb2, stream_pb2_grpc, types_pb2

# Calls the cache-hit probe makes at most before one is answered from the cache: the first fills it
# (the store is written as the answer goes out, so the next call may still just miss it).
CACHE_PROBE_CALLS = 5


def _rpc_error(exc: grpc.aio.AioRpcError) -> str:
    return f"{exc.code().name}: {exc.details()}"


def _cache_outcome(response: completion_pb2.CompleteResponse) -> str:
    return types_pb2.CacheOutcome.Name(response.route.cache)


async def _unary_worker(
    stub: completion_pb2_grpc.CompletionServiceAsyncStub,
    request: completion_pb2.CompleteRequest,
    start_ns: int,
    end_ns: int,
    rec: Recorder,
    errors: Errors,
    require_hit: bool = False,
) -> None:
    """Loops calls; with ``require_hit`` an answer that is not a cache hit is an error, not measured."""
    complete = stub.Complete
    clock = time.perf_counter_ns
    hit = types_pb2.CACHE_OUTCOME_HIT
    while True:
        t0 = clock()
        if t0 >= end_ns:
            return
        try:
            response = await complete(request)
        except grpc.aio.AioRpcError as exc:
            errors.add(_rpc_error(exc))
            continue
        t1 = clock()
        if require_hit and response.route.cache != hit:
            errors.add(f"not a cache hit: route.cache {_cache_outcome(response)}")
            continue
        rec.unary_done(t0, t1, start_ns, end_ns)


async def _stream_worker(
    stub: stream_pb2_grpc.StreamCompletionServiceAsyncStub,
    request: stream_pb2.StreamCompleteRequest,
    start_ns: int,
    end_ns: int,
    expected: int,
    rec: Recorder,
    errors: Errors,
) -> None:
    stream_complete = stub.StreamComplete
    clock = time.perf_counter_ns
    while True:
        t0 = clock()
        if t0 >= end_ns:
            return
        events = stream_complete(request).__aiter__()
        try:
            # The messages up to the first text are read apart, so the per-message loop below
            # carries no branch.
            event = await events.__anext__()
            first = clock()
            received = 1
            while event.WhichOneof("event") != "text_delta":
                event = await events.__anext__()
                received += 1
            token = clock()
            async for _ in events:
                received += 1
        except grpc.aio.AioRpcError as exc:
            errors.add(_rpc_error(exc))
            continue
        except StopAsyncIteration:
            errors.add("stream ended without a text delta")
            continue
        t1 = clock()
        if received != expected:
            errors.add(f"stream of {received} events, expected {expected}")
            continue
        rec.stream_done(t0, first, token, t1, received, start_ns, end_ns)


async def _cache_probe(channel: grpc.aio.Channel, model: str) -> Probe:
    """Calls until one is answered from the cache (the first fills it); that answer's size."""
    stub = completion_pb2_grpc.CompletionServiceStub(channel)
    request = cached_unary_request(model)
    outcomes = []
    for _ in range(CACHE_PROBE_CALLS):
        response = await stub.Complete(request)
        outcomes.append(_cache_outcome(response))
        if response.route.cache == types_pb2.CACHE_OUTCOME_HIT:
            return Probe(1, response.ByteSize(), check_tokens("unary", response.usage.output_tokens))
        await asyncio.sleep(0.05)
    return Probe(1, response.ByteSize(), f"no cache hit in {len(outcomes)} calls: {', '.join(outcomes)}")


async def _probe(channel: grpc.aio.Channel, mode: str, model: str, cache_hit: bool = False) -> Probe:
    """One call outside the measurement: the number of messages and serialized bytes of the answer."""
    if cache_hit:
        return await _cache_probe(channel, model)
    if mode == "unary":
        response = await completion_pb2_grpc.CompletionServiceStub(channel).Complete(unary_request(model))
        return Probe(1, response.ByteSize(), check_tokens(mode, response.usage.output_tokens))
    count = size = deltas = 0
    stub = stream_pb2_grpc.StreamCompletionServiceStub(channel)
    async for event in stub.StreamComplete(stream_request(model)):
        count += 1
        size += event.ByteSize()
        deltas += event.WhichOneof("event") == "text_delta"
    return Probe(count, size, check_tokens(mode, deltas))


async def run_load(config: LoadConfig) -> LoadResult:
    model = config.model or MODEL
    # Distinct channels share one TCP connection unless each keeps its own subchannel pool.
    options = [("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.aio.insecure_channel(config.target, options=options) for _ in range(config.channels)]
    errors = Errors()
    recorders = [Recorder() for _ in range(config.concurrency)]
    try:
        for channel in channels:
            await asyncio.wait_for(channel.channel_ready(), timeout=10.0)
        try:
            probe = await _probe(channels[0], config.mode, model, config.cache_hit)
        except grpc.aio.AioRpcError as exc:
            probe = Probe(0, 0, _rpc_error(exc))
        if probe.problem:
            errors.add(f"probe: {probe.problem}")
        expected = config.stream_events or probe.messages
        # Set-up objects live to the end: moving them out of the collector's sight shortens its passes.
        gc.freeze()
        start_ns = time.perf_counter_ns() + int(config.warmup_s * 1e9)
        end_ns = start_ns + int(config.duration_s * 1e9)
        tasks = []
        for i, rec in enumerate(recorders):
            channel = channels[i % len(channels)]
            if config.cache_hit:
                unary_stub = completion_pb2_grpc.CompletionServiceStub(channel)
                cached = cached_unary_request(model)
                work = _unary_worker(unary_stub, cached, start_ns, end_ns, rec, errors, require_hit=True)
            elif config.mode == "unary":
                unary_stub = completion_pb2_grpc.CompletionServiceStub(channel)
                work = _unary_worker(unary_stub, unary_request(model), start_ns, end_ns, rec, errors)
            else:
                stream_stub = stream_pb2_grpc.StreamCompletionServiceStub(channel)
                request = stream_request(model)
                work = _stream_worker(stream_stub, request, start_ns, end_ns, expected, rec, errors)
            tasks.append(asyncio.create_task(work))
        cpu = await CpuWindow(config.server_pid, config.upstream_pid, config.server_tree).run(
            start_ns, end_ns
        )
        await drain(tasks, errors)
    finally:
        for channel in channels:
            await channel.close()
    return result(config, recorders, errors, cpu, probe)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__)
    parser.add_argument("--target", required=True, help="host:port (grpc) or base URL (http)")
    parser.add_argument("--mode", choices=MODES, required=True)
    parser.add_argument("--protocol", choices=PROTOCOLS, default="grpc")
    parser.add_argument("--model", default="", help=f"model the requests name (grpc; default {MODEL})")
    parser.add_argument(
        "--stream-events",
        type=int,
        default=STREAM_EVENTS,
        help=f"events every stream must have; 0: as many as the probe's (default {STREAM_EVENTS})",
    )
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds measured")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of load before the window")
    parser.add_argument("--channels", type=int, default=4)
    parser.add_argument("--server-pid", type=int, default=0, help="measure this process's CPU use")
    parser.add_argument("--upstream-pid", type=int, default=0, help="and this one's, behind the server")
    parser.add_argument(
        "--server-tree", action="store_true", help="measure the server with its child processes (workers)"
    )
    parser.add_argument(
        "--cache-hit",
        action="store_true",
        help="unary, grpc: ask with temperature 0 and require every answer to come from omnirelay's cache",
    )
    args = parser.parse_args(argv)
    if args.cache_hit and (args.mode != "unary" or args.protocol != "grpc"):
        parser.error("--cache-hit measures unary calls over grpc")
    config = LoadConfig(
        target=args.target,
        mode=args.mode,
        concurrency=args.concurrency,
        duration_s=args.duration,
        warmup_s=args.warmup,
        channels=max(1, min(args.channels, args.concurrency)),
        server_pid=args.server_pid,
        protocol=args.protocol,
        model=args.model,
        stream_events=args.stream_events,
        upstream_pid=args.upstream_pid,
        server_tree=args.server_tree,
        cache_hit=args.cache_hit,
    )
    run = run_load if config.protocol == "grpc" else httpload.run_load
    print(json.dumps(asdict(asyncio.run(run(config)))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
