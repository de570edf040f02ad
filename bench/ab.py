"""Is a change faster? omnirelay as of a git ref against the working tree, measured in alternation.

`make bench` reports each server's median over a few rounds, and its rounds drift by 3-5% on this
VM, so a change worth 2% is invisible there. This starts both versions side by side, pinned to one
core as `make bench` pins them, measures them in turn with the load generator on the other core
(the order flipping every round, so a drift favours neither), and reports the mean of the per-round
ratios with its standard error. Both run with this checkout's virtualenv; the base is the `server`
and `clients/python` trees of the ref, extracted and put first on PYTHONPATH.

Both servers are started afresh every ``--per-start`` rounds (``bench.stages.serve_and_measure``),
and the standard error is taken over those starts: a process keeps its own speed for life, so
rounds of one start only show the scatter around that pair's offset (bench/README.md has the runs
that showed it).

Run: python -m bench.ab [--base HEAD] [--rounds 12] [--per-start 2] [--duration 2]
                        [--cache-hit | --stream] [--env KEY=VALUE ...]
`--env` sets settings (or any environment) for the working tree's server only: with `--base HEAD`
it measures a setting, e.g. `--env OMNIRELAY_SERVER__GRPC_IO=event_engine`.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from bench.procs import ServerSpec
from bench.run import OMNIRELAY_ARGV, REPO
from bench.scenarios import usage_env
from bench.stages import add_per_start, measure, per_start_problem, serve_and_measure

# What the base needs of the ref: the gateway and the generated client code it imports.
TREES: Final = ("server", "clients/python")
# A difference smaller than this many standard errors is reported as noise.
NOISE_ERRORS: Final = 2.0


@dataclass(frozen=True, slots=True)
class Paired:
    base: tuple[float, ...]  # calls/s, one per round
    change: tuple[float, ...]
    # Rounds measured by each pair of server processes, in order (the default: one pair for all).
    per_start: int = 0

    @property
    def ratios(self) -> tuple[float, ...]:
        return tuple(c / b for b, c in zip(self.base, self.change, strict=True))

    @property
    def starts(self) -> tuple[float, ...]:
        """The mean ratio of each pair of server processes."""
        ratios = self.ratios
        size = self.per_start or len(ratios)
        return tuple(statistics.fmean(ratios[i : i + size]) for i in range(0, len(ratios), size))

    @property
    def mean(self) -> float:
        return statistics.fmean(self.ratios)

    @property
    def stderr(self) -> float:
        """Over the starts when there are several (a process's own offset is part of the noise),
        else over the rounds of the one pair."""
        spread = self.starts if len(self.starts) > 1 else self.ratios
        return statistics.stdev(spread) / math.sqrt(len(spread)) if len(spread) > 1 else math.inf

    def basis(self) -> str:
        rounds = len(self.ratios)
        if len(self.starts) > 1:
            return f"{len(self.starts)} server starts of {self.per_start} rounds each"
        return f"{rounds} paired rounds, one server start"

    def verdict(self) -> str:
        if abs(self.mean - 1.0) <= NOISE_ERRORS * self.stderr:
            return "within noise"
        return "faster" if self.mean > 1.0 else "slower"


def report(
    paired: Paired, base_ref: str, unit: str = "calls/s", env: tuple[tuple[str, str], ...] = ()
) -> str:
    lines = [f"| server | {unit} (median) | rounds |", "| --- | ---: | --- |"]
    change = "working tree" + "".join(f", {k}={v}" for k, v in env)
    for name, rates in ((f"base ({base_ref})", paired.base), (f"change ({change})", paired.change)):
        rounds = ", ".join(f"{r:,.0f}" for r in rates)
        lines.append(f"| {name} | {statistics.median(rates):,.0f} | {rounds} |")
    lines.append("")
    lines.append(
        f"change / base: {paired.mean:.3f} ± {paired.stderr:.3f} (standard error over "
        f"{paired.basis()}): {paired.verdict()}"
    )
    return "\n".join(lines)


def materialize(ref: str, dest: Path) -> str:
    """Extract the ref's trees under ``dest``; returns the PYTHONPATH that imports them first."""
    archive = subprocess.run(
        ["git", "archive", "--format=tar", ref, *TREES], cwd=REPO, capture_output=True, check=True
    )
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(dest, filter="data")
    return os.pathsep.join(str(dest / tree) for tree in TREES)


def run(
    base_ref: str,
    rounds: int,
    duration: float,
    warmup: float,
    concurrency: int,
    cache_hit: bool,
    work_dir: Path,
    mode: str = "unary",
    env: tuple[tuple[str, str], ...] = (),
    per_start: int = 0,
) -> Paired:
    """``env``: set for the change's server only. ``per_start``: rounds before both servers are
    started again (0: one start for all rounds)."""
    pythonpath = materialize(base_ref, work_dir / "base-tree")
    specs = (
        ServerSpec("base", OMNIRELAY_ARGV, (("PYTHONPATH", pythonpath), *usage_env(work_dir, "base"))),
        ServerSpec("change", OMNIRELAY_ARGV, (*env, *usage_env(work_dir, "change"))),
    )
    base, change = serve_and_measure(
        specs,
        rounds,
        work_dir,
        lambda address, cpus: measure(address, concurrency, duration, warmup, cpus, cache_hit, mode),
        per_start,
    )
    return Paired(tuple(base), tuple(change), per_start)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.split("\n")[0])
    parser.add_argument("--base", default="HEAD", help="the git ref to compare against (default HEAD)")
    parser.add_argument("--rounds", type=int, default=12)
    add_per_start(parser)
    parser.add_argument("--duration", type=float, default=2.0, help="seconds measured per server and round")
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--concurrency", type=int, default=64)
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument("--cache-hit", action="store_true", help="deterministic requests, answered from cache")
    kind.add_argument("--stream", action="store_true", help="streamed completions, measured in messages/s")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set in the working tree's server's environment only (repeatable)",
    )
    args = parser.parse_args(argv)
    if args.rounds < 2 or args.duration <= 0 or args.warmup < 0 or args.concurrency < 1:
        parser.error("--rounds must be >= 2, --concurrency >= 1, --duration > 0, --warmup >= 0")
    if problem := per_start_problem(args.rounds, args.per_start):
        parser.error(problem)
    if bad := [e for e in args.env if not e.partition("=")[0] or "=" not in e]:
        parser.error(f"--env takes KEY=VALUE, not {', '.join(map(repr, bad))}")
    env = tuple((key, value) for key, _, value in (e.partition("=") for e in args.env))
    mode = "stream" if args.stream else "unary"
    with tempfile.TemporaryDirectory(prefix="omnirelay-ab-") as tmp:
        paired = run(
            args.base,
            args.rounds,
            args.duration,
            args.warmup,
            args.concurrency,
            args.cache_hit,
            Path(tmp),
            mode,
            env,
            args.per_start,
        )
    print(report(paired, args.base, "messages/s" if args.stream else "calls/s", env))
    return 0


if __name__ == "__main__":
    sys.exit(main())
