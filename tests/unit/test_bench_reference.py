"""The report's reference check: how fast echo ran against the machine the targets were set on.

The ratios against echo read higher on a machine whose gRPC path is slower than the reference's
(issue 4's "roughly 5,000" unary calls/s), so the report says where the run's echo stood.
"""

from __future__ import annotations

import math

import pytest

from bench import report
from bench.results import BASELINE, ECHO_SCENARIO, SUBJECT, Measurement, Summary, summarize
from bench.targets import (
    REFERENCE_ECHO_UNARY,
    REFERENCE_SHARE,
    Goal,
    Reference,
    reference,
    reference_lines,
    reference_notes,
)
from tests.bench_helpers import config, measured, report_of


def echo_runs(*rates: float, concurrency: int = 64) -> list[Measurement]:
    runs = [measured(BASELINE, i, rate) for i, rate in enumerate(rates)]
    return [Measurement(m.scenario, m.target, m.mode, concurrency, m.repeat, m.result) for m in runs]


def summaries_of(
    measurements: list[Measurement], concurrency: int = 64, target: str = BASELINE
) -> list[Summary]:
    found = summarize(measurements, ECHO_SCENARIO, target, "unary", concurrency)
    return [found] if found is not None else []


def test_the_echo_median_at_c64_is_the_reading() -> None:
    ref = reference(summaries_of(echo_runs(2_100.0, 2_300.0, 2_200.0)))
    assert ref.echo_unary == pytest.approx(2_200.0)
    assert ref.share == pytest.approx(2_200.0 / REFERENCE_ECHO_UNARY)


def test_other_levels_and_targets_are_not_taken_for_it() -> None:
    at_16 = summaries_of(echo_runs(9_000.0, concurrency=16), concurrency=16)
    omnirelay = summaries_of([measured(SUBJECT, 0, 9_000.0)], target=SUBJECT)
    assert at_16
    assert omnirelay
    ref = reference([*at_16, *omnirelay])
    assert math.isnan(ref.echo_unary)
    assert reference_notes(ref) == []
    assert reference_lines(ref) == []


def test_a_slow_echo_is_called_slower_and_the_note_says_what_that_means() -> None:
    ref = Reference(2_200.0)
    assert ref.slower
    (note,) = reference_notes(ref)
    assert note.startswith("echo answered 2,200 unary calls/s at c=64, 44% of the 5,000")
    assert "a PASS here is not one the reference would give" in note
    assert reference_lines(ref) == ["REFERENCE echo_unary_c64: 2200 (0.44 of 5000, slower)"]


@pytest.mark.parametrize("rate", [REFERENCE_ECHO_UNARY * REFERENCE_SHARE, 4_800.0, 6_500.0])
def test_an_echo_near_or_above_the_reference_is_comparable(rate: float) -> None:
    ref = Reference(rate)
    assert not ref.slower
    (note,) = reference_notes(ref)
    assert "slower" not in note
    assert "not one the reference" not in note
    assert reference_lines(ref)[0].endswith("comparable)")


def test_the_report_puts_the_note_under_the_targets_and_the_line_with_the_others() -> None:
    run = config(scenarios=(ECHO_SCENARIO,), modes=("unary",), concurrency=(64,))
    summaries = summaries_of(echo_runs(2_000.0, 2_200.0, 2_400.0))
    goal = Goal("unary_vs_echo_c64", "omnirelay / echo >= 0.7", "0.95", "PASS")
    result = report_of(run, summaries=summaries, goals=[goal])
    markdown = report.to_markdown(result)
    targets = markdown.split("## Targets", 1)[1]
    assert "| unary_vs_echo_c64 |" in targets
    assert "echo answered 2,200 unary calls/s at c=64, 44% of the 5,000" in targets
    assert "REFERENCE echo_unary_c64: 2200 (0.44 of 5000, slower)" in markdown
