"""`make bench`: omnirelay against baselines, in the same run on the same machine.

Five scenarios, one after the other, each starting its servers and stopping them again.
`echo`: omnirelay (local provider) against a bare grpc.aio echo server, omnirelay answering
deterministic unary calls from its response cache against the same echo server (at c=64), and
omnirelay against a second omnirelay server with usage recording off (unary, at c=64), and a third
with tracing on (every call, exported to an OTLP sink) against omnirelay (unary, at c=64).
`sim`: omnirelay relaying the provider simulator (`omnirelay sim`) through its OpenAI adapter,
against a bare grpc.aio relay in front of the same simulator and against the load generator calling
the simulator directly over HTTP.
`streams`: 10,000 streams open at once through omnirelay's local provider, and 1,000 through the
simulator: memory, CPU per relayed text delta, errors.
`start`: omnirelay's cold start (spawn to first answered call) and its idle memory.
`workers`: omnirelay's unary throughput with one and with two worker processes.
Servers run pinned to one CPU and the load generator to another (except in `workers`).
Measurements of a scenario's targets alternate (in ABBA order), so a drift of the machine shows in
all rather than in one. Ends with the targets omnirelay is held to, met or not. Writes
bench-<timestamp>.json and .md to --out and prints the Markdown.
Exits non-zero when a server did not start or died, or when any call failed; not for a missed target.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Final, TypeVar

from bench import report
from bench.limits import raise_open_files
from bench.loadcore import DRAIN_TIMEOUT_S, LoadResult
from bench.machine import collect
from bench.otlp_sink import SinkCount, read_count
from bench.outcome import Outcome
from bench.procs import LoadToolError, RunningServer, run_load_tool, stop_all
from bench.quiet import Patience
from bench.results import (
    BASELINE,
    BASELINES,
    CACHE_HIT,
    ECHO_POLLER,
    ECHO_SCENARIO,
    LOAD_SCENARIOS,
    SCENARIOS,
    SIM_SCENARIO,
    START_SCENARIO,
    STREAMS_SCENARIO,
    SUBJECT,
    TARGETS,
    TRACED,
    UNRECORDED,
    WORKER_COUNTS,
    WORKERS_SCENARIO,
    Measurement,
    RunConfig,
    added_latency,
    find_summary,
    ratio,
    summarize,
    workers_target,
)
from bench.scenarios import (
    ECHO_SERVER,
    OMNIRELAY_SERVER,
    OMNIRELAY_TRACED_SERVER,
    OTLP_SINK_SERVER,
    RELAY_SERVER,
    SIM_SERVER,
    Launcher,
    Target,
    reset,
    sink_count_path,
    start_targets,
)
from bench.startup import run_startup
from bench.streams import StreamsConfig, run_streams
from bench.targets import RATIO_C, evaluate, unrecorded_levels
from bench.tracing import NO_SPANS, disabled_path_ns, traced_levels, tracing_cost
from bench.workload import MODES

REPO: Final = Path(__file__).resolve().parent.parent
# The omnirelay command next to this interpreter: the one installed in the same virtualenv.
OMNIRELAY: Final = str(Path(sys.executable).parent / "omnirelay")
OMNIRELAY_ARGV: Final = (OMNIRELAY, "serve", "--host", "127.0.0.1", "--port", "0", "--profile", "development")
SIM_ARGV: Final = (OMNIRELAY, "sim", "--host", "127.0.0.1", "--port", "0")
# Other processes' share of the server's core above which a measurement is flagged as disturbed.
INTERFERENCE: Final = 0.10
# Busy share of the whole machine under which it counts as quiet (idle servers use next to nothing).
QUIET_BELOW: Final = 0.10
ECHO_ARGV: Final = (sys.executable, "-m", "bench.echo_server", "--host", "127.0.0.1", "--port", "0")
RELAY_ARGV: Final = (sys.executable, "-m", "bench.relay_server", "--host", "127.0.0.1", "--port", "0")
SINK_ARGV: Final = (sys.executable, "-m", "bench.otlp_sink", "--host", "127.0.0.1", "--port", "0")
# Streams still open this long after the first call count as errors (a run takes ~40 s).
STREAMS_TIMEOUT_S: Final = 180.0


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("concurrency levels are integers >= 1")
    return values


def _subset(choices: Sequence[str], what: str) -> Callable[[str], tuple[str, ...]]:
    def parse(text: str) -> tuple[str, ...]:
        values = tuple(part.strip() for part in text.split(",") if part.strip())
        if not values or not set(values) <= set(choices):
            raise argparse.ArgumentTypeError(f"{what} are a comma-separated subset of {','.join(choices)}")
        # In the canonical order, once each: the report's sections do not depend on the spelling.
        return tuple(choice for choice in choices if choice in values)

    return parse


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per measurement (default 2)")
    parser.add_argument("--warmup", type=float, default=0.5, help="seconds of load before each measurement")
    parser.add_argument(
        "--concurrency",
        type=_int_list,
        default=(1, 16, 64, 256),
        help="calls in flight in the echo scenario (default 1,16,64,256)",
    )
    parser.add_argument(
        "--cache-concurrency",
        type=_int_list,
        default=(64,),
        help="levels among --concurrency at which the echo scenario also measures omnirelay's "
        "cache hits, unary (default 64)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="measurements per figure (default 3)")
    parser.add_argument("--channels", type=int, default=4, help="client channels (default 4)")
    parser.add_argument(
        "--modes", type=_subset(MODES, "modes"), default=MODES, help="unary,stream (default both)"
    )
    parser.add_argument(
        "--scenarios",
        type=_subset(SCENARIOS, "scenarios"),
        default=SCENARIOS,
        help=f"a subset of {','.join(SCENARIOS)} (default all)",
    )
    parser.add_argument(
        "--sim-concurrency",
        type=_int_list,
        default=(1, 64),
        help="calls in flight in the sim scenario (default 1,64)",
    )
    parser.add_argument(
        "--workers-concurrency",
        type=int,
        default=64,
        help="calls in flight in the workers scenario (default 64)",
    )
    parser.add_argument(
        "--workers-channels",
        type=int,
        default=16,
        help="client channels in the workers scenario: connections for the kernel to spread (default 16)",
    )
    parser.add_argument(
        "--streams", type=int, default=10_000, help="streams open at once through the local provider (10000)"
    )
    parser.add_argument(
        "--sim-streams", type=int, default=1_000, help="streams open at once through the simulator (1000)"
    )
    parser.add_argument(
        "--no-streams-relay",
        dest="streams_relay",
        action="store_false",
        help="do not measure the bare relay's streams through the simulator",
    )
    parser.add_argument("--start-repeats", type=int, default=5, help="cold starts measured (default 5)")
    parser.add_argument(
        "--warm-calls", type=int, default=100, help="calls before the idle memory reading (default 100)"
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results", help="report directory")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 1 s, 1 repeat, concurrency 64 (sim: 1), 0.5 s warm-up, 1,000 and 100 streams, "
        "2 starts",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=20.0,
        help="at most this many seconds of waiting for a quiet machine before each measurement",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=1,
        help="times to measure again when other load disturbed a measurement",
    )
    parser.add_argument(
        "--patience",
        type=float,
        default=90.0,
        help="seconds of waiting for a quiet machine and of measuring again, in all (default 90)",
    )
    parser.add_argument("--start-timeout", type=float, default=60.0, help="seconds for a server to serve")
    # Testing hook: stands another command in for omnirelay (e.g. a second echo server).
    parser.add_argument("--omnirelay-cmd", type=shlex.split, default=None, help=argparse.SUPPRESS)
    return parser


_T = TypeVar("_T")


def abba(items: Sequence[_T], repeat: int) -> list[_T]:
    """The order ``items`` are measured in at ``repeat``: as given, then reversed, and so on, so
    whatever favours the first (or last) place cancels out (measured in one order every round, four
    identical servers came out 2-4% slower in the later places)."""
    return list(items) if repeat % 2 == 0 else list(reversed(items))


def cpu_sets() -> tuple[frozenset[int], frozenset[int]] | None:
    """One CPU for the servers and another for the load generator, when there are two."""
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2:
        return None
    return frozenset(available[:1]), frozenset(available[1:2])


def _modes(config: RunConfig, scenario: str) -> tuple[str, ...]:
    # Workers: the throughput of unary calls, which scales with processes, is the question.
    return ("unary",) if scenario == WORKERS_SCENARIO else config.modes


def _levels(config: RunConfig, scenario: str) -> tuple[int, ...]:
    if scenario == SIM_SCENARIO:
        return config.sim_concurrency
    if scenario == WORKERS_SCENARIO:
        return (config.workers_concurrency,)
    return config.concurrency


class _Runner:
    """Measures the load scenarios' targets: settings, the quiet-machine budget, and the outcome."""

    def __init__(self, config: RunConfig, patience: Patience, out: Outcome) -> None:
        self.config = config
        self.patience = patience
        self.out = out

    def settle(self) -> None:
        """Wait for a quiet machine, within the run's patience."""
        busy = self.patience.wait_for_quiet(QUIET_BELOW, self.config.quiet_wait_s)
        if busy >= QUIET_BELOW:
            print(f"the machine is still {busy:.0%} busy; measuring anyway", file=sys.stderr)

    def measure(self, scenario: str, target: Target, mode: str, concurrency: int, repeat: int) -> Measurement:
        config = self.config
        channels = config.workers_channels if scenario == WORKERS_SCENARIO else config.channels
        argv = [
            sys.executable,
            *("-m", "bench.loadgen", "--target", target.address, "--mode", mode),
            *("--protocol", target.protocol, "--stream-events", str(target.stream_events)),
            *("--concurrency", str(concurrency), "--duration", str(config.duration_s)),
            *("--warmup", str(config.warmup_s), "--channels", str(channels)),
            *("--server-pid", str(target.server.process.pid)),
        ]
        if mode in target.models:
            argv += ["--model", target.models[mode]]
        if target.upstream:
            argv += ["--upstream-pid", str(target.upstream.process.pid)]
        if target.spread:
            argv += ["--server-tree"]
        if target.cache_hit:
            argv += ["--cache-hit"]
        # With workers spread over both cores, the load generator takes its chance like them (on
        # every CPU: it would otherwise inherit the runner's one).
        cpus = config.all_cpus if target.spread else config.loadgen_cpus
        loadgen_cpus = frozenset(cpus) if cpus else None
        timeout = config.warmup_s + config.duration_s + DRAIN_TIMEOUT_S + 60.0

        def failed(why: str) -> Measurement:
            return Measurement(scenario, target.name, mode, concurrency, repeat, None, why)

        if problem := reset(target):
            return failed(problem)
        try:
            result = LoadResult(**run_load_tool(argv, REPO, loadgen_cpus, timeout))
        except LoadToolError as exc:
            return failed(str(exc))
        return Measurement(scenario, target.name, mode, concurrency, repeat, result)

    def measure_settled(
        self, scenario: str, target: Target, mode: str, concurrency: int, repeat: int
    ) -> Measurement:
        """Measure once the machine is quiet; again when other load disturbed the server's core."""
        for attempt in range(1 + self.config.retries):
            self.settle()
            started = time.monotonic()
            m = self.measure(scenario, target, mode, concurrency, repeat)
            print(_progress(m), file=sys.stderr, flush=True)
            if target.spread or not _disturbed(m) or attempt == self.config.retries or not self.patience.left:
                return m
            self.patience.spend(time.monotonic() - started)
            print("  disturbed by other processes: measuring again", file=sys.stderr, flush=True)
        raise AssertionError("unreachable")

    def measure_all(self, scenario: str, targets: Sequence[Target], repeat: int) -> None:
        """One repeat of every mode and level, the targets in ``abba`` order at each level."""
        out = self.out
        live = list(targets)
        dead: set[int] = set()
        for mode in _modes(self.config, scenario):
            for concurrency in _levels(self.config, scenario):
                for target in abba(live, repeat):
                    if target not in live or not target.measures(mode, concurrency):
                        continue
                    m = self.measure_settled(scenario, target, mode, concurrency, repeat)
                    out.measurements.append(m)
                    failures, warnings = _verdict(m, target)
                    out.failures += failures
                    out.warnings += warnings
                    for server in target.processes:
                        if server.process.poll() is None or server.process.pid in dead:
                            continue
                        dead.add(server.process.pid)
                        out.failures.append(
                            f"{server.spec.name} died (status {server.process.returncode}) "
                            f"during {scenario} {target.name} {mode} c={concurrency} #{repeat + 1}"
                        )
                    # A target is gone with any process it relies on (the simulator serves three).
                    live = [t for t in live if all(s.process.pid not in dead for s in t.processes)]

    def run_load_scenario(self, scenario: str, argv: Mapping[str, Sequence[str]], launcher: Launcher) -> None:
        """For each repeat: start a scenario's servers, measure its targets, and stop them again.

        Every repeat has processes of its own: a process keeps its own speed for as long as it lives
        (where its memory landed, its hash seed), a few percent either way, so servers started once
        would carry one pair's offset into every repeat of a ratio (`bench.ab` found it first).
        """
        cache_levels: tuple[int, ...] = ()
        unrecorded: tuple[int, ...] = ()
        traced: tuple[int, ...] = ()
        if scenario == ECHO_SCENARIO:
            unrecorded = unrecorded_levels(self.config)
            if missing := cache_missing(argv[OMNIRELAY_SERVER]):
                self.out.skipped[CACHE_HIT] = missing
                print(f"{CACHE_HIT}: {missing}", file=sys.stderr, flush=True)
            else:
                cache_levels = self.config.cache_concurrency
            traced = traced_levels(self.config)
            if traced and (missing := tracing_missing(argv[OMNIRELAY_SERVER])):
                traced = ()
                self.out.skipped[TRACED] = missing
                print(f"{TRACED}: {missing}", file=sys.stderr, flush=True)
        for repeat in range(self.config.repeats):
            self._run_repeat(scenario, argv, launcher, repeat, cache_levels, unrecorded, traced)

    def _run_repeat(
        self,
        scenario: str,
        argv: Mapping[str, Sequence[str]],
        launcher: Launcher,
        repeat: int,
        cache_levels: tuple[int, ...],
        unrecorded: tuple[int, ...],
        traced: tuple[int, ...],
    ) -> None:
        started: list[RunningServer] = []
        count_path = sink_count_path(launcher.data_dir)
        # This start's sink writes its own count; the last one's must not pass for it.
        count_path.unlink(missing_ok=True)
        try:
            targets = start_targets(
                scenario, argv, launcher, self.out.failures, started, cache_levels, unrecorded, traced
            )
            for server in started:
                self.out.started(server)
                print(
                    f"{server.spec.name} serving on {server.address} (pid {server.process.pid}, "
                    f"repeat {repeat + 1})",
                    file=sys.stderr,
                )
            self.measure_all(scenario, targets, repeat)
        finally:
            # Stopping is bounded (SIGTERM, then SIGKILL); a second SIGTERM must not cut it short.
            handler = signal.signal(signal.SIGTERM, signal.SIG_IGN)
            # The front servers first: the relays stop before the simulator they call.
            self.out.stops += reversed(stop_all(started[::-1]))
            signal.signal(signal.SIGTERM, handler)
            if any(server.spec.name == OMNIRELAY_TRACED_SERVER for server in started):
                # Read once the traced server has stopped: it exports its last spans as it stops.
                count = read_count(count_path) or SinkCount(0, 0)
                before = self.out.sink or SinkCount(0, 0)
                self.out.sink = SinkCount(before.spans + count.spans, before.exports + count.exports)
                failure = f"{OMNIRELAY_TRACED_SERVER}: {NO_SPANS}"
                if count.spans <= 0 and failure not in self.out.failures:
                    self.out.failures.append(failure)


