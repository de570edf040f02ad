"""The benchmark's usage-recording target: omnirelay / omnirelay with recording off, unary at c=64.

Its evaluation (PASS, FAIL, N/A), its report lines, and where the bench's omnirelay servers keep
their usage ledger and spill file.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.procs import ServerSpec
from bench.report import ratio_lines
from bench.results import (
    BASELINE,
    ECHO_POLLER,
    ECHO_SCENARIO,
    SUBJECT,
    UNRECORDED,
    Ratio,
    RunConfig,
    ratio,
)
from bench.scenarios import Launcher, usage_env
from bench.targets import FAIL, NOT_MEASURED, PASS, RECORDING_RATIO, Goal, evaluate, unrecorded_levels
from tests.bench_helpers import config, measured

GOAL = "recording_cost_unary_c64"


def recording(value: float, c: int = 64) -> Ratio:
    return Ratio(ECHO_SCENARIO, UNRECORDED, "unary", c, value, value, value, subject=SUBJECT)


def goal(run: RunConfig, ratios: list[Ratio]) -> Goal:
    goals = evaluate(run, ratios, [], [], [])
    return next(g for g in goals if g.name == GOAL)


@pytest.mark.parametrize("value", [1.02, 0.97, RECORDING_RATIO])
def test_recording_within_five_percent_passes(value: float) -> None:
    g = goal(config(), [recording(value)])
    assert g.status == PASS


def test_recording_costing_more_than_five_percent_fails() -> None:
    g = goal(config(), [recording(0.90)])
    assert (g.status, g.value) == (FAIL, "0.90")


def test_planned_but_not_measured_fails() -> None:
    # The unrecorded server did not start, or every measurement of it failed.
    g = goal(config(), [])
    assert (g.status, g.value) == (FAIL, "not measured")


def test_other_ratios_are_not_taken_for_it() -> None:
    # omnirelay / echo at c=64, and a recording ratio at another level.
    echo = Ratio(ECHO_SCENARIO, BASELINE, "unary", 64, 0.99, 0.99, 0.99)
    g = goal(config(), [echo, recording(0.99, c=16)])
    assert g.status == FAIL


@pytest.mark.parametrize(
    "changes",
    [
        {"concurrency": (1, 16)},
        {"modes": ("stream",)},
    ],
)
def test_not_measured_by_the_run_is_not_applicable(changes: dict[str, object]) -> None:
    run = config(**changes)
    assert unrecorded_levels(run) == ()
    g = goal(run, [])
    assert g.status == NOT_MEASURED


def test_quick_run_measures_it() -> None:
    # --quick: concurrency 64 only, one repeat.
    run = config(concurrency=(64,), repeats=1)
    assert unrecorded_levels(run) == (64,)
    assert goal(run, [recording(0.96)]).status == PASS


def test_without_the_echo_scenario_there_is_no_goal() -> None:
    goals = evaluate(config(scenarios=("start",)), [], [], [], [])
    assert GOAL not in {g.name for g in goals}


def test_ratio_of_omnirelay_over_unrecorded_and_its_line() -> None:
    measurements = [
        measured(SUBJECT, 0, 960.0),
        measured(UNRECORDED, 0, 1000.0),
        measured(UNRECORDED, 1, 1000.0),
        measured(SUBJECT, 1, 980.0),
    ]
    r = ratio(measurements, ECHO_SCENARIO, "unary", 64, baseline_name=UNRECORDED)
    assert r is not None
    assert (r.baseline, r.subject) == (UNRECORDED, SUBJECT)
    assert r.of_medians == pytest.approx(0.97)
    assert r.low == pytest.approx(0.96)
    assert r.high == pytest.approx(0.98)
    assert ratio_lines([r]) == ["RATIO recorded_vs_unrecorded_unary c=64: 0.97"]
    assert goal(config(), [r]).status == PASS


def test_omnirelay_over_the_echo_server_with_the_same_grpc_io_is_a_line_not_a_goal() -> None:
    measurements = [
        measured(ECHO_POLLER, 0, 4000.0),
        measured(SUBJECT, 0, 2400.0),
        measured(BASELINE, 0, 3600.0),
    ]
    r = ratio(measurements, ECHO_SCENARIO, "unary", 64, baseline_name=ECHO_POLLER)
    assert r is not None
    assert (r.baseline, r.subject) == (ECHO_POLLER, SUBJECT)
    assert r.of_medians == pytest.approx(0.6)
    assert ratio_lines([r]) == ["RATIO vs_echo_poller_unary c=64: 0.60"]
    # The targets stay against the bare echo server: this ratio is taken for none of them.
    echo = Ratio(ECHO_SCENARIO, BASELINE, "unary", 64, 0.67, 0.67, 0.67)
    goals = evaluate(config(), [echo, r], [], [], [])
    assert {g.value for g in goals if g.name == "unary_vs_echo_c64"} == {"0.67"}


def test_every_omnirelay_server_keeps_its_usage_files_in_the_data_directory(tmp_path: Path) -> None:
    launcher = Launcher(tmp_path / "logs", "stamp", None, 60.0, tmp_path / "repo", tmp_path / "data")
    spec = launcher.omnirelay("omnirelay-unrecorded", ["omnirelay", "serve"], (("A", "1"),))
    assert spec == ServerSpec(
        "omnirelay-unrecorded",
        ("omnirelay", "serve"),
        (("A", "1"), *usage_env(tmp_path / "data", "omnirelay-unrecorded")),
    )
    env = dict(spec.env)
    ledger = Path(env["OMNIRELAY_USAGE__SQLITE_PATH"])
    spill = Path(env["OMNIRELAY_USAGE__SPILL_PATH"])
    assert ledger.parent == spill.parent == tmp_path / "data"
    assert ledger != spill
    # Another server, other files.
    other = dict(launcher.omnirelay("omnirelay", ["omnirelay", "serve"]).env)
    assert other["OMNIRELAY_USAGE__SQLITE_PATH"] != str(ledger)
