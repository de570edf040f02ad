"""Where a unary call's time goes in a real server: omnirelay cut at each stage, timed against echo.

`bench.inprocess` counts omnirelay's own instructions with no gRPC core around them. In a real
server the same work costs several times what a hot loop suggests (grpc.aio's poller and
event-engine threads share the server's core and take it over about six times a call, so the loop's
work rarely runs on warm caches; the likeliest reason). This measures the real thing instead. Five
servers, all pinned to one core (as `make bench` pins them), each doing a little more per call:

    echo      bench.echo_server: prebuilt answers, the floor
    edge      omnirelay, answers at the service with echo's response; usage, request lines, metrics
              and the cache off (process, edge, trailers)
    service   the same, plus converting the request and rendering a real completion
    routed    omnirelay serving for real with the same parts off (plus router, plan, `local`)
    full      omnirelay as `make bench` serves it (plus usage record, request line, metrics, cache)

They are measured in turn, the order reversed every other round, with the load generator on the
other core; each stage is reported with its median calls/s and the microseconds a call costs over
the stage before it (1e6 / rate, differenced). The servers are started afresh every
`--per-start` rounds (2). Run: python -m bench.stages [--rounds 4] [--per-start 2] [--duration 4]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from bench.loadcore import LoadResult
from bench.procs import LoadToolError, RunningServer, ServerSpec, run_load_tool, start_server, stop_all
from bench.run import ECHO_ARGV, OMNIRELAY_ARGV, REPO, abba, cpu_sets
from bench.scenarios import usage_env

# What `omnirelay serve` is given after its command, as `make bench` starts it.
SERVE_ARGS: Final = OMNIRELAY_ARGV[2:]
PARTS_OFF: Final = (
    ("OMNIRELAY_USAGE__ENABLED", "false"),
    ("OMNIRELAY_LOGGING__REQUESTS", "false"),
    ("OMNIRELAY_METRICS__ENABLED", "false"),
    ("OMNIRELAY_CACHE__BACKEND", "off"),
)


@dataclass(frozen=True, slots=True)
class Stage:
    name: str
    adds: str
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()


def stages() -> tuple[Stage, ...]:
    cut = (sys.executable, "-m", "bench.stage_server", "--stage")
    return (
        Stage("echo", "the floor: gRPC core, protobuf, asyncio", ECHO_ARGV),
        Stage("edge", "the process, edge and trailers", (*cut, "edge", "--", *SERVE_ARGS), PARTS_OFF),
        Stage(
            "service",
            "request conversion, response rendering",
            (*cut, "service", "--", *SERVE_ARGS),
            PARTS_OFF,
        ),
        Stage("routed", "router, plan, attempt, `local` provider", OMNIRELAY_ARGV, PARTS_OFF),
        Stage("full", "usage record, request line, metrics, cache layer", OMNIRELAY_ARGV),
    )


@dataclass(frozen=True, slots=True)
class Row:
    stage: Stage
    rates: tuple[float, ...]  # calls/s, one per round

    @property
    def median(self) -> float:
        return statistics.median(self.rates)


def added_micros(rows: Sequence[Row]) -> list[float | None]:
    """Each stage's microseconds per call over the stage before it (None for the first)."""
    added: list[float | None] = [None]
    for before, after in itertools.pairwise(rows):
        added.append(1e6 / after.median - 1e6 / before.median)
    return added


def table(rows: Sequence[Row]) -> str:
    floor = rows[0].median
    lines = [
        "| stage | adds | calls/s (median) | rounds | vs echo | added per call |",
        "| --- | --- | ---: | --- | ---: | ---: |",
    ]
    for row, added in zip(rows, added_micros(rows), strict=True):
        rounds = ", ".join(f"{r:,.0f}" for r in row.rates)
        extra = "" if added is None else f"{added:+.0f} us"
        lines.append(
            f"| {row.stage.name} | {row.stage.adds} | {row.median:,.0f} | {rounds} | "
            f"{row.median / floor:.2f} | {extra} |"
        )
    return "\n".join(lines)


