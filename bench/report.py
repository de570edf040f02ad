"""The run's report: a JSON document with every figure and a Markdown rendering of it."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from bench.machine import MachineFacts
from bench.markdown import cell, number, signed_ms, table
from bench.outcome import HoldMeasurement, StartupSample
from bench.procs import StopOutcome
from bench.results import (
    BASELINE,
    BASELINES,
    CACHE_HIT,
    DIRECT,
    ECHO_POLLER,
    ECHO_SCENARIO,
    RELAY,
    SIM_SCENARIO,
    START_SCENARIO,
    STREAMS_SCENARIO,
    SUBJECT,
    TRACED,
    UNRECORDED,
    WORKERS_SCENARIO,
    AddedLatency,
    Measurement,
    Ratio,
    RunConfig,
    Summary,
)
from bench.sections import start_section, streams_section, workers_section
from bench.targets import (
    Goal,
    goal_lines,
    goals_table,
    reference,
    reference_lines,
    reference_notes,
    unrecorded_levels,
)
from bench.tracing import TracingCost, figure_lines, traced_levels, tracing_section
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
    # The sim scenario's latency of omnirelay over the relay's and over the direct call's.
    added_latencies: Sequence[AddedLatency]
    holds: Sequence[HoldMeasurement]
    startups: Sequence[StartupSample]
    # Why a scenario was not measured, by scenario.
    skipped: dict[str, str]
    goals: Sequence[Goal]
    failures: Sequence[str]
    # Measurements whose figures are suspect though nothing failed (a busy machine).
    warnings: Sequence[str]
    # From the start of the run to the report.
    wall_s: float
    # The echo scenario's tracing figure (omnirelay traced / omnirelay, and the spans exported); None
    # when the run did not measure it.
    tracing: TracingCost | None = None


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


def _ratio_name(r: Ratio) -> str:
    if r.scenario == SIM_SCENARIO:
        # `relay_` (omnirelay over the direct client) keeps the name it had before the bare relay.
        return f"{'relay_' if r.baseline == DIRECT else 'vs_relay_'}{r.mode}"
    if r.scenario == WORKERS_SCENARIO:
        return f"workers_2_vs_1_{r.mode}"
    if r.subject == CACHE_HIT:
        return f"cache_hit_{r.mode}"
    if r.baseline == UNRECORDED:
        return f"recorded_vs_unrecorded_{r.mode}"
    if r.baseline == ECHO_POLLER:
        return f"vs_echo_poller_{r.mode}"
    if r.subject == TRACED:
        return f"traced_vs_untraced_{r.mode}"
    return r.mode


def ratio_lines(ratios: Sequence[Ratio]) -> list[str]:
    """Lines a script can grep for: `RATIO unary c=64: 0.42` (omnirelay / echo), `RATIO cache_hit_unary
    c=64: 0.9` (omnirelay's cache hits / echo), `RATIO recorded_vs_unrecorded_unary c=64: 0.97`
    (omnirelay / omnirelay with usage recording off), `RATIO vs_echo_poller_unary c=64: 0.62`
    (omnirelay / the echo server with the same gRPC socket threads), `RATIO traced_vs_untraced_unary
    c=64: 0.85` (omnirelay with tracing on / omnirelay), `RATIO vs_relay_unary c=1: 0.8` (omnirelay /
    bare relay), `RATIO relay_stream c=64: 0.35` (omnirelay / direct client), `RATIO
    workers_2_vs_1_unary c=64: 1.6`."""
    return [f"RATIO {_ratio_name(r)} c={r.concurrency}: {number(r.of_medians)}" for r in ratios]


def added_latency_lines(added: Sequence[AddedLatency]) -> list[str]:
    """Lines a script can grep for (unary calls): `ADDED_LATENCY_VS_RELAY c=1 p50_ms=0.25 p99_ms=0.80`
    (omnirelay - bare relay) and `ADDED_LATENCY c=1 p50_ms=0.85 p99_ms=2.10` (omnirelay - direct)."""
    return [
        f"ADDED_LATENCY{'_VS_RELAY' if a.baseline == RELAY else ''} c={a.concurrency} "
        f"p50_ms={a.p50_ms:.2f} p99_ms={a.p99_ms:.2f}"
        for a in sorted(added, key=lambda a: a.baseline != RELAY)
        if a.mode == "unary"
    ]


def _stops(stops: Sequence[StopOutcome]) -> str:
    """`name exit 0`, once per distinct outcome (the start scenario starts omnirelay several times)."""
    counts: dict[str, int] = {}
    for s in stops:
        text = f"{s.name} exit {s.returncode}{' (killed after SIGTERM timed out)' if s.killed else ''}"
        counts[text] = counts.get(text, 0) + 1
    return ", ".join(f"{text} (x{n})" if n > 1 else text for text, n in counts.items())


def _header(report: Report) -> list[str]:
    config, machine = report.config, report.machine
    pinning = (
        f"servers on CPU {','.join(map(str, config.server_cpus))}, "
        f"load generator on CPU {','.join(map(str, config.loadgen_cpus))}"
        if config.server_cpus
        else "not pinned (fewer than 2 cores)"
    )
    stops = _stops(report.stops)
    levels = f"concurrency {','.join(map(str, config.concurrency))}"
    cache_levels = [c for c in config.concurrency if c in config.cache_concurrency]
    if ECHO_SCENARIO not in config.scenarios or "unary" not in config.modes or CACHE_HIT in report.skipped:
        cache_levels = []
    if cache_levels:
        levels += f" (cache hits: {','.join(map(str, cache_levels))})"
    if ECHO_SCENARIO in config.scenarios and (unrecorded := unrecorded_levels(config)):
        levels += f" (unrecorded: {','.join(map(str, unrecorded))})"
    traced = traced_levels(config) if TRACED not in report.skipped else ()
    if ECHO_SCENARIO in config.scenarios and traced:
        levels += f" (traced: {','.join(map(str, traced))})"
    if SIM_SCENARIO in config.scenarios:
        levels += f" (sim: {','.join(map(str, config.sim_concurrency))})"
    if WORKERS_SCENARIO in config.scenarios:
        levels += f" (workers: {config.workers_concurrency} over {config.workers_channels} channels)"
    return [
        f"# omnirelay benchmark, {report.started_utc}",
        "",
        *table(
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
                    f"measured again up to {config.retries} time(s) when other load disturbed it, "
                    f"{config.patience_s:g} s of waiting and measuring again in all",
                ),
                ("servers", stops or "none started"),
                ("wall time", f"{round(report.wall_s) // 60} min {round(report.wall_s) % 60} s"),
            ],
        ),
        "",
        "Each figure is the median over the repeats, with [min-max] when they differ. "
        "c is the number of calls in flight. CPU figures are shares of one core over the window: "
        "the server process, its core whoever used it (more than the server means other load), "
        "and the load generator (near 100% means the figure is the load generator's limit).",
    ]


def _ratio_table(ratios: Sequence[Ratio]) -> list[str]:
    return table(
        ("mode", "c", "ratio of medians", "per-repeat range"),
        "lrrr",
        [
            (
                r.mode,
                str(r.concurrency),
                number(r.of_medians),
                f"{number(r.low)}-{number(r.high)}" if r.low != r.high else number(r.low),
            )
            for r in ratios
        ],
    )


def _sizes_table(summaries: Sequence[Summary]) -> list[str]:
    sizes: dict[str, dict[str, Summary]] = {}
    for s in summaries:
        sizes.setdefault(s.target, {}).setdefault(s.mode, s)
    return table(
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


def _lead(s: Summary, streams: bool = False) -> tuple[str, ...]:
    """The cells every throughput table starts with: who, at what concurrency, how fast."""
    rate = (cell(s.rate), cell(s.calls_per_s)) if streams else (cell(s.rate),)
    return (s.target, str(s.concurrency), *rate, cell(s.latency_p50_ms), cell(s.latency_p99_ms))


def _load(s: Summary, server_cpu: tuple[str, ...]) -> tuple[str, ...]:
    """The cells every throughput table ends with: the server's CPU columns, its core, the client."""
    return (*server_cpu, cell(s.server_core_busy, "percent"), cell(s.loadgen_cpu, "percent"))


def _echo_sections(report: Report) -> list[str]:
    summaries = [s for s in report.summaries if s.scenario == ECHO_SCENARIO]
    ratios = [
        r
        for r in report.ratios
        if r.scenario == ECHO_SCENARIO and r.subject == SUBJECT and r.baseline == BASELINE
    ]
    by_mode = {mode: [s for s in summaries if s.mode == mode] for mode in report.config.modes}
    out: list[str] = []
    if "unary" in by_mode:
        out += ["", f"## Unary `Complete` (max_tokens {UNARY_MAX_TOKENS})", ""]
        out += table(
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
                (*_lead(s), str(s.errors), *_load(s, (cell(s.server_cpu, "percent"),)))
                for s in by_mode["unary"]
            ],
        )
    if "stream" in by_mode:
        out += [
            "",
            f"## Streaming `StreamComplete` (max_tokens {STREAM_MAX_TOKENS}: {STREAM_EVENTS} events)",
            "",
        ]
        out += table(
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
                    *_lead(s, streams=True),
                    cell(s.ttfm_p50_ms),
                    str(s.errors),
                    *_load(s, (cell(s.server_cpu, "percent"),)),
                )
                for s in by_mode["stream"]
            ],
        )
    if ratios:
        out += ["", "## omnirelay / echo (calls/s unary, messages/s streaming)", ""]
        out += _ratio_table(ratios)
    out += _cache_section(report)
    out += _same_io_section(report)
    out += _recording_section(report)
    out += tracing_section(report.tracing, report.skipped.get(TRACED, ""))
    if summaries:
        out += ["", "## Answer sizes (one call, serialized protobuf)", ""]
        out += _sizes_table(summaries)
    return out


