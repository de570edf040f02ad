"""Many streams open at once: the load generator of the `streams` scenario.

`--streams N` workers over `--channels K` channels each open one StreamComplete and read it to its
end, against a slow upstream, so that all N are open at once (a stream is open from its first event
to its last). At most `--opening` streams are being opened at any moment (from the call to its first
event): a burst of thousands of new calls overflows grpc's queue of calls the server has not yet
taken up, which cancels the excess (grpc.server.max_pending_requests*, left at their defaults by
omnirelay), and clients that open thousands of streams do not open them in the same millisecond.

Figures cover the whole run, from the first call to the end of the last stream: how many streams
were open at once and for how long all were, the text deltas relayed and the server's CPU time per
delta (opening and ending the streams included), its resident memory sampled (VmRSS) from before
the first call to the end and its peak (VmHWM). Prints one JSON object (`HoldResult`).

Every stream must bring exactly `--tokens` text deltas and end with `done`; anything else, an RPC
error, or a stream still open at `--timeout` counts as an error.

Run: python -m bench.holdload --target 127.0.0.1:PORT --streams 1000 --server-pid PID
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Final

import grpc

from bench.cpu import CpuWindow
from bench.limits import raise_open_files
from bench.loadcore import Errors
from bench.memory import status_kb
from bench.workload import HOLD_MAX_TOKENS, MODEL, complete_request
from omnirelay_client.v1 import stream_pb2, stream_pb2_grpc

# HTTP/2 servers commonly allow 100 concurrent streams per connection; 10,000 streams over 128
# connections stay under that, whatever the server advertises.
CHANNELS: Final = 128
OPENING: Final = 100
RSS_SAMPLE_S: Final = 0.1
CONNECT_TIMEOUT_S: Final = 30.0


@dataclass(frozen=True, slots=True)
class HoldConfig:
    target: str
    model: str
    streams: int
    channels: int
    opening: int
    tokens: int
    # Streams still open this long after the first call are cancelled and counted as errors.
    timeout_s: float
    server_pid: int
    upstream_pid: int = 0


@dataclass(frozen=True, slots=True)
class HoldResult:
    streams: int
    channels: int
    # Most streams open at once; from the first call until all were open (NaN: never all at
    # once), and for how long all stayed open.
    peak_open: int
    ramp_s: float
    all_open_s: float
    # First call to the last stream's end.
    run_s: float
    # Streams that ended as they must, and errors.
    completed: int
    errors: int
    first_error: str
    deltas: int
    # The server's (and the process behind it's) CPU over the run, as shares of one core; -1 unknown.
    server_cpu: float
    upstream_cpu: float
    loadgen_cpu: float
    # The server's resident memory in kB: before the first call, the highest sample, its peak.
    rss_before_kb: int
    rss_peak_kb: int
    hwm_kb: int


def cpu_per_delta_us(result: HoldResult) -> float:
    """The server's CPU time per text delta relayed, opening and ending the streams included."""
    if result.server_cpu < 0 or result.deltas <= 0:
        return math.nan
    return result.server_cpu * result.run_s / result.deltas * 1e6


class _State:
    """What the workers share: the streams being opened and open, and the text deltas so far."""

    __slots__ = ("all_open", "all_open_at", "all_open_s", "deltas", "open", "opening", "peak", "streams")

    def __init__(self, streams: int, opening: int) -> None:
        self.streams = streams
        self.opening = asyncio.Semaphore(opening)
        self.open = 0
        self.peak = 0
        self.deltas = 0
        self.all_open = asyncio.Event()
        self.all_open_at = 0.0
        self.all_open_s = 0.0

    def opened(self) -> None:
        self.open += 1
        if self.open > self.peak:
            self.peak = self.open
            if self.open == self.streams:
                self.all_open_at = time.perf_counter()
                self.all_open.set()

    def closed(self) -> None:
        if self.open == self.streams:
            self.all_open_s = time.perf_counter() - self.all_open_at
        self.open -= 1


async def _stream(
    stub: stream_pb2_grpc.StreamCompletionServiceAsyncStub,
    request: stream_pb2.StreamCompleteRequest,
    tokens: int,
    state: _State,
    errors: Errors,
) -> bool:
    """Open one stream and read it to its end; whether it was as it must be."""
    opening = True
    deltas = 0
    kind = ""
    await state.opening.acquire()
    try:
        async for event in stub.StreamComplete(request):
            if opening:
                opening = False
                state.opening.release()
                state.opened()
            kind = event.WhichOneof("event") or ""
            if kind == "text_delta":
                deltas += 1
                state.deltas += 1
    except grpc.aio.AioRpcError as exc:
        errors.add(f"{exc.code().name}: {exc.details()}")
        return False
    finally:
        if opening:
            state.opening.release()
        else:
            state.closed()
    if deltas != tokens or kind != "done":
        errors.add(f"stream of {deltas} text deltas ending with {kind!r}, expected {tokens} then done")
        return False
    return True


