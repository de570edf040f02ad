"""The `start` scenario: omnirelay's cold start, and its resident memory when idle.

Each repeat spawns `omnirelay serve` (pinned to the servers' CPU) and times, from the spawn, its
serving line and the first `Complete` answered to a new client, which connects then; it reads the
server's VmRSS at the serving line, makes the warm-up calls (unary and streaming alternating),
leaves it idle for a moment and reads VmRSS again; then stops it. "Cold" is a new process: the
files it imports are in the page cache after the first repeat (and after the scenarios before), so
the figures are those of a restart on a running machine, not of a first boot.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from typing import Final

import grpc

from bench.memory import megabytes, status_kb
from bench.outcome import Outcome, StartupSample
from bench.procs import RunningServer, stop_all
from bench.scenarios import Launcher
from bench.workload import stream_request, unary_request
from omnirelay_client.v1 import completion_pb2_grpc, stream_pb2_grpc

START_SERVER: Final = "omnirelay-start"
# The serving line is looked for this often: the cold start is timed to within it.
POLL_S: Final = 0.002
CALL_TIMEOUT_S: Final = 30.0
# Idle time before the second memory reading: lets buffers of the last calls be freed.
IDLE_S: Final = 1.0


def _warm_up(channel: grpc.Channel, calls: int) -> None:
    complete = completion_pb2_grpc.CompletionServiceStub(channel).Complete
    stream = stream_pb2_grpc.StreamCompletionServiceStub(channel).StreamComplete
    for i in range(calls):
        if i % 2:
            for _ in stream(stream_request(), timeout=CALL_TIMEOUT_S):
                pass
        else:
            complete(unary_request(), timeout=CALL_TIMEOUT_S)


def _start_once(server: RunningServer, spawned: float, repeat: int, warm_calls: int) -> StartupSample:
    serving_s = time.perf_counter() - spawned
    pid = server.process.pid
    rss_started = status_kb(pid, "VmRSS")
    with grpc.insecure_channel(server.address) as channel:
        completion_pb2_grpc.CompletionServiceStub(channel).Complete(unary_request(), timeout=CALL_TIMEOUT_S)
        first_call_s = time.perf_counter() - spawned
        # The call above is the first of the warm-up's.
        _warm_up(channel, warm_calls - 1)
    time.sleep(IDLE_S)
    return StartupSample(repeat, serving_s, first_call_s, rss_started, status_kb(pid, "VmRSS"))


def run_startup(
    argv: Sequence[str],
    launcher: Launcher,
    repeats: int,
    warm_calls: int,
    settle: Callable[[], None],
    out: Outcome,
) -> None:
    """Start omnirelay `repeats` times, each after `settle` (waiting for a quiet machine)."""
    for repeat in range(repeats):
        settle()
        started: list[RunningServer] = []
        try:
            spawned = time.perf_counter()
            server = launcher.start(
                launcher.omnirelay(START_SERVER, argv), out.failures, started, poll_s=POLL_S
            )
            if server is None:
                continue
            out.started(server)
            sample = _start_once(server, spawned, repeat, warm_calls)
            out.startups.append(sample)
            print(
                f"start #{repeat + 1}: serving after {sample.serving_s:.3f} s, first call answered after "
                f"{sample.first_call_s:.3f} s; RSS {megabytes(sample.rss_started_kb):.1f} MB at start, "
                f"{megabytes(sample.rss_warm_kb):.1f} MB after {warm_calls} calls",
                file=sys.stderr,
                flush=True,
            )
        except grpc.RpcError as exc:
            code = exc.code().name if isinstance(exc, grpc.Call) else "?"
            out.failures.append(f"start #{repeat + 1}: a call failed: {code}: {exc}")
        finally:
            out.stops += stop_all(started)
