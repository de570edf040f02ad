"""The echo scenario's tracing figure: omnirelay with tracing on over omnirelay with it off.

`tracing_cost_unary_c64`: `omnirelay-traced` (every call sampled, its spans batched and exported
over OTLP/gRPC to bench.otlp_sink) over `omnirelay` (tracing off, the default), unary calls/s at
c=64, measured next to each other in every repeat. A figure the report states, not a target it
judges; it holds only when the sink received spans (none: the export did not work, an error).
Beside it stands `omnirelay` / `echo` at the same level, the ratio that carries the disabled path's
cost (tracing off builds no interceptor and no span), and that cost itself: the per-call work
tracing leaves on the path when it is off, timed in the runner, as a share of an `omnirelay` call,
against the per-repeat spread of `omnirelay` / `echo` (`FIGURE tracing_off_share_c64`).
"""

from __future__ import annotations

import timeit
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from bench.markdown import number, table
from bench.otlp_sink import SinkCount
from bench.results import BASELINE, ECHO_SCENARIO, SUBJECT, TRACED, Ratio, RunConfig
from bench.targets import RATIO_C, echo_ratio, unrecorded_levels

NAME: Final = f"tracing_cost_unary_c{RATIO_C}"
NO_SPANS: Final = "the OTLP sink received no spans: export did not work"
NOT_STARTED: Final = "not measured: the traced server or its OTLP sink did not start"


@dataclass(frozen=True, slots=True)
class TracingCost:
    name: str
    concurrency: int
    # omnirelay-traced / omnirelay, unary calls/s (the median ratio and the paired repeats' range);
    # None when no measurement of either succeeded.
    on_vs_off: Ratio | None
    # omnirelay (tracing off) / echo at the same level, as in the omnirelay / echo table.
    off_vs_echo: Ratio | None
    # What the OTLP sink received over the scenario: warm-ups, probes and the traced server's last
    # export as it stopped included.
    spans: int
    exports: int
    # Why the figure does not hold ("" when it does).
    error: str = ""
    # Tracing off: what its leftover per-call work costs (nanoseconds, timed in the runner) and
    # `omnirelay`'s unary calls/s at the same level (median); None when not measured.
    disabled_ns: float | None = None
    off_rate: float | None = None

    @property
    def disabled_share(self) -> float | None:
        """The disabled path's share of one `omnirelay` call's time."""
        if self.disabled_ns is None or not self.off_rate:
            return None
        return self.disabled_ns * self.off_rate / 1e9

    @property
    def noise(self) -> float | None:
        """The per-repeat spread of `omnirelay` / `echo`, relative to its median; None with a single
        repeat (no spread to speak of)."""
        r = self.off_vs_echo
        if r is None or not r.of_medians or r.high == r.low:
            return None
        return (r.high - r.low) / r.of_medians


def disabled_path_ns(number: int = 200_000, repeats: int = 5) -> float:
    """Times what a call does for tracing when tracing is off: the router asks for the current call
    trace (a context variable, None) and checks it. The call around it is counted too, so the
    figure errs high. The rest (no interceptor, no span, no exporter) costs nothing to time."""
    from omnirelay.telemetry import spans

    def per_call() -> None:
        if spans.current() is not None:
            raise AssertionError("a call trace outside a traced call")

    return min(timeit.repeat(per_call, number=number, repeat=repeats)) / number * 1e9


# Measured where the unrecorded server is, beside `omnirelay` in the same repeats.
traced_levels: Final = unrecorded_levels


def tracing_cost(
    config: RunConfig,
    ratios: Sequence[Ratio],
    sink: SinkCount | None,
    skipped: str = "",
    disabled_ns: float | None = None,
    off_rate: float | None = None,
) -> TracingCost | None:
    """The figure, when the run planned it (echo scenario, unary calls at c=64) and did not skip it.

    `sink`: what the sink received; None when the traced server was not started. `disabled_ns`,
    `off_rate`: for the disabled path's share (see TracingCost).
    """
    if ECHO_SCENARIO not in config.scenarios or not traced_levels(config) or skipped:
        return None
    if sink is None:
        error = NOT_STARTED
    elif sink.spans <= 0:
        error = NO_SPANS
    else:
        error = ""
    return TracingCost(
        name=NAME,
        concurrency=RATIO_C,
        on_vs_off=echo_ratio(ratios, "unary", TRACED, SUBJECT),
        off_vs_echo=echo_ratio(ratios, "unary", SUBJECT, BASELINE),
        spans=sink.spans if sink else 0,
        exports=sink.exports if sink else 0,
        error=error,
        disabled_ns=disabled_ns,
        off_rate=off_rate,
    )


