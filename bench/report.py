"""The run's report: a JSON document with every figure and a Markdown rendering of it."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from bench.machine import MachineFacts
from bench.procs import StopOutcome
from bench.results import Measurement, Ratio, RunConfig, Summary
from bench.stats import Spread
from bench.workload import STREAM_EVENTS, STREAM_MAX_TOKENS, UNARY_MAX_TOKENS


@dataclass(frozen=True, slots=True)
class Report:
    started_utc: str
    config: RunConfig
    machine: MachineFacts
    servers: dict[str, str]
    stops: Sequence[StopOutcome]
    measurements: Sequence[Measurement]
    summaries: Sequence[Summary]
    ratios: Sequence[Ratio]
    failures: Sequence[str]
    # Measurements whose figures are suspect though nothing failed (a busy machine).
    warnings: Sequence[str]


def _finite(value: object) -> object:
    """NaN and infinities as null: JSON has no spelling for them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def to_json(report: Report) -> str:
    return json.dumps(_finite(asdict(report)), indent=2) + "\n"


def _number(value: float) -> str:
    if not math.isfinite(value):
        return "n/a"
    if value >= 100:
        return f"{value:.0f}"
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


def _percent(value: float) -> str:
    return f"{value * 100:.0f}%" if math.isfinite(value) and value >= 0 else "n/a"


def _cell(spread: Spread, fmt: str = "number") -> str:
    show = _percent if fmt == "percent" else _number
    if spread.low == spread.high or not math.isfinite(spread.low):
        return show(spread.median)
    return f"{show(spread.median)} [{show(spread.low)}-{show(spread.high)}]"


def _table(header: Sequence[str], align: str, rows: Sequence[Sequence[str]]) -> list[str]:
    """`align` has one letter per column: l(eft) or r(ight)."""
    rule = ["---:" if a == "r" else "---" for a in align]
    return [f"| {' | '.join(cells)} |" for cells in (header, rule, *rows)]


def ratio_lines(ratios: Sequence[Ratio]) -> list[str]:
    """Lines a script can grep for: `RATIO unary c=64: 0.42`."""
    return [f"RATIO {r.mode} c={r.concurrency}: {_number(r.of_medians)}" for r in ratios]


def to_markdown(report: Report) -> str:
    config, machine = report.config, report.machine
    pinning = (
        f"servers on CPU {','.join(map(str, config.server_cpus))}, "
        f"load generator on CPU {','.join(map(str, config.loadgen_cpus))}"
        if config.server_cpus
        else "not pinned (fewer than 2 cores)"
    )
    stops = ", ".join(
        f"{s.name} exit {s.returncode}{' (killed after SIGTERM timed out)' if s.killed else ''}"
        for s in report.stops
    )
    out = [
        f"# omnirelay benchmark, {report.started_utc}",
        "",
        *_table(
            ("", ""),
            "ll",
            [
                ("CPU", f"{machine.cpu_model}, {machine.cpu_count} cores; {pinning}"),
                ("kernel", machine.kernel),
                ("Python / grpcio / protobuf", f"{machine.python} / {machine.grpcio} / {machine.protobuf}"),
                ("omnirelay", f"{machine.omnirelay}, git {machine.git_commit}"),
                (
                    "run",
                    f"{config.duration_s:g} s per measurement after {config.warmup_s:g} s of warm-up; "
                    f"{config.repeats} repeat(s), targets interleaved; {config.channels} channels; "
                    f"each after up to {config.quiet_wait_s:g} s of waiting for a quiet machine, "
                    f"measured again up to {config.retries} time(s) when other load disturbed it",
                ),
                ("servers", stops or "none started"),
            ],
        ),
        "",
        "Each figure is the median over the repeats, with [min-max] when they differ. "
        "c is the number of calls in flight. CPU figures are shares of one core over the window: "
        "the server process, its core whoever used it (more than the server means other load), "
        "and the load generator (near 100% means the figure is the load generator's limit).",
    ]
    by_mode = {mode: [s for s in report.summaries if s.mode == mode] for mode in config.modes}
    if "unary" in by_mode:
        out += ["", f"## Unary `Complete` (max_tokens {UNARY_MAX_TOKENS})", ""]
        out += _table(
            (
                "target",
                "c",
                "calls/s",
                "p50 ms",
                "p99 ms",
                "errors",
                "server CPU",
                "server core busy",
                "loadgen CPU",
            ),
            "lrrrrrrrr",
            [
                (
                    s.target,
                    str(s.concurrency),
                    _cell(s.rate),
                    _cell(s.latency_p50_ms),
                    _cell(s.latency_p99_ms),
                    str(s.errors),
                    _cell(s.server_cpu, "percent"),
                    _cell(s.server_core_busy, "percent"),
                    _cell(s.loadgen_cpu, "percent"),
                )
                for s in by_mode["unary"]
            ],
        )
    if "stream" in by_mode:
        out += [
            "",
            f"## Streaming `StreamComplete` (max_tokens {STREAM_MAX_TOKENS}: {STREAM_EVENTS} events)",
            "",
        ]
        out += _table(
            (
                "target",
                "c",
                "messages/s",
                "streams/s",
                "p50 ms",
                "p99 ms",
                "first message p50 ms",
                "errors",
                "server CPU",
                "server core busy",
                "loadgen CPU",
            ),
            "lrrrrrrrrrr",
            [
                (
                    s.target,
                    str(s.concurrency),
                    _cell(s.rate),
                    _cell(s.calls_per_s),
                    _cell(s.latency_p50_ms),
                    _cell(s.latency_p99_ms),
                    _cell(s.ttfm_p50_ms),
                    str(s.errors),
                    _cell(s.server_cpu, "percent"),
                    _cell(s.server_core_busy, "percent"),
                    _cell(s.loadgen_cpu, "percent"),
                )
                for s in by_mode["stream"]
            ],
        )
    if report.ratios:
        out += ["", "## omnirelay / echo (calls/s unary, messages/s streaming)", ""]
        out += _table(
            ("mode", "c", "ratio of medians", "per-repeat range"),
            "lrrr",
            [
                (
                    r.mode,
                    str(r.concurrency),
                    _number(r.of_medians),
                    f"{_number(r.low)}-{_number(r.high)}" if r.low != r.high else _number(r.low),
                )
                for r in report.ratios
            ],
        )
    sizes: dict[str, dict[str, Summary]] = {}
    for s in report.summaries:
        sizes.setdefault(s.target, {}).setdefault(s.mode, s)
    out += ["", "## Answer sizes (one call, serialized protobuf)", ""]
    out += _table(
        ("target", "unary bytes", "stream events", "stream bytes"),
        "lrrr",
        [
            (
                target,
                str(modes["unary"].probe_bytes) if "unary" in modes else "n/a",
                str(modes["stream"].probe_messages) if "stream" in modes else "n/a",
                str(modes["stream"].probe_bytes) if "stream" in modes else "n/a",
            )
            for target, modes in sizes.items()
        ],
    )
    if report.failures:
        out += ["", "## Failures", ""]
        # Continuation lines (a server's last output) indented to stay inside the list item.
        out += ["- " + failure.replace("\n", "\n  ") for failure in report.failures]
    if report.warnings:
        out += ["", "## Warnings", ""]
        out += [f"- {warning}" for warning in report.warnings]
    if report.ratios:
        out += ["", "```text", *ratio_lines(report.ratios), "```"]
    return "\n".join(out) + "\n"