def _disturbed(m: Measurement) -> bool:
    r = m.result
    if r is None or r.server_cpu < 0:
        return False
    # The simulator behind a relay shares its core by design: its time is not other load.
    return r.server_core_busy - r.server_cpu - max(r.upstream_cpu, 0.0) > INTERFERENCE


def _progress(m: Measurement) -> str:
    head = f"{m.scenario:<7} {m.target:<10} {m.mode:<6} c={m.concurrency:<4} #{m.repeat + 1}"
    r = m.result
    if r is None:
        return f"{head}  FAILED: {m.failure}"
    unit = "calls/s" if m.mode == "unary" else "msgs/s"
    rate = r.calls_per_s if m.mode == "unary" else r.messages_per_s
    upstream = f" upstream {r.upstream_cpu * 100:3.0f}%" if r.upstream_cpu >= 0 else ""
    return (
        f"{head}  {rate:9.0f} {unit:<7}  p50 {r.latency_p50_ms:8.2f} ms  p99 {r.latency_p99_ms:8.2f} ms"
        f"  CPU server {r.server_cpu * 100:3.0f}%{upstream} core {r.server_core_busy * 100:3.0f}%"
        f" loadgen {r.loadgen_cpu * 100:3.0f}%  errors {r.errors}"
    )


def _verdict(m: Measurement, target: Target) -> tuple[list[str], list[str]]:
    """A measurement's failures (the run exits non-zero) and warnings (its figures are suspect)."""
    where = f"{m.scenario} {m.target} {m.mode} c={m.concurrency} #{m.repeat + 1}"
    if m.result is None:
        return [f"{where}: {m.failure}"], []
    if m.result.errors:
        return [f"{where}: {m.result.errors} errors, first: {m.result.first_error}"], []
    if not target.spread and _disturbed(m):
        r = m.result
        others = r.server_core_busy - r.server_cpu - max(r.upstream_cpu, 0.0)
        return [], [f"{where}: other processes used {others:.0%} of the server's core"]
    return [], []