def _range(r: Ratio | None) -> str:
    if r is None:
        return "n/a"
    return f"{number(r.low)}-{number(r.high)}" if r.low != r.high else number(r.low)


def tracing_section(cost: TracingCost | None, skipped: str) -> list[str]:
    if cost is None and not skipped:
        return []
    out = ["", f"## Tracing on / off (`{TRACED}` / `{SUBJECT}`, unary calls/s)", ""]
    if skipped:
        return [*out, skipped]
    assert cost is not None
    out += [
        f"`{TRACED}`: a third omnirelay server, the same as `{SUBJECT}` on the same core, but with "
        "tracing on: every call sampled (`OMNIRELAY_TRACING__SAMPLE_RATIO=1.0`), its spans batched and "
        "exported over OTLP/gRPC (`OMNIRELAY_TRACING__EXPORTER=otlp_grpc`) to a minimal collector the "
        "bench runs on the load generator's core (bench/otlp_sink.py), which accepts and counts them. "
        f"Measured next to `{SUBJECT}` in each repeat (ABBA); its rows are in the unary table above. "
        "A figure, not a target: under 1 is what tracing every call costs.",
        "",
    ]
    on = cost.on_vs_off
    value = number(on.of_medians) if on else "not measured"
    spans = f"{cost.spans:,} in {cost.exports:,} exports"
    if cost.error:
        value += f", ERROR: {cost.error}"
        spans += f", ERROR: {cost.error}"
    off = cost.off_vs_echo
    out += table(
        ("figure", "c", "value", "per-repeat range"),
        "lrrr",
        [
            (f"`{cost.name}`: `{TRACED}` / `{SUBJECT}`", str(cost.concurrency), value, _range(on)),
            ("spans the OTLP sink received (warm-ups and probes included)", "", spans, ""),
            (
                f"tracing off: `{SUBJECT}` / `echo` (as in the table above)",
                str(cost.concurrency),
                number(off.of_medians) if off else "not measured",
                _range(off),
            ),
            *_disabled_rows(cost),
        ],
    )
    out += [
        "",
        f"Tracing is off in `{SUBJECT}` (the default: no interceptor, no span), so its unary ratio to "
        f"`echo` at c={cost.concurrency} includes whatever the disabled path costs. To see that cost, "
        "compare this ratio with a run of a commit before tracing on the same machine: a difference "
        "within the per-repeat ranges is noise.",
    ]
    return out


def _disabled_rows(cost: TracingCost) -> list[tuple[str, str, str, str]]:
    share, noise = cost.disabled_share, cost.noise
    if share is None or cost.disabled_ns is None:
        return []
    spread = f"{noise:.1%} spread of `{SUBJECT}` / `echo`" if noise is not None else "spread not measured"
    return [
        (
            "tracing off: its per-call work (timed in the runner), as a share of an "
            f"`{SUBJECT}` call: {_verdict(share, noise)}",
            str(cost.concurrency),
            f"{cost.disabled_ns:.0f} ns = {share:.3%}",
            spread,
        )
    ]


def _verdict(share: float, noise: float | None) -> str:
    if noise is None:
        return "no spread to compare with (one repeat)"
    return "within noise" if share < noise else "ABOVE NOISE"


def figure_lines(cost: TracingCost | None) -> list[str]:
    """Lines a script can grep for: `FIGURE tracing_cost_unary_c64: 0.85 (spans=35120)`, or
    `FIGURE tracing_cost_unary_c64: ERROR (…)` when the sink received no spans."""
    if cost is None:
        return []
    if cost.error:
        return [f"FIGURE {cost.name}: ERROR ({cost.error})"]
    value = number(cost.on_vs_off.of_medians) if cost.on_vs_off else "n/a"
    lines = [f"FIGURE {cost.name}: {value} (spans={cost.spans})"]
    share = cost.disabled_share
    if share is not None:
        noise = f"{cost.noise:.1%}" if cost.noise is not None else "n/a"
        lines.append(
            f"FIGURE tracing_off_share_c{cost.concurrency}: {share:.3%} of a call "
            f"(spread {noise}: {_verdict(share, cost.noise)})"
        )
    return lines
