"""`make bench`: omnirelay against baselines, in the same run on the same machine.

Two scenarios, one after the other. `echo`: omnirelay (local provider) against a bare grpc.aio echo
server. `sim`: omnirelay relaying the provider simulator (`omnirelay sim`) through its OpenAI
adapter, against the load generator calling the simulator directly over HTTP. The servers of a
scenario run side by side pinned to one CPU; the load generator runs in its own process on another.
Measurements of the two targets alternate (in ABBA order), so a drift of the machine shows in both
rather than in one. Writes bench-<timestamp>.json and .md to --out and prints the Markdown.
Exits non-zero when a server did not start or died, or when any call failed.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Final

from bench import report
from bench.loadcore import DRAIN_TIMEOUT_S, LoadResult
from bench.machine import collect
from bench.procs import RunningServer, StopOutcome, pin_to, stop_all
from bench.quiet import wait_for_quiet
from bench.results import (
    BASELINES,
    SCENARIOS,
    SIM_SCENARIO,
    SUBJECT,
    Measurement,
    RunConfig,
    added_latency,
    ratio,
    summarize,
)
from bench.scenarios import (
    ECHO_SERVER,
    OMNIRELAY_SERVER,
    SIM_SERVER,
    Launcher,
    Target,
    reset,
    start_targets,
)
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
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement (default 5)")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of load before each measurement")
    parser.add_argument(
        "--concurrency", type=_int_list, default=(1, 16, 64), help="calls in flight (default 1,16,64)"
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
        help="echo (omnirelay's overhead over bare gRPC), sim (omnirelay relaying the provider "
        "simulator, against calling it directly), or echo,sim (default)",
    )
    parser.add_argument(
        "--sim-concurrency",
        type=_int_list,
        default=(1, 64),
        help="calls in flight in the sim scenario (default 1,64)",
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results", help="report directory")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 1 s, 1 repeat, concurrency 64 (both scenarios), 0.5 s warm-up",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=30.0,
        help="at most this many seconds of waiting for a quiet machine before each measurement",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=2,
        help="times to measure again when other load disturbed a measurement",
    )
    parser.add_argument("--start-timeout", type=float, default=60.0, help="seconds for a server to serve")
    # Testing hook: stands another command in for omnirelay (e.g. a second echo server).
    parser.add_argument("--omnirelay-cmd", type=shlex.split, default=None, help=argparse.SUPPRESS)
    return parser


def _cpu_sets() -> tuple[frozenset[int], frozenset[int]] | None:
    """One CPU for the servers and another for the load generator, when there are two."""
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2:
        return None
    return frozenset(available[:1]), frozenset(available[1:2])


def _levels(config: RunConfig, scenario: str) -> tuple[int, ...]:
    return config.sim_concurrency if scenario == SIM_SCENARIO else config.concurrency


def _measure(
    scenario: str, target: Target, mode: str, concurrency: int, repeat: int, config: RunConfig
) -> Measurement:
    argv = [
        sys.executable,
        *("-m", "bench.loadgen", "--target", target.address, "--mode", mode),
        *("--protocol", target.protocol, "--stream-events", str(target.stream_events)),
        *("--concurrency", str(concurrency), "--duration", str(config.duration_s)),
        *("--warmup", str(config.warmup_s), "--channels", str(config.channels)),
        *("--server-pid", str(target.server.process.pid)),
    ]
    if mode in target.models:
        argv += ["--model", target.models[mode]]
    if target.upstream:
        argv += ["--upstream-pid", str(target.upstream.process.pid)]
    loadgen_cpus = frozenset(config.loadgen_cpus) if config.loadgen_cpus else None
    timeout = config.warmup_s + config.duration_s + DRAIN_TIMEOUT_S + 60.0

    def failed(why: str) -> Measurement:
        return Measurement(scenario, target.name, mode, concurrency, repeat, None, why)

    if problem := reset(target):
        return failed(problem)
    try:
        done = subprocess.run(
            argv,
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            preexec_fn=pin_to(loadgen_cpus),
        )
    except subprocess.TimeoutExpired:
        return failed(f"load generator ran over {timeout:.0f} s")
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        return failed(f"load generator exited {done.returncode}: {tail}")
    result = LoadResult(**json.loads(lines[-1]))
    return Measurement(scenario, target.name, mode, concurrency, repeat, result)


def _disturbed(m: Measurement) -> bool:
    r = m.result
    if r is None or r.server_cpu < 0:
        return False
    # The simulator behind omnirelay shares its core by design: its time is not other load.
    return r.server_core_busy - r.server_cpu - max(r.upstream_cpu, 0.0) > INTERFERENCE


def _measure_settled(
    scenario: str, target: Target, mode: str, concurrency: int, repeat: int, config: RunConfig
) -> Measurement:
    """Measure once the machine is quiet; measure again when other load disturbed the server's core."""
    for attempt in range(1 + config.retries):
        busy = wait_for_quiet(QUIET_BELOW, config.quiet_wait_s)
        if busy >= QUIET_BELOW:
            print(f"the machine is still {busy:.0%} busy after {config.quiet_wait_s:g} s", file=sys.stderr)
        m = _measure(scenario, target, mode, concurrency, repeat, config)
        print(_progress(m), file=sys.stderr, flush=True)
        if not _disturbed(m) or attempt == config.retries:
            return m
        print("  disturbed by other processes: measuring again", file=sys.stderr, flush=True)
    raise AssertionError("unreachable")


