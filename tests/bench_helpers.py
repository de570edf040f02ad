"""What the bench's unit tests build again and again: a default run configuration, a measurement."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from unittest import mock

from bench import run
from bench.loadcore import LoadResult
from bench.machine import MachineFacts
from bench.outcome import Outcome
from bench.procs import RunningServer
from bench.quiet import Patience
from bench.report import Report
from bench.results import ECHO_SCENARIO, SCENARIOS, Measurement, Ratio, RunConfig, Summary
from bench.scenarios import Launcher
from bench.targets import Goal
from bench.tracing import TracingCost


def config(**changes: object) -> RunConfig:
    base = RunConfig(
        duration_s=2.0,
        warmup_s=0.5,
        repeats=3,
        concurrency=(1, 16, 64, 256),
        channels=4,
        modes=("unary", "stream"),
        scenarios=SCENARIOS,
        sim_concurrency=(1, 64),
        cache_concurrency=(64,),
        workers_concurrency=64,
        workers_channels=16,
        streams_local=10_000,
        streams_sim=1_000,
        streams_relay=True,
        start_repeats=5,
        warm_calls=100,
        quiet_wait_s=20.0,
        retries=1,
        patience_s=90.0,
        server_cpus=(0,),
        loadgen_cpus=(1,),
        all_cpus=(0, 1),
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def measured(target: str, repeat: int, calls_per_s: float) -> Measurement:
    calls = round(calls_per_s * 2)
    result = LoadResult(
        mode="unary",
        concurrency=64,
        window_s=2.0,
        calls=calls,
        errors=0,
        messages=calls,
        calls_per_s=calls_per_s,
        messages_per_s=calls_per_s,
        latency_p50_ms=60.0,
        latency_p99_ms=80.0,
        ttfm_p50_ms=0.0,
        ttfm_p99_ms=0.0,
        server_cpu=1.0,
        server_core_busy=1.0,
        loadgen_cpu=0.4,
        probe_messages=1,
        probe_bytes=292,
        first_error="",
    )
    return Measurement(ECHO_SCENARIO, target, "unary", 64, repeat, result)


def report_of(
    run: RunConfig,
    *,
    summaries: Sequence[Summary] = (),
    ratios: Sequence[Ratio] = (),
    goals: Sequence[Goal] = (),
    tracing: TracingCost | None = None,
) -> Report:
    """A run's report holding only the given figures (what the report tests render)."""
    return Report(
        started_utc="2026-01-01 00:00:00 UTC",
        config=run,
        machine=MachineFacts("cpu", 2, "kernel", "3.11", "1", "1", "0.1", "abc"),
        servers={},
        stops=[],
        measurements=[],
        summaries=list(summaries),
        ratios=list(ratios),
        added_latencies=[],
        holds=[],
        startups=[],
        skipped={},
        goals=list(goals),
        failures=[],
        warnings=[],
        wall_s=1.0,
        tracing=tracing,
    )


# Stands in for bench.scenarios.start_targets: given the list the runner collects started servers
# in and the levels it passes on (cache, unrecorded, traced), "starts" servers and returns targets.
Starts = Callable[[list[RunningServer], tuple[object, ...]], list[Any]]


def run_load_scenario(
    tmp_path: Path,
    data_dir: Path,
    run_config: RunConfig,
    argv: Mapping[str, Sequence[str]],
    starts: Starts,
    stop_all: Callable[[list[RunningServer]], list[object]] = lambda servers: [],
    measure_settled: Callable[..., Measurement] | None = None,
) -> Outcome:
    """bench/run.py's runner over ``run_config``'s echo scenario with no real process: ``starts``
    stands in for start_targets, ``stop_all`` for stopping them, and ``measure_settled`` (when
    given) for a measurement."""

    def start_targets(
        scenario: str,
        argv: object,
        launcher: Launcher,
        failures: list[str],
        started: list[RunningServer],
        *levels: object,
    ) -> list[Any]:
        return starts(started, levels)

    out = Outcome()
    runner = run._Runner(run_config, Patience(0.0), out)
    launcher = Launcher(tmp_path, "stamp", None, 60.0, tmp_path, data_dir)
    with (
        mock.patch.object(run, "start_targets", start_targets),
        mock.patch.object(run, "stop_all", stop_all),
        mock.patch.object(run._Runner, "measure_settled", measure_settled or run._Runner.measure_settled),
    ):
        runner.run_load_scenario(ECHO_SCENARIO, argv, launcher)
    return out