def workers_missing(omnirelay_argv: Sequence[str]) -> str:
    """Why `omnirelay serve --workers` cannot be measured, or "" when it can."""
    argv = list(omnirelay_argv)
    if "serve" not in argv:
        return "The workers scenario needs `omnirelay serve`; another command stands in for it: skipped."
    help_argv = [*argv[: argv.index("serve") + 1], "--help"]
    try:
        shown = subprocess.run(help_argv, capture_output=True, text=True, timeout=30, check=False).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`{' '.join(help_argv)}` failed ({exc}): skipped."
    if "--workers" not in shown:
        return "`omnirelay serve --workers` is not available in this build: skipped."
    return ""


def cache_missing(omnirelay_argv: Sequence[str]) -> str:
    """Why omnirelay's cache hits cannot be measured, or "" when they can."""
    if "serve" not in omnirelay_argv:
        return "Cache hits need `omnirelay serve`; another command stands in for it: skipped."
    return ""


def tracing_missing(omnirelay_argv: Sequence[str]) -> str:
    """Why omnirelay with tracing on cannot be measured, or "" when it can."""
    if "serve" not in omnirelay_argv:
        return "Tracing needs `omnirelay serve`; another command stands in for it: skipped."
    return ""


def _raise_exit(signum: int, frame: FrameType | None) -> None:
    # SIGTERM unwinds like Ctrl-C does, so the servers are stopped on the way out.
    raise SystemExit(128 + signum)


