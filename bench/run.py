"""`make bench`: omnirelay against a bare grpc.aio echo server, in the same run on the same machine.

Both servers run side by side pinned to one CPU; the load generator runs in its own process on
another. Measurements of the two targets alternate (in ABBA order), so a drift of the machine shows
in both rather than in one. Writes bench-<timestamp>.json and .md to --out and prints the Markdown.
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
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Final

from bench import report
from bench.loadgen import DRAIN_TIMEOUT_S, LoadResult
from bench.machine import collect
from bench.procs import (
    RunningServer,
    ServerSpec,
    ServerStartError,
    pin_to,
    start_server,
    stop_all,
)
from bench.quiet import wait_for_quiet
from bench.results import BASELINE, SUBJECT, Measurement, RunConfig, ratio, summarize
from bench.workload import MODES

REPO: Final = Path(__file__).resolve().parent.parent
# The omnirelay command next to this interpreter: the one installed in the same virtualenv.
OMNIRELAY_ARGV: Final = (
    str(Path(sys.executable).parent / "omnirelay"),
    *("serve", "--host", "127.0.0.1", "--port", "0", "--profile", "development"),
)
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


def _modes(text: str) -> tuple[str, ...]:
    values = tuple(part.strip() for part in text.split(",") if part.strip())
    if not values or not set(values) <= set(MODES):
        raise argparse.ArgumentTypeError(f"modes are a comma-separated subset of {','.join(MODES)}")
    return values


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement (default 5)")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of load before each measurement")
    parser.add_argument(
        "--concurrency", type=_int_list, default=(1, 16, 64), help="calls in flight (default 1,16,64)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="measurements per figure (default 3)")
    parser.add_argument("--channels", type=int, default=4, help="client channels (default 4)")
    parser.add_argument("--modes", type=_modes, default=MODES, help="unary,stream (default both)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results", help="report directory")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 1 s, 1 repeat, concurrency 64, 0.5 s warm-up"
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


def _measure(
    server: RunningServer, mode: str, concurrency: int, repeat: int, config: RunConfig
) -> Measurement:
    argv = [
        sys.executable,
        *("-m", "bench.loadgen", "--target", server.address, "--mode", mode),
        *("--concurrency", str(concurrency), "--duration", str(config.duration_s)),
        *("--warmup", str(config.warmup_s), "--channels", str(config.channels)),
        *("--server-pid", str(server.process.pid)),
    ]
    loadgen_cpus = frozenset(config.loadgen_cpus) if config.loadgen_cpus else None
    timeout = config.warmup_s + config.duration_s + DRAIN_TIMEOUT_S + 60.0
    name = server.spec.name
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
        return Measurement(name, mode, concurrency, repeat, None, f"load generator ran over {timeout:.0f} s")
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        return Measurement(
            name, mode, concurrency, repeat, None, f"load generator exited {done.returncode}: {tail}"
        )
    return Measurement(name, mode, concurrency, repeat, LoadResult(**json.loads(lines[-1])))


def _disturbed(m: Measurement) -> bool:
    r = m.result
    return r is not None and r.server_cpu >= 0 and r.server_core_busy - r.server_cpu > INTERFERENCE


def _measure_settled(
    server: RunningServer, mode: str, concurrency: int, repeat: int, config: RunConfig
) -> Measurement:
    """Measure once the machine is quiet; measure again when other load disturbed the server's core."""
    for attempt in range(1 + config.retries):
        busy = wait_for_quiet(QUIET_BELOW, config.quiet_wait_s)
        if busy >= QUIET_BELOW:
            print(f"the machine is still {busy:.0%} busy after {config.quiet_wait_s:g} s", file=sys.stderr)
        m = _measure(server, mode, concurrency, repeat, config)
        print(_progress(m), file=sys.stderr, flush=True)
        if not _disturbed(m) or attempt == config.retries:
            return m
        print("  disturbed by other processes: measuring again", file=sys.stderr, flush=True)
    raise AssertionError("unreachable")


def _progress(m: Measurement) -> str:
    head = f"{m.target:<10} {m.mode:<6} c={m.concurrency:<4} #{m.repeat + 1}"
    r = m.result
    if r is None:
        return f"{head}  FAILED: {m.failure}"
    unit = "calls/s" if m.mode == "unary" else "msgs/s"
    rate = r.calls_per_s if m.mode == "unary" else r.messages_per_s
    return (
        f"{head}  {rate:9.0f} {unit:<7}  p50 {r.latency_p50_ms:8.2f} ms  p99 {r.latency_p99_ms:8.2f} ms"
        f"  CPU server {r.server_cpu * 100:3.0f}% core {r.server_core_busy * 100:3.0f}%"
        f" loadgen {r.loadgen_cpu * 100:3.0f}%  errors {r.errors}"
    )


