"""The benchmark's tracing figure: omnirelay with tracing on / omnirelay (tracing off), unary at c=64.

The OTLP sink the traced server exports to, the servers the echo scenario starts for it (and where),
the figure (stated, not judged; an error when the sink received no spans), and its report lines.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from pathlib import Path
from unittest import mock

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2

from bench import report
from bench.otlp_sink import Sink, SinkCount, read_count, span_count, write_count
from bench.outcome import Outcome
from bench.procs import RunningServer, ServerSpec
from bench.results import (
    BASELINE,
    CACHE_HIT,
    ECHO_POLLER,
    ECHO_SCENARIO,
    SUBJECT,
    TARGETS,
    TRACED,
    UNRECORDED,
    Ratio,
    ratio,
)
from bench.scenarios import (
    ECHO_POLLER_SERVER,
    ECHO_SERVER,
    OMNIRELAY_SERVER,
    OMNIRELAY_TRACED_SERVER,
    OMNIRELAY_UNRECORDED_SERVER,
    OTLP_SINK_SERVER,
    Launcher,
    sink_count_path,
    start_targets,
    tracing_env,
)
from bench.targets import evaluate
from bench.tracing import (
    NAME,
    NO_SPANS,
    NOT_STARTED,
    disabled_path_ns,
    figure_lines,
    traced_levels,
    tracing_cost,
    tracing_section,
)
from omnirelay.config import load_settings
from tests.bench_helpers import config, measured, report_of, run_load_scenario


def traced(value: float, low: float | None = None, high: float | None = None, c: int = 64) -> Ratio:
    low = value if low is None else low
    high = value if high is None else high
    return Ratio(ECHO_SCENARIO, SUBJECT, "unary", c, value, low, high, subject=TRACED)


ECHO_RATIO = Ratio(ECHO_SCENARIO, BASELINE, "unary", 64, 0.62, 0.60, 0.64)
RECORDING_RATIO = Ratio(ECHO_SCENARIO, UNRECORDED, "unary", 64, 0.97, 0.96, 0.98)


# --- which runs measure it ---


def test_measured_at_c64_unary() -> None:
    assert traced_levels(config()) == (64,)
    assert traced_levels(config(concurrency=(64,), repeats=1)) == (64,)


@pytest.mark.parametrize("changes", [{"concurrency": (1, 16)}, {"modes": ("stream",)}])
def test_not_measured_without_unary_calls_at_c64(changes: dict[str, object]) -> None:
    run = config(**changes)
    assert traced_levels(run) == ()
    assert tracing_cost(run, [], SinkCount(10, 1)) is None


def test_without_the_echo_scenario_there_is_no_figure() -> None:
    assert tracing_cost(config(scenarios=("start",)), [], None) is None


def test_skipped_there_is_no_figure_and_the_section_says_why() -> None:
    why = "Tracing needs `omnirelay serve`; another command stands in for it: skipped."
    assert tracing_cost(config(), [], None, skipped=why) is None
    assert tracing_section(None, why)[-1] == why


def test_it_is_a_figure_not_a_target() -> None:
    goals = evaluate(config(), [traced(0.5), ECHO_RATIO, RECORDING_RATIO], [], [], [])
    assert NAME not in {g.name for g in goals}
    assert not any("trac" in g.name for g in goals)


def test_traced_is_an_echo_target_measured_next_to_omnirelay() -> None:
    assert TARGETS[ECHO_SCENARIO] == (BASELINE, ECHO_POLLER, SUBJECT, UNRECORDED, TRACED, CACHE_HIT)


# --- the figure ---


def test_figure_takes_the_traced_ratio_and_restates_omnirelay_over_echo() -> None:
    ratios = [ECHO_RATIO, RECORDING_RATIO, traced(0.99, c=16), traced(0.85, 0.83, 0.88)]
    cost = tracing_cost(config(), ratios, SinkCount(36_000, 70))
    assert cost is not None
    assert (cost.name, cost.concurrency, cost.spans, cost.exports, cost.error) == (NAME, 64, 36_000, 70, "")
    assert cost.on_vs_off == traced(0.85, 0.83, 0.88)
    assert cost.off_vs_echo == ECHO_RATIO
    assert figure_lines(cost) == ["FIGURE tracing_cost_unary_c64: 0.85 (spans=36000)"]


def test_no_spans_is_an_error_of_the_figure() -> None:
    cost = tracing_cost(config(), [traced(0.9), ECHO_RATIO], SinkCount(0, 0))
    assert cost is not None
    assert cost.error == NO_SPANS
    assert figure_lines(cost) == [f"FIGURE {NAME}: ERROR ({NO_SPANS})"]
    rows = [line for line in tracing_section(cost, "") if line.startswith("| ")]
    assert f"0.90, ERROR: {NO_SPANS}" in rows[2]
    assert f"0 in 0 exports, ERROR: {NO_SPANS}" in rows[3]


def test_traced_server_not_started_is_an_error_of_the_figure() -> None:
    cost = tracing_cost(config(), [ECHO_RATIO], None)
    assert cost is not None
    assert (cost.on_vs_off, cost.error) == (None, NOT_STARTED)
    assert figure_lines(cost) == [f"FIGURE {NAME}: ERROR ({NOT_STARTED})"]


def test_the_disabled_path_is_stated_as_a_share_of_a_call_against_the_noise() -> None:
    # 100 ns per call at 1,000 calls/s: 0.01% of a call; omnirelay / echo spreads 0.60-0.64 of 0.62.
    cost = tracing_cost(config(), [ECHO_RATIO, traced(0.85)], SinkCount(10, 1), "", 100.0, 1000.0)
    assert cost is not None
    assert cost.disabled_share == pytest.approx(1e-4)
    assert cost.noise == pytest.approx(0.04 / 0.62)
    row = [line for line in tracing_section(cost, "") if line.startswith("| tracing off: its per-call")]
    assert row == [
        "| tracing off: its per-call work (timed in the runner), as a share of an `omnirelay` call: "
        "within noise | 64 | 100 ns = 0.010% | 6.5% spread of `omnirelay` / `echo` |"
    ]
    assert (
        figure_lines(cost)[1] == "FIGURE tracing_off_share_c64: 0.010% of a call (spread 6.5%: within noise)"
    )


def test_a_disabled_path_costlier_than_the_noise_is_called_out() -> None:
    # 100 us per call at 1,000 calls/s: a tenth of every call, more than the 6.5% spread.
    cost = tracing_cost(config(), [ECHO_RATIO, traced(0.85)], SinkCount(10, 1), "", 100_000.0, 1000.0)
    assert cost is not None
    assert (
        figure_lines(cost)[1] == "FIGURE tracing_off_share_c64: 10.000% of a call (spread 6.5%: ABOVE NOISE)"
    )


def test_a_single_repeat_has_no_spread_to_judge_the_share_by() -> None:
    one = Ratio(ECHO_SCENARIO, BASELINE, "unary", 64, 0.62, 0.62, 0.62)
    cost = tracing_cost(config(repeats=1), [one, traced(0.85)], SinkCount(10, 1), "", 100.0, 1000.0)
    assert cost is not None
    assert cost.noise is None
    assert figure_lines(cost)[1] == (
        "FIGURE tracing_off_share_c64: 0.010% of a call (spread n/a: no spread to compare with (one repeat))"
    )


def test_without_the_disabled_timing_there_is_no_share() -> None:
    cost = tracing_cost(config(), [ECHO_RATIO, traced(0.85)], SinkCount(10, 1))
    assert cost is not None
    assert cost.disabled_share is None
    assert len(figure_lines(cost)) == 1


def test_the_disabled_path_is_timed_with_the_servers_own_function() -> None:
    ns = disabled_path_ns(number=1_000, repeats=2)
    assert 0 < ns < 1e6


def test_section_rows_state_the_cost_the_spans_and_the_disabled_path() -> None:
    cost = tracing_cost(config(), [ECHO_RATIO, traced(0.85, 0.83, 0.88)], SinkCount(36_000, 70))
    lines = tracing_section(cost, "")
    rows = [line for line in lines if line.startswith("| ")]
    assert rows[0] == "| figure | c | value | per-repeat range |"
    assert rows[2] == f"| `{NAME}`: `traced` / `omnirelay` | 64 | 0.85 | 0.83-0.88 |"
    assert (
        rows[3]
        == "| spans the OTLP sink received (warm-ups and probes included) |  | 36,000 in 70 exports |  |"
    )
    assert rows[4] == "| tracing off: `omnirelay` / `echo` (as in the table above) | 64 | 0.62 | 0.60-0.64 |"
    assert "Tracing is off in `omnirelay`" in lines[-1]


def test_ratio_of_traced_over_omnirelay_and_its_line() -> None:
    measurements = [
        measured(SUBJECT, 0, 1000.0),
        measured(TRACED, 0, 800.0),
        measured(TRACED, 1, 880.0),
        measured(SUBJECT, 1, 1000.0),
    ]
    r = ratio(measurements, ECHO_SCENARIO, "unary", 64, SUBJECT, subject_name=TRACED)
    assert r is not None
    assert (r.baseline, r.subject) == (SUBJECT, TRACED)
    assert r.of_medians == pytest.approx(0.84)
    assert r.low == pytest.approx(0.80)
    assert r.high == pytest.approx(0.88)
    assert report.ratio_lines([r]) == ["RATIO traced_vs_untraced_unary c=64: 0.84"]


def test_report_has_the_section_the_line_and_the_json_figure() -> None:
    run = config(scenarios=(ECHO_SCENARIO,), modes=("unary",), concurrency=(64,))
    same_io = Ratio(ECHO_SCENARIO, ECHO_POLLER, "unary", 64, 0.62, 0.6, 0.65, subject=SUBJECT)
    ratios = [ECHO_RATIO, traced(0.85, 0.83, 0.88), same_io]
    result = report_of(run, ratios=ratios, tracing=tracing_cost(run, ratios, SinkCount(36_000, 70)))
    markdown = report.to_markdown(result)
    assert "## Tracing on / off (`traced` / `omnirelay`, unary calls/s)" in markdown
    assert "(traced: 64)" in markdown
    assert "FIGURE tracing_cost_unary_c64: 0.85 (spans=36000)" in markdown
    assert "RATIO traced_vs_untraced_unary c=64: 0.85" in markdown
    # Beside it, omnirelay over the echo server whose gRPC does its socket work where omnirelay's does.
    assert "## omnirelay / echo with the same gRPC I/O (`echo-poller`, unary calls/s)" in markdown
    assert "| unary | 64 | 0.62 | 0.60-0.65 |" in markdown
    assert "RATIO vs_echo_poller_unary c=64: 0.62" in markdown
    figure = json.loads(report.to_json(result))["tracing"]
    assert (figure["name"], figure["spans"], figure["error"]) == (NAME, 36_000, "")
    assert figure["on_vs_off"]["of_medians"] == 0.85


# --- the servers ---


def test_tracing_env_traces_every_call_to_the_sink() -> None:
    assert dict(tracing_env("127.0.0.1:4317")) == {
        "OMNIRELAY_TRACING__ENABLED": "true",
        "OMNIRELAY_TRACING__EXPORTER": "otlp_grpc",
        "OMNIRELAY_TRACING__ENDPOINT": "http://127.0.0.1:4317",
        "OMNIRELAY_TRACING__SAMPLE_RATIO": "1.0",
    }


def test_omnirelay_reads_the_tracing_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in tracing_env("127.0.0.1:4317"):
        monkeypatch.setenv(key, value)
    tracing = load_settings("development").tracing
    assert (tracing.enabled, tracing.exporter, tracing.endpoint, tracing.sample_ratio) == (
        True,
        "otlp_grpc",
        "http://127.0.0.1:4317",
        1.0,
    )


def test_echo_scenario_starts_the_sink_then_the_traced_server(tmp_path: Path) -> None:
    """The sink before the traced server (so it stops after it), on the load generator's CPU; the traced
    server like omnirelay, on the servers' CPU, with its own usage files and the sink's address."""
    launched: list[tuple[ServerSpec, frozenset[int] | None]] = []

    def start_server(
        spec: ServerSpec,
        log_path: Path,
        cpus: frozenset[int] | None,
        timeout_s: float,
        cwd: Path,
        poll_s: float,
    ) -> RunningServer:
        launched.append((spec, cpus))
        process = mock.Mock(spec=subprocess.Popen)
        return RunningServer(spec, process, f"127.0.0.1:{5000 + len(launched)}", log_path)

    launcher = Launcher(
        tmp_path,
        "stamp",
        frozenset({0}),
        60.0,
        tmp_path,
        tmp_path / "data",
        frozenset({0, 1}),
        frozenset({1}),
    )
    argv: dict[str, Sequence[str]] = {
        ECHO_SERVER: ("echo",),
        OMNIRELAY_SERVER: ("omnirelay", "serve"),
        OTLP_SINK_SERVER: ("sink",),
    }
    started: list[RunningServer] = []
    failures: list[str] = []
    with mock.patch("bench.scenarios.start_server", start_server):
        targets = start_targets(ECHO_SCENARIO, argv, launcher, failures, started, (64,), (64,), (64,))
    assert failures == []
    names = [spec.name for spec, _ in launched]
    assert names == [
        ECHO_SERVER,
        ECHO_POLLER_SERVER,
        "omnirelay",
        OMNIRELAY_UNRECORDED_SERVER,
        OTLP_SINK_SERVER,
        OMNIRELAY_TRACED_SERVER,
    ]
    assert [s.spec.name for s in started] == names
    assert [t.name for t in targets] == [BASELINE, ECHO_POLLER, SUBJECT, UNRECORDED, TRACED, CACHE_HIT]
    # The second echo server: the same command, gRPC's socket work on its polling thread and its
    # helper threads under SCHED_BATCH, unary at 64.
    (echo_spec, _), (poller_spec, poller_cpus) = launched[0], launched[1]
    assert poller_spec.argv == echo_spec.argv == ("echo",)
    assert echo_spec.env == ()
    assert poller_spec.env == (
        ("GRPC_EXPERIMENTS", "-event_engine_listener"),
        ("BENCH_HELPER_THREADS", "batch"),
    )
    assert poller_cpus == frozenset({0})
    assert (targets[1].modes, targets[1].levels) == (("unary",), (64,))
    (sink, sink_cpus), (traced_spec, traced_cpus) = launched[4], launched[5]
    assert sink.argv == ("sink", "--count-file", str(sink_count_path(tmp_path / "data")))
    assert sink_cpus == frozenset({1})
    assert traced_cpus == frozenset({0})
    assert traced_spec.argv == ("omnirelay", "serve")
    env = dict(traced_spec.env)
    assert env["OMNIRELAY_TRACING__ENDPOINT"] == f"http://{started[4].address}"
    assert env["OMNIRELAY_USAGE__SQLITE_PATH"] == str(tmp_path / "data" / "omnirelay-traced-usage.db")
    target = targets[4]
    assert (target.modes, target.levels, target.server.spec.name) == (
        ("unary",),
        (64,),
        OMNIRELAY_TRACED_SERVER,
    )


def test_without_traced_levels_neither_is_started(tmp_path: Path) -> None:
    launched: list[str] = []

    def start_server(spec: ServerSpec, log_path: Path, *args: object) -> RunningServer:
        launched.append(spec.name)
        return RunningServer(spec, mock.Mock(spec=subprocess.Popen), "127.0.0.1:1", log_path)

    launcher = Launcher(tmp_path, "stamp", None, 60.0, tmp_path, tmp_path / "data")
    argv = {ECHO_SERVER: ("echo",), OMNIRELAY_SERVER: ("omnirelay", "serve"), OTLP_SINK_SERVER: ("sink",)}
    with mock.patch("bench.scenarios.start_server", start_server):
        start_targets(ECHO_SCENARIO, argv, launcher, [], [], (64,), (64,), ())
    assert OTLP_SINK_SERVER not in launched
    assert OMNIRELAY_TRACED_SERVER not in launched


# --- the sink ---


def request(*spans_per_scope: int) -> trace_service_pb2.ExportTraceServiceRequest:
    scopes = [trace_pb2.ScopeSpans(spans=[trace_pb2.Span(name="s")] * n) for n in spans_per_scope]
    return trace_service_pb2.ExportTraceServiceRequest(
        resource_spans=[
            trace_pb2.ResourceSpans(scope_spans=scopes[:1]),
            trace_pb2.ResourceSpans(scope_spans=scopes[1:]),
        ]
    )


def test_span_count_covers_every_resource_and_scope() -> None:
    assert span_count(request(3, 2, 1)) == 6
    assert span_count(trace_service_pb2.ExportTraceServiceRequest()) == 0


def test_count_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "count.json"
    assert read_count(path) is None
    write_count(path, SinkCount(12, 3))
    assert read_count(path) == SinkCount(12, 3)
    assert [p.name for p in tmp_path.iterdir()] == ["count.json"]
    path.write_text("{")
    assert read_count(path) is None


async def test_sink_accepts_exports_and_counts_their_spans(tmp_path: Path) -> None:
    path = tmp_path / "count.json"
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Sink(path), server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = trace_service_pb2_grpc.TraceServiceStub(channel)  # type: ignore[no-untyped-call]
            first = await stub.Export(request(3, 2))
            await stub.Export(request(4))
    finally:
        await server.stop(None)
    assert first == trace_service_pb2.ExportTraceServiceResponse()
    assert read_count(path) == SinkCount(9, 2)


# --- the runner ---


def run_echo(
    tmp_path: Path, omnirelay: Sequence[str], sink: SinkCount | None
) -> tuple[Outcome, list[object]]:
    """The echo scenario's runner with the servers stood in for: what it gathered, and the traced
    levels it asked for."""
    asked: list[object] = []
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    # A count left by an earlier start: the runner must not take it for this one's.
    write_count(sink_count_path(data_dir), SinkCount(7, 7))

    def starts(started: list[RunningServer], levels: tuple[object, ...]) -> list[object]:
        asked.append(levels[-1])
        if levels[-1]:
            spec = ServerSpec(OMNIRELAY_TRACED_SERVER, ("omnirelay", "serve"))
            started.append(RunningServer(spec, mock.Mock(pid=1), "127.0.0.1:1", tmp_path))
            if sink is not None:
                # What this start's sink received, written as its traced server stops.
                write_count(sink_count_path(data_dir), sink)
        return []

    run_config = config(scenarios=(ECHO_SCENARIO,))
    out = run_load_scenario(tmp_path, data_dir, run_config, {OMNIRELAY_SERVER: tuple(omnirelay)}, starts)
    return out, asked


def test_runner_reads_the_sink_once_the_traced_server_stopped(tmp_path: Path) -> None:
    out, asked = run_echo(tmp_path, ("omnirelay", "serve"), SinkCount(300, 2))
    # The servers are started afresh for each of the 3 repeats; the spans of all three are counted.
    assert asked == [(64,)] * 3
    assert out.sink == SinkCount(900, 6)
    assert out.failures == []


def test_runner_fails_the_run_when_no_span_arrived(tmp_path: Path) -> None:
    out, _ = run_echo(tmp_path, ("omnirelay", "serve"), None)
    assert out.sink == SinkCount(0, 0)
    # Said once, though no start's sink received any (and the stale count was not taken).
    assert out.failures == [f"{OMNIRELAY_TRACED_SERVER}: {NO_SPANS}"]


def test_runner_skips_tracing_when_another_command_stands_in(tmp_path: Path) -> None:
    out, asked = run_echo(tmp_path, ("python", "-m", "bench.echo_server"), None)
    assert asked == [()] * 3
    assert out.sink is None
    assert "Tracing needs `omnirelay serve`" in out.skipped[TRACED]
    assert out.failures == []
