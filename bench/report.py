"""The run's report: a JSON document with every figure and a Markdown rendering of it."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from bench.machine import MachineFacts
from bench.procs import StopOutcome
from bench.results import (
    DIRECT,
    ECHO_SCENARIO,
    SIM_SCENARIO,
    SUBJECT,
    AddedLatency,
    Measurement,
    Ratio,
    RunConfig,
    Summary,
)
from bench.stats import Spread
from bench.workload import STREAM_EVENTS, STREAM_MAX_TOKENS, UNARY_MAX_TOKENS, sim_model


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
    # The sim scenario's latency of omnirelay over the direct call.
    added_latencies: Sequence[AddedLatency]
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


def _ms(value: float) -> str:
    """A latency difference: two decimals and a sign, whatever its size (it may be negative)."""
    return f"{value:+.2f}" if math.isfinite(value) else "n/a"


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
    """Lines a script can grep for: `RATIO unary c=64: 0.42`, `RATIO relay_stream c=64: 0.35`."""
    return [
        f"RATIO {'relay_' if r.scenario == SIM_SCENARIO else ''}{r.mode} c={r.concurrency}: "
        f"{_number(r.of_medians)}"
        for r in ratios
    ]


def added_latency_lines(added: Sequence[AddedLatency]) -> list[str]:
    """Lines a script can grep for: `ADDED_LATENCY c=64 p50_ms=0.85 p99_ms=2.10` (unary calls)."""
    return [
        f"ADDED_LATENCY c={a.concurrency} p50_ms={a.p50_ms:.2f} p99_ms={a.p99_ms:.2f}"
        for a in added
        if a.mode == "unary"
    ]


def _header(report: Report) -> list[str]:
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
    levels = f"concurrency {','.join(map(str, config.concurrency))}"
    if SIM_SCENARIO in config.scenarios:
        levels += f" (sim: {','.join(map(str, config.sim_concurrency))})"
    return [
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
                    f"scenarios {','.join(config.scenarios)}; {levels}; "
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


def _ratio_table(ratios: Sequence[Ratio]) -> list[str]:
    return _table(
        ("mode", "c", "ratio of medians", "per-repeat range"),
        "lrrr",
        [
            (
                r.mode,
                str(r.concurrency),
                _number(r.of_medians),
                f"{_number(r.low)}-{_number(r.high)}" if r.low != r.high else _number(r.low),
            )
            for r in ratios
        ],
    )


def _sizes_table(summaries: Sequence[Summary]) -> list[str]:
    sizes: dict[str, dict[str, Summary]] = {}
    for s in summaries:
        sizes.setdefault(s.target, {}).setdefault(s.mode, s)
    return _table(
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


def _echo_sections(report: Report) -> list[str]:
    summaries = [s for s in report.summaries if s.scenario == ECHO_SCENARIO]
    ratios = [r for r in report.ratios if r.scenario == ECHO_SCENARIO]
    by_mode = {mode: [s for s in summaries if s.mode == mode] for mode in report.config.modes}
    out: list[str] = []
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
    if ratios:
        out += ["", "## omnirelay / echo (calls/s unary, messages/s streaming)", ""]
        out += _ratio_table(ratios)
    if summaries:
        out += ["", "## Answer sizes (one call, serialized protobuf)", ""]
        out += _sizes_table(summaries)
    return out


def _sim_cpu(s: Summary) -> tuple[str, str]:
    """omnirelay's and the simulator's CPU: the direct target's server is the simulator itself."""
    if s.target == SUBJECT:
        return _cell(s.server_cpu, "percent"), _cell(s.upstream_cpu, "percent")
    return "n/a", _cell(s.server_cpu, "percent")