def _verdict(m: Measurement) -> tuple[list[str], list[str]]:
    """A measurement's failures (the run exits non-zero) and warnings (its figures are suspect)."""
    where = f"{m.target} {m.mode} c={m.concurrency} #{m.repeat + 1}"
    if m.result is None:
        return [f"{where}: {m.failure}"], []
    if m.result.errors:
        return [f"{where}: {m.result.errors} errors, first: {m.result.first_error}"], []
    if _disturbed(m):
        others = m.result.server_core_busy - m.result.server_cpu
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


def _start_all(
    specs: Sequence[ServerSpec],
    args: argparse.Namespace,
    stamp: str,
    cpus: frozenset[int] | None,
    out: _Outcome,
    started: list[RunningServer],
) -> None:
    """Appends each server to `started` as soon as it serves, so an interrupt cannot orphan it."""
    for spec in specs:
        log_path = args.out / f"bench-{stamp}-{spec.name}.log"
        try:
            server = start_server(spec, log_path, cpus, args.start_timeout, REPO)
        except (ServerStartError, OSError) as exc:
            out.failures.append(f"{spec.name} did not start: {exc}")
            continue
        started.append(server)
        print(f"{spec.name} serving on {server.address} (pid {server.process.pid})", file=sys.stderr)


def _measure_all(servers: Sequence[RunningServer], config: RunConfig, out: _Outcome) -> None:
    live = list(servers)
    for mode in config.modes:
        for concurrency in config.concurrency:
            for repeat in range(config.repeats):
                # ABBA order: whatever favours the first (or second) of a pair cancels out.
                for server in list(live) if repeat % 2 == 0 else live[::-1]:
                    m = _measure_settled(server, mode, concurrency, repeat, config)
                    out.measurements.append(m)
                    failures, warnings = _verdict(m)
                    out.failures += failures
                    out.warnings += warnings
                    if server.process.poll() is not None:
                        out.failures.append(
                            f"{m.target} died (status {server.process.returncode}) "
                            f"during {mode} c={concurrency} #{repeat + 1}"
                        )
                        live.remove(server)


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
        quiet_wait_s=args.quiet_wait,
        retries=args.retries,
        server_cpus=tuple(sorted(cpus[0])) if cpus else (),
        loadgen_cpus=tuple(sorted(cpus[1])) if cpus else (),
    )
    if args.quick:
        config = replace(config, duration_s=1.0, warmup_s=0.5, repeats=1, concurrency=(64,))
    signal.signal(signal.SIGTERM, _raise_exit)
    if cpus:
        # The runner waits most of the time, but keeps off the servers' CPU when it does work.
        os.sched_setaffinity(0, cpus[1])
    specs = (
        ServerSpec(BASELINE, ECHO_ARGV),
        ServerSpec(SUBJECT, tuple(args.omnirelay_cmd) if args.omnirelay_cmd else OMNIRELAY_ARGV),
    )
    started_utc = datetime.now(UTC)
    stamp = started_utc.strftime("%Y%m%d-%H%M%S")
    args.out.mkdir(parents=True, exist_ok=True)

    out = _Outcome()
    started: list[RunningServer] = []
    try:
        _start_all(specs, args, stamp, cpus[0] if cpus else None, out, started)
        _measure_all(started, config, out)
    finally:
        # Stopping is bounded (SIGTERM, then SIGKILL); a second SIGTERM must not cut it short.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stops = stop_all(started)

    names = [spec.name for spec in specs]
    cells = [(mode, c) for mode in config.modes for c in config.concurrency]
    result = report.Report(
        started_utc=started_utc.strftime("%Y-%m-%d %H:%M:%S UTC"),
        config=config,
        machine=collect(REPO),
        servers={s.spec.name: " ".join(s.spec.argv) for s in started},
        stops=stops,
        measurements=out.measurements,
        summaries=[
            s for mode, c in cells for name in names if (s := summarize(out.measurements, name, mode, c))
        ],
        ratios=[r for mode, c in cells if (r := ratio(out.measurements, mode, c))],
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