def _config(
    args: argparse.Namespace, cpus: tuple[frozenset[int], frozenset[int]] | None, everywhere: frozenset[int]
) -> RunConfig:
    config = RunConfig(
        duration_s=args.duration,
        warmup_s=args.warmup,
        repeats=args.repeats,
        concurrency=args.concurrency,
        channels=args.channels,
        modes=args.modes,
        scenarios=args.scenarios,
        sim_concurrency=args.sim_concurrency,
        cache_concurrency=args.cache_concurrency,
        workers_concurrency=args.workers_concurrency,
        workers_channels=args.workers_channels,
        streams_local=args.streams,
        streams_sim=args.sim_streams,
        streams_relay=args.streams_relay,
        start_repeats=args.start_repeats,
        warm_calls=args.warm_calls,
        quiet_wait_s=args.quiet_wait,
        retries=args.retries,
        patience_s=args.patience,
        server_cpus=tuple(sorted(cpus[0])) if cpus else (),
        loadgen_cpus=tuple(sorted(cpus[1])) if cpus else (),
        all_cpus=tuple(sorted(everywhere)),
    )
    if args.quick:
        config = replace(
            config,
            duration_s=1.0,
            warmup_s=0.5,
            repeats=1,
            concurrency=(64,),
            # c=1: the added latency the targets judge.
            sim_concurrency=(1,),
            streams_local=min(config.streams_local, 1_000),
            streams_sim=min(config.streams_sim, 100),
            start_repeats=min(config.start_repeats, 2),
        )
    return config