def _progress(m: Measurement) -> str:
    head = f"{m.scenario:<4} {m.target:<10} {m.mode:<6} c={m.concurrency:<4} #{m.repeat + 1}"
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


def _verdict(m: Measurement) -> tuple[list[str], list[str]]:
    """A measurement's failures (the run exits non-zero) and warnings (its figures are suspect)."""
    where = f"{m.scenario} {m.target} {m.mode} c={m.concurrency} #{m.repeat + 1}"
    if m.result is None:
        return [f"{where}: {m.failure}"], []
    if m.result.errors:
        return [f"{where}: {m.result.errors} errors, first: {m.result.first_error}"], []
    if _disturbed(m):
        r = m.result
        others = r.server_core_busy - r.server_cpu - max(r.upstream_cpu, 0.0)
        return [], [f"{where}: other processes used {others:.0%} of the server's core"]
    return [], []


def _raise_exit(signum: int, frame: FrameType | None) -> None:
    # SIGTERM unwinds like Ctrl-C does, so the servers are stopped on the way out.
    raise SystemExit(128 + signum)


@dataclass(slots=True)
class _Outcome:
    """What the run collects as it goes; the report is built from it once the servers are stopped."""

    measurements: list[Measurement] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    stops: list[StopOutcome] = field(default_factory=list)
    # The command of every server started, by name, for the report.
    servers: dict[str, str] = field(default_factory=dict)


def _measure_all(scenario: str, targets: Sequence[Target], config: RunConfig, out: _Outcome) -> None:
    live = list(targets)
    dead: set[int] = set()
    for mode in config.modes:
        for concurrency in _levels(config, scenario):
            for repeat in range(config.repeats):
                # ABBA order: whatever favours the first (or second) of a pair cancels out.
                for target in list(live) if repeat % 2 == 0 else live[::-1]:
                    if target not in live:
                        continue
                    m = _measure_settled(scenario, target, mode, concurrency, repeat, config)
                    out.measurements.append(m)
                    failures, warnings = _verdict(m)
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
                    # A target is gone with any process it relies on (the simulator serves both).
                    live = [t for t in live if all(s.process.pid not in dead for s in t.processes)]