async def _sample_rss(pid: int, peak: list[int], stop: asyncio.Event) -> None:
    """Keep the highest VmRSS of `pid` in peak[0] until `stop` is set."""
    while not stop.is_set():
        peak[0] = max(peak[0], status_kb(pid, "VmRSS"))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), RSS_SAMPLE_S)


async def run_hold(config: HoldConfig) -> HoldResult:
    raise_open_files()
    # Distinct channels share one TCP connection unless each keeps its own subchannel pool.
    options = [("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.aio.insecure_channel(config.target, options=options) for _ in range(config.channels)]
    errors = Errors()
    state = _State(config.streams, config.opening)
    stop_sampling = asyncio.Event()
    peak = [-1]
    try:
        await asyncio.wait_for(
            asyncio.gather(*(channel.channel_ready() for channel in channels)), CONNECT_TIMEOUT_S
        )
        # After the connections: what the server holds for the streams, not for the clients.
        rss_before = status_kb(config.server_pid, "VmRSS")
        sampler = asyncio.create_task(_sample_rss(config.server_pid, peak, stop_sampling))
        request = stream_pb2.StreamCompleteRequest(request=complete_request(config.tokens, config.model))
        stubs = [stream_pb2_grpc.StreamCompletionServiceStub(channel) for channel in channels]
        # Set-up objects live to the end: moving them out of the collector's sight shortens its passes.
        gc.freeze()
        cpu = CpuWindow(config.server_pid, config.upstream_pid)
        cpu.begin()
        t0 = time.perf_counter()
        tasks = [
            asyncio.create_task(_stream(stubs[i % len(stubs)], request, config.tokens, state, errors))
            for i in range(config.streams)
        ]
        _, late = await asyncio.wait(tasks, timeout=config.timeout_s)
        run_s = time.perf_counter() - t0
        use = cpu.end()
        for task in late:
            task.cancel()
            errors.add(f"a stream was still open {config.timeout_s:g} s after the first call")
        if late:
            # Cancelling only asks: give the tasks a moment to unwind.
            await asyncio.wait(late, timeout=5.0)
        stop_sampling.set()
        await sampler
    finally:
        stop_sampling.set()
        for channel in channels:
            await channel.close()
    completed = sum(1 for task in tasks if task.done() and not task.cancelled() and task.result())
    return HoldResult(
        streams=config.streams,
        channels=config.channels,
        peak_open=state.peak,
        ramp_s=state.all_open_at - t0 if state.all_open.is_set() else math.nan,
        all_open_s=state.all_open_s,
        run_s=run_s,
        completed=completed,
        errors=errors.count,
        first_error=errors.first,
        deltas=state.deltas,
        server_cpu=use.server,
        upstream_cpu=use.upstream,
        loadgen_cpu=use.loadgen,
        rss_before_kb=rss_before,
        rss_peak_kb=peak[0],
        hwm_kb=status_kb(config.server_pid, "VmHWM"),
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.holdload", description=__doc__)
    parser.add_argument("--target", required=True, help="host:port")
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--streams", type=int, default=10_000, help="streams opened (default 10000)")
    parser.add_argument(
        "--channels", type=int, default=CHANNELS, help=f"client channels (default {CHANNELS})"
    )
    parser.add_argument(
        "--opening", type=int, default=OPENING, help=f"streams being opened at once (default {OPENING})"
    )
    parser.add_argument("--tokens", type=int, default=HOLD_MAX_TOKENS, help="max_tokens of every stream")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds for all streams to end")
    parser.add_argument("--server-pid", type=int, required=True, help="the server whose memory and CPU count")
    parser.add_argument("--upstream-pid", type=int, default=0, help="a process behind it whose CPU counts")
    args = parser.parse_args(argv)
    if args.streams < 1 or args.channels < 1 or args.opening < 1 or args.timeout <= 0:
        parser.error("--streams, --channels and --opening must be >= 1, --timeout > 0")
    config = HoldConfig(
        target=args.target,
        model=args.model,
        streams=args.streams,
        channels=min(args.channels, args.streams),
        opening=args.opening,
        tokens=args.tokens,
        timeout_s=args.timeout,
        server_pid=args.server_pid,
        upstream_pid=args.upstream_pid,
    )
    print(json.dumps(asdict(asyncio.run(run_hold(config)))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