def _run_all(
    config: RunConfig, commands: Mapping[str, Sequence[str]], launcher: Launcher, out: Outcome
) -> None:
    runner = _Runner(config, Patience(config.patience_s), out)
    for scenario in config.scenarios:
        print(f"--- {scenario}", file=sys.stderr, flush=True)
        if scenario == WORKERS_SCENARIO and (missing := workers_missing(commands[OMNIRELAY_SERVER])):
            out.skipped[scenario] = missing
            print(f"workers: {missing}", file=sys.stderr, flush=True)
        elif scenario in LOAD_SCENARIOS:
            runner.run_load_scenario(scenario, commands, launcher)
        elif scenario == STREAMS_SCENARIO:
            loadgen_cpus = frozenset(config.loadgen_cpus) if config.loadgen_cpus else None
            streams = StreamsConfig(
                config.streams_local,
                config.streams_sim,
                config.streams_relay,
                STREAMS_TIMEOUT_S,
                loadgen_cpus,
            )
            run_streams(commands, launcher, streams, runner.settle, out)
        elif scenario == START_SCENARIO:
            omnirelay = commands[OMNIRELAY_SERVER]
            run_startup(omnirelay, launcher, config.start_repeats, config.warm_calls, runner.settle, out)


def _report(config: RunConfig, out: Outcome, started_utc: datetime, wall_s: float) -> report.Report:
    summaries = [
        s
        for scenario in config.scenarios
        if scenario in TARGETS
        for mode in _modes(config, scenario)
        for c in _levels(config, scenario)
        for name in TARGETS[scenario]
        if (s := summarize(out.measurements, scenario, name, mode, c))
    ]
    off = find_summary(summaries, ECHO_SCENARIO, SUBJECT, "unary", RATIO_C)
    ratios = [
        r
        for scenario in config.scenarios
        if scenario in BASELINES
        for baseline in BASELINES[scenario]
        for mode in _modes(config, scenario)
        for c in _levels(config, scenario)
        if (r := ratio(out.measurements, scenario, mode, c, baseline))
    ]
    if ECHO_SCENARIO in config.scenarios and "unary" in config.modes:
        ratios += [
            r
            for c in config.concurrency
            if c in config.cache_concurrency
            and (r := ratio(out.measurements, ECHO_SCENARIO, "unary", c, BASELINE, subject_name=CACHE_HIT))
        ]
        # omnirelay over the echo server whose gRPC does its socket work where omnirelay's does.
        ratios += [
            r
            for c in unrecorded_levels(config)
            if (r := ratio(out.measurements, ECHO_SCENARIO, "unary", c, baseline_name=ECHO_POLLER))
        ]
        # omnirelay (recording) over itself without recording.
        ratios += [
            r
            for c in unrecorded_levels(config)
            if (r := ratio(out.measurements, ECHO_SCENARIO, "unary", c, baseline_name=UNRECORDED))
        ]
        # omnirelay with tracing on over omnirelay (tracing off).
        ratios += [
            r
            for c in traced_levels(config)
            if (r := ratio(out.measurements, ECHO_SCENARIO, "unary", c, SUBJECT, subject_name=TRACED))
        ]
    if WORKERS_SCENARIO in config.scenarios:
        one, two = (workers_target(n) for n in WORKER_COUNTS)
        c = config.workers_concurrency
        if r := ratio(out.measurements, WORKERS_SCENARIO, "unary", c, baseline_name=one, subject_name=two):
            ratios.append(r)
    added = [
        a
        for baseline in BASELINES[SIM_SCENARIO]
        for mode in config.modes
        for c in config.sim_concurrency
        if SIM_SCENARIO in config.scenarios and (a := added_latency(summaries, mode, c, baseline))
    ]
    return report.Report(
        started_utc=started_utc.strftime("%Y-%m-%d %H:%M:%S UTC"),
        config=config,
        machine=collect(REPO),
        servers=out.servers,
        stops=out.stops,
        measurements=out.measurements,
        summaries=summaries,
        ratios=ratios,
        tracing=tracing_cost(
            config,
            ratios,
            out.sink,
            out.skipped.get(TRACED, ""),
            disabled_path_ns(),
            off.rate.median if off is not None else None,
        ),
        added_latencies=added,
        holds=out.holds,
        startups=out.startups,
        skipped=out.skipped,
        goals=evaluate(config, ratios, added, out.holds, out.startups, summaries, out.skipped),
        failures=out.failures,
        warnings=out.warnings,
        wall_s=wall_s,
    )