def _cache_section(report: Report) -> list[str]:
    ratios = [r for r in report.ratios if r.scenario == ECHO_SCENARIO and r.subject == CACHE_HIT]
    hits = [s for s in report.summaries if s.scenario == ECHO_SCENARIO and s.target == CACHE_HIT]
    skipped = report.skipped.get(CACHE_HIT, "")
    if not (ratios or hits or skipped):
        return []
    out = ["", f"## Cache hits / echo (`{CACHE_HIT}`, unary calls/s)", ""]
    if skipped:
        return [*out, skipped]
    out += [
        f"`{CACHE_HIT}`: the same omnirelay server as `{SUBJECT}`, called with the same unary request "
        "plus `temperature` 0, which its response cache (in memory, on by default) stores: the load "
        "generator's probe fills the cache and must then be answered from it, and every measured call "
        "must come back with `route.cache` HIT (any other counts as an error). A hit skips routing "
        "and the provider; the answer has the uncached one's tokens (sizes under Answer sizes). "
        f"Measured interleaved with `echo` and `{SUBJECT}`; its rows are in the unary table above.",
        "",
    ]
    out += _ratio_table(ratios)
    return out


def _echo_section(report: Report, baseline: str, heading: str, text: str) -> list[str]:
    """A section for omnirelay over one of the echo scenario's other servers, when it was measured."""
    ratios = [r for r in report.ratios if r.scenario == ECHO_SCENARIO and r.baseline == baseline]
    if not ratios:
        return []
    return ["", heading, "", text, "", *_ratio_table(ratios)]