def _sim_sections(report: Report) -> list[str]:
    summaries = [s for s in report.summaries if s.scenario == SIM_SCENARIO]
    ratios = [r for r in report.ratios if r.scenario == SIM_SCENARIO]
    by_mode = {mode: [s for s in summaries if s.mode == mode] for mode in report.config.modes}
    out = [
        "",
        "## Through the provider simulator",
        "",
        f"`{SUBJECT}`: `Complete` / `StreamComplete` over gRPC for `sim/{sim_model('unary')}` "
        f"(`sim/{sim_model('stream')}` streaming), relayed by omnirelay's OpenAI adapter to "
        f"`omnirelay sim`. `{DIRECT}`: the load generator posting the same Chat Completions request "
        "to the simulator with httpx (one client and connection per worker), decoding the JSON answer "
        "or each SSE event. The simulator shares the servers' CPU with omnirelay: each target has one "
        "core for everything behind the client, the load generator the other. At c=1 the added "
        "latency is omnirelay's own time per call; at high c it is mostly queueing behind omnirelay's "
        "CPU cost, and the direct figures are often the load generator's limit (see loadgen CPU). "
        "The simulator's record is emptied before each measurement.",
    ]
    if "unary" in by_mode:
        out += ["", f"### Unary (max_tokens {UNARY_MAX_TOKENS})", ""]
        out += _table(
            (
                "target",
                "c",
                "calls/s",
                "p50 ms",
                "p99 ms",
                "errors",
                "omnirelay CPU",
                "sim CPU",
                "server core busy",
                "loadgen CPU",
            ),
            "lrrrrrrrrr",
            [
                (
                    s.target,
                    str(s.concurrency),
                    _cell(s.rate),
                    _cell(s.latency_p50_ms),
                    _cell(s.latency_p99_ms),
                    str(s.errors),
                    *_sim_cpu(s),
                    _cell(s.server_core_busy, "percent"),
                    _cell(s.loadgen_cpu, "percent"),
                )
                for s in by_mode["unary"]
            ],
        )
    if "stream" in by_mode:
        out += [
            "",
            f"### Streaming (max_tokens {STREAM_MAX_TOKENS}: {STREAM_MAX_TOKENS} text deltas; "
            "events per stream under Answer sizes)",
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
                "first text p50 ms",
                "first text p99 ms",
                "errors",
                "omnirelay CPU",
                "sim CPU",
                "server core busy",
                "loadgen CPU",
            ),
            "lrrrrrrrrrrrrr",
            [
                (
                    s.target,
                    str(s.concurrency),
                    _cell(s.rate),
                    _cell(s.calls_per_s),
                    _cell(s.latency_p50_ms),
                    _cell(s.latency_p99_ms),
                    _cell(s.ttfm_p50_ms),
                    _cell(s.ttft_p50_ms),
                    _cell(s.ttft_p99_ms),
                    str(s.errors),
                    *_sim_cpu(s),
                    _cell(s.server_core_busy, "percent"),
                    _cell(s.loadgen_cpu, "percent"),
                )
                for s in by_mode["stream"]
            ],
        )
    if report.added_latencies:
        out += ["", f"### Added latency ({SUBJECT} - {DIRECT}, of the medians over repeats)", ""]
        out += _table(
            ("mode", "c", "of", f"{SUBJECT} p50 ms", f"{DIRECT} p50 ms", "added p50 ms", "added p99 ms"),
            "lrlrrrr",
            [
                (
                    a.mode,
                    str(a.concurrency),
                    "whole call" if a.mode == "unary" else "first text",
                    _number(a.subject_p50_ms),
                    _number(a.baseline_p50_ms),
                    _ms(a.p50_ms),
                    _ms(a.p99_ms),
                )
                for a in report.added_latencies
            ],
        )
    if ratios:
        out += ["", f"### {SUBJECT} / {DIRECT} (calls/s unary, messages/s streaming)", ""]
        out += _ratio_table(ratios)
    if summaries:
        out += [
            "",
            f"### Answer sizes (one call: {SUBJECT} serialized protobuf, {DIRECT} HTTP body; "
            "stream events: gRPC messages or SSE data lines, [DONE] included)",
            "",
        ]
        out += _sizes_table(summaries)
    return out


def to_markdown(report: Report) -> str:
    out = _header(report)
    if ECHO_SCENARIO in report.config.scenarios:
        out += _echo_sections(report)
    if SIM_SCENARIO in report.config.scenarios:
        out += _sim_sections(report)
    if report.failures:
        out += ["", "## Failures", ""]
        # Continuation lines (a server's last output) indented to stay inside the list item.
        out += ["- " + failure.replace("\n", "\n  ") for failure in report.failures]
    if report.warnings:
        out += ["", "## Warnings", ""]
        out += [f"- {warning}" for warning in report.warnings]
    lines = [*ratio_lines(report.ratios), *added_latency_lines(report.added_latencies)]
    if lines:
        out += ["", "```text", *lines, "```"]
    return "\n".join(out) + "\n"