def main(argv: Sequence[str] | None = None) -> int:
    wall_start = time.monotonic()
    parser = _parser()
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.warmup < 0 or args.repeats < 1 or args.channels < 1 or args.retries < 0:
        parser.error("--duration must be > 0, --warmup and --retries >= 0, --repeats and --channels >= 1")
    if min(args.streams, args.sim_streams, args.start_repeats, args.warm_calls, args.workers_channels) < 1:
        parser.error(
            "--streams, --sim-streams, --start-repeats, --warm-calls, --workers-channels must be >= 1"
        )
    cpus = cpu_sets()
    everywhere = frozenset(os.sched_getaffinity(0))
    config = _config(args, cpus, everywhere)
    signal.signal(signal.SIGTERM, _raise_exit)
    # Inherited by every server and load generator: thousands of streams need more than 1024 files.
    raise_open_files()
    if cpus:
        # The runner waits most of the time, but keeps off the servers' CPU when it does work.
        os.sched_setaffinity(0, cpus[1])
    commands = {
        ECHO_SERVER: ECHO_ARGV,
        OMNIRELAY_SERVER: tuple(args.omnirelay_cmd) if args.omnirelay_cmd else OMNIRELAY_ARGV,
        SIM_SERVER: SIM_ARGV,
        RELAY_SERVER: RELAY_ARGV,
        OTLP_SINK_SERVER: SINK_ARGV,
    }
    started_utc = datetime.now(UTC)
    stamp = started_utc.strftime("%Y%m%d-%H%M%S")
    args.out.mkdir(parents=True, exist_ok=True)

    out = Outcome()
    # omnirelay's usage ledgers and spill files: out of the repository, and gone after the run.
    with tempfile.TemporaryDirectory(prefix=f"omnirelay-bench-{stamp}-") as data_dir:
        launcher = Launcher(
            args.out,
            stamp,
            cpus[0] if cpus else None,
            args.start_timeout,
            REPO,
            Path(data_dir),
            everywhere,
            side_cpus=cpus[1] if cpus else None,
        )
        try:
            _run_all(config, commands, launcher, out)
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)

    wall_s = time.monotonic() - wall_start
    result = _report(config, out, started_utc, wall_s)
    markdown = report.to_markdown(result)
    json_path = args.out / f"bench-{stamp}.json"
    md_path = args.out / f"bench-{stamp}.md"
    json_path.write_text(report.to_json(result))
    md_path.write_text(markdown)
    print(markdown, end="")
    print(f"wrote {md_path} and {json_path}", file=sys.stderr)
    minutes, seconds = divmod(round(wall_s), 60)
    print(f"total wall time {minutes} min {seconds} s", file=sys.stderr)
    return 1 if out.failures else 0


if __name__ == "__main__":
    sys.exit(main())