def _same_io_section(report: Report) -> list[str]:
    return _echo_section(
        report,
        ECHO_POLLER,
        f"## {SUBJECT} / echo with the same gRPC I/O (`{ECHO_POLLER}`, unary calls/s)",
        f"`{ECHO_POLLER}`: a second bare echo server, the same as `echo` but with gRPC's threads set "
        "up as omnirelay's `serve` sets them by default: the socket work done on the thread that "
        "polls grpc.aio's completion queue (`GRPC_EXPERIMENTS=-event_engine_listener`, "
        '`server.grpc_io = "poller"`), and every thread but the event loop\'s under SCHED_BATCH '
        "(`server.helper_threads = \"batch\"`); `echo` keeps grpcio's and the kernel's defaults. "
        f"The target above is judged against `echo`; this ratio is {SUBJECT}'s own cost with the "
        f"transport held equal. A figure, not a target. Measured next to `{SUBJECT}` in each repeat "
        "(ABBA); its rows are in the unary table above.",
    )


def _recording_section(report: Report) -> list[str]:
    return _echo_section(
        report,
        UNRECORDED,
        f"## Usage recording on / off (`{SUBJECT}` / `{UNRECORDED}`, unary calls/s)",
        f"`{UNRECORDED}`: a second omnirelay server, the same as `{SUBJECT}` but with usage recording "
        "off (`OMNIRELAY_USAGE__ENABLED=false`: no usage records, no budgets), on the same core. "
        f"`{SUBJECT}` leaves a usage record for every call, which its recorder writes to a SQLite "
        "ledger in batches (in a temporary directory). Measured next to "
        f"`{SUBJECT}` in each repeat (ABBA); its rows are in the unary table above. A ratio under 1 is "
        "what recording costs.",
    )