def _run_scenario(
    scenario: str, argv: Mapping[str, Sequence[str]], launcher: Launcher, config: RunConfig, out: _Outcome
) -> None:
    """Start a scenario's servers, measure its targets, and stop the servers again."""
    started: list[RunningServer] = []
    try:
        targets = start_targets(scenario, argv, launcher, out.failures, started)
        for server in started:
            env = " ".join(f"{key}={value}" for key, value in server.spec.env)
            out.servers[server.spec.name] = " ".join((env, *server.spec.argv)).strip()
            print(
                f"{server.spec.name} serving on {server.address} (pid {server.process.pid})", file=sys.stderr
            )
        _measure_all(scenario, targets, config, out)
    finally:
        # Stopping is bounded (SIGTERM, then SIGKILL); a second SIGTERM must not cut it short.
        handler = signal.signal(signal.SIGTERM, signal.SIG_IGN)
        # The front server first: omnirelay stops before the simulator it calls.
        out.stops += reversed(stop_all(started[::-1]))
        signal.signal(signal.SIGTERM, handler)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.warmup < 0 or args.repeats < 1 or args.channels < 1 or args.retries < 0:
        parser.error("--duration must be > 0, --warmup and --retries >= 0, --repeats and --channels >= 1")
    cpus = _cpu_sets()
    config = RunConfig(
        duration_s=args.duration,
        warmup_s=args.warmup,
        repeats=args.repeats,
        concurrency=args.concurrency,
        channels=args.channels,
        modes=args.modes,
        scenarios=args.scenarios,
        sim_concurrency=args.sim_concurrency,
        quiet_wait_s=args.quiet_wait,
        retries=args.retries,
        server_cpus=tuple(sorted(cpus[0])) if cpus else (),
        loadgen_cpus=tuple(sorted(cpus[1])) if cpus else (),
    )
    if args.quick:
        config = replace(
            config, duration_s=1.0, warmup_s=0.5, repeats=1, concurrency=(64,), sim_concurrency=(64,)
        )
    signal.signal(signal.SIGTERM, _raise_exit)
    if cpus:
        # The runner waits most of the time, but keeps off the servers' CPU when it does work.
        os.sched_setaffinity(0, cpus[1])
    commands = {
        ECHO_SERVER: ECHO_ARGV,
        OMNIRELAY_SERVER: tuple(args.omnirelay_cmd) if args.omnirelay_cmd else OMNIRELAY_ARGV,
        SIM_SERVER: SIM_ARGV,
    }
    started_utc = datetime.now(UTC)
    stamp = started_utc.strftime("%Y%m%d-%H%M%S")
    args.out.mkdir(parents=True, exist_ok=True)
    launcher = Launcher(args.out, stamp, cpus[0] if cpus else None, args.start_timeout, REPO)

    out = _Outcome()
    try:
        for scenario in config.scenarios:
            _run_scenario(scenario, commands, launcher, config, out)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)

    cells = [
        (scenario, mode, c)
        for scenario in config.scenarios
        for mode in config.modes
        for c in _levels(config, scenario)
    ]
    summaries = [
        s
        for scenario, mode, c in cells
        for name in (BASELINES[scenario], SUBJECT)
        if (s := summarize(out.measurements, scenario, name, mode, c))
    ]
    result = report.Report(
        started_utc=started_utc.strftime("%Y-%m-%d %H:%M:%S UTC"),
        config=config,
        machine=collect(REPO),
        servers=out.servers,
        stops=out.stops,
        measurements=out.measurements,
        summaries=summaries,
        ratios=[r for scenario, mode, c in cells if (r := ratio(out.measurements, scenario, mode, c))],
        added_latencies=[
            a
            for scenario, mode, c in cells
            if scenario == SIM_SCENARIO and (a := added_latency(summaries, mode, c))
        ],
        failures=out.failures,
        warnings=out.warnings,
    )
    markdown = report.to_markdown(result)
    json_path = args.out / f"bench-{stamp}.json"
    md_path = args.out / f"bench-{stamp}.md"
    json_path.write_text(report.to_json(result))
    md_path.write_text(markdown)
    print(markdown, end="")
    print(f"wrote {md_path} and {json_path}", file=sys.stderr)
    return 1 if out.failures else 0


if __name__ == "__main__":
    sys.exit(main())