def measure(
    address: str,
    concurrency: int,
    duration: float,
    warmup: float,
    cpus: frozenset[int] | None,
    cache_hit: bool = False,
    mode: str = "unary",
) -> float:
    """Unary calls/s (streamed messages/s for mode "stream") from one load generator run against
    ``address``, which must see no errors."""
    argv = [
        sys.executable,
        *("-m", "bench.loadgen", "--target", address, "--mode", mode),
        *("--concurrency", str(concurrency), "--duration", str(duration), "--warmup", str(warmup)),
        *(("--cache-hit",) if cache_hit else ()),
    ]
    try:
        result = LoadResult(**run_load_tool(argv, REPO, cpus, duration + warmup + 120))
    except LoadToolError as exc:
        raise RuntimeError(f"{exc} (against {address})") from None
    if result.errors:
        raise RuntimeError(f"{result.errors} calls failed against {address}")
    return result.messages_per_s if mode == "stream" else result.calls_per_s


def in_turns(count: int, rounds: int, measure_one: Callable[[int], float]) -> list[list[float]]:
    """``measure_one(i)`` for each of ``count`` servers once a round, in `make bench`'s order (``abba``)."""
    found: list[list[float]] = [[] for _ in range(count)]
    for i in range(rounds):
        for which in abba(range(count), i):
            found[which].append(measure_one(which))
    return found


def add_per_start(parser: argparse.ArgumentParser) -> None:
    """``--per-start`` (2), for the tools that measure servers in turns (this one and bench.ab)."""
    parser.add_argument(
        "--per-start",
        type=int,
        default=2,
        help="rounds before the servers are started again, even (0: once for all rounds)",
    )


def per_start_problem(rounds: int, per_start: int) -> str:
    """Why ``per_start`` cannot divide ``rounds`` into starts ("" when it can). Even, so each start
    measures every order of ``in_turns`` equally often."""
    if per_start < 0 or per_start % 2 or (per_start and rounds % per_start):
        return "--per-start must be 0 or an even number that divides --rounds"
    return ""


def serve_and_measure(
    specs: Sequence[ServerSpec],
    rounds: int,
    log_dir: Path,
    measure_one: Callable[[str, frozenset[int] | None], float],
    per_start: int = 0,
) -> list[list[float]]:
    """Start ``specs`` on one core (the load generator gets another, as `make bench` places them),
    measure them in turns with ``measure_one(address, loadgen_cpus)``, and always stop them.

    They are started afresh every ``per_start`` rounds (0: once for all). A process keeps its own
    speed for as long as it lives, so rounds of one start share its offset (bench/README.md).
    """
    size = per_start or rounds
    found: list[list[float]] = [[] for _ in specs]
    for first in range(0, rounds, size):
        block = _serve_once(specs, min(size, rounds - first), log_dir, measure_one)
        for rates, more in zip(found, block, strict=True):
            rates += more
    return found


def _serve_once(
    specs: Sequence[ServerSpec],
    rounds: int,
    log_dir: Path,
    measure_one: Callable[[str, frozenset[int] | None], float],
) -> list[list[float]]:
    cpus = cpu_sets()
    server_cpus, loadgen_cpus = cpus if cpus else (None, None)
    running: list[RunningServer] = []
    try:
        for spec in specs:
            running.append(start_server(spec, log_dir / f"{spec.name}.log", server_cpus, 60.0, REPO))
        return in_turns(len(running), rounds, lambda i: measure_one(running[i].address, loadgen_cpus))
    finally:
        stop_all(running)


def run(
    rounds: int, duration: float, warmup: float, concurrency: int, log_dir: Path, per_start: int = 0
) -> list[Row]:
    every = stages()
    specs = [ServerSpec(s.name, s.argv, s.env + usage_env(log_dir, s.name)) for s in every]
    rates = serve_and_measure(
        specs,
        rounds,
        log_dir,
        lambda address, cpus: measure(address, concurrency, duration, warmup, cpus),
        per_start,
    )
    return [Row(stage, tuple(found)) for stage, found in zip(every, rates, strict=True)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stages", description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    add_per_start(parser)
    parser.add_argument("--duration", type=float, default=4.0, help="seconds measured per server and round")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.duration <= 0 or args.warmup < 0 or args.concurrency < 1:
        parser.error("--rounds and --concurrency must be >= 1, --duration > 0, --warmup >= 0")
    if problem := per_start_problem(args.rounds, args.per_start):
        parser.error(problem)
    with tempfile.TemporaryDirectory(prefix="omnirelay-stages-") as tmp:
        rows = run(args.rounds, args.duration, args.warmup, args.concurrency, Path(tmp), args.per_start)
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