def _sim_cpu(s: Summary) -> tuple[str, str]:
    """The relay's (omnirelay's or the bare one's) and the simulator's CPU: the direct target's
    server is the simulator itself."""
    if s.target != DIRECT:
        return cell(s.server_cpu, "percent"), cell(s.upstream_cpu, "percent")
    return "n/a", cell(s.server_cpu, "percent")


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
        f"`omnirelay sim`. `{RELAY}`: a bare grpc.aio relay (bench/relay_server.py) answering the same "
        "calls with the same messages through one pooled httpx client, with no gateway logic: the "
        "floor for relaying over gRPC in Python, and the baseline omnirelay is judged against. "
        f"`{DIRECT}`: the load generator posting the same Chat Completions request to the simulator "
        "with httpx (one client and connection per worker), decoding the JSON answer or each SSE "
        "event. The simulator shares the servers' CPU with the relays: each target has one core for "
        "everything behind the client, the load generator the other. At c=1 the added latency is "
        "omnirelay's own time per call; at high c it is mostly queueing behind omnirelay's CPU cost. "
        "The simulator's record is emptied before each measurement.",
    ]
    if "unary" in by_mode:
        out += ["", f"### Unary (max_tokens {UNARY_MAX_TOKENS})", ""]
        out += table(
            (
                "target",
                "c",
                "calls/s",
                "p50 ms",
                "p99 ms",
                "errors",
                "relay CPU",
                "sim CPU",
                "server core busy",
                "loadgen CPU",
            ),
            "lrrrrrrrrr",
            [(*_lead(s), str(s.errors), *_load(s, _sim_cpu(s))) for s in by_mode["unary"]],
        )
    if "stream" in by_mode:
        out += [
            "",
            f"### Streaming (max_tokens {STREAM_MAX_TOKENS}: {STREAM_MAX_TOKENS} text deltas; "
            "events per stream under Answer sizes)",
            "",
        ]
        out += table(
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
                "relay CPU",
                "sim CPU",
                "server core busy",
                "loadgen CPU",
            ),
            "lrrrrrrrrrrrrr",
            [
                (
                    *_lead(s, streams=True),
                    cell(s.ttfm_p50_ms),
                    cell(s.ttft_p50_ms),
                    cell(s.ttft_p99_ms),
                    str(s.errors),
                    *_load(s, _sim_cpu(s)),
                )
                for s in by_mode["stream"]
            ],
        )
    if report.added_latencies:
        out += ["", f"### Added latency ({SUBJECT} - baseline, of the medians over repeats)", ""]
        out += table(
            (
                "baseline",
                "mode",
                "c",
                "of",
                f"{SUBJECT} p50 ms",
                "baseline p50 ms",
                "added p50 ms",
                "added p99 ms",
            ),
            "llrlrrrr",
            [
                (
                    a.baseline,
                    a.mode,
                    str(a.concurrency),
                    "whole call" if a.mode == "unary" else "first text",
                    number(a.subject_p50_ms),
                    number(a.baseline_p50_ms),
                    signed_ms(a.p50_ms),
                    signed_ms(a.p99_ms),
                )
                for a in report.added_latencies
            ],
        )
    for baseline in BASELINES[SIM_SCENARIO]:
        if against := [r for r in ratios if r.baseline == baseline]:
            out += ["", f"### {SUBJECT} / {baseline} (calls/s unary, messages/s streaming)", ""]
            out += _ratio_table(against)
    if summaries:
        out += [
            "",
            f"### Answer sizes (one call: {SUBJECT} and {RELAY} serialized protobuf, {DIRECT} HTTP body; "
            "stream events: gRPC messages or SSE data lines, [DONE] included)",
            "",
        ]
        out += _sizes_table(summaries)
    return out


def to_markdown(report: Report) -> str:
    out = _header(report)
    scenarios = report.config.scenarios
    if ECHO_SCENARIO in scenarios:
        out += _echo_sections(report)
    if SIM_SCENARIO in scenarios:
        out += _sim_sections(report)
    if STREAMS_SCENARIO in scenarios:
        out += streams_section(report.holds)
    if START_SCENARIO in scenarios:
        out += start_section(report.startups, report.config.warm_calls)
    if WORKERS_SCENARIO in scenarios:
        workers = [s for s in report.summaries if s.scenario == WORKERS_SCENARIO]
        ratios = [r for r in report.ratios if r.scenario == WORKERS_SCENARIO]
        out += workers_section(workers, ratios, report.skipped.get(WORKERS_SCENARIO, ""))
    ref = reference(report.summaries)
    if report.goals:
        out += ["", "## Targets", ""]
        out += goals_table(report.goals)
        if notes := reference_notes(ref):
            out += ["", *notes]
    if report.failures:
        out += ["", "## Failures", ""]
        # Continuation lines (a server's last output) indented to stay inside the list item.
        out += ["- " + failure.replace("\n", "\n  ") for failure in report.failures]
    if report.warnings:
        out += ["", "## Warnings", ""]
        out += [f"- {warning}" for warning in report.warnings]
    lines = [
        *ratio_lines(report.ratios),
        *added_latency_lines(report.added_latencies),
        *goal_lines(report.goals),
        *reference_lines(ref),
        *figure_lines(report.tracing),
        f"WALL_TIME s={report.wall_s:.0f}",
    ]
    out += ["", "```text", *lines, "```"]
    return "\n".join(out) + "\n"
