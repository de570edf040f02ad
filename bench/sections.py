"""Markdown sections of the `streams`, `start` and `workers` scenarios."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from bench.holdload import cpu_per_delta_us
from bench.markdown import cell, number, percent, table
from bench.memory import megabytes
from bench.outcome import HoldMeasurement, StartupSample
from bench.results import Ratio, Summary
from bench.stats import Spread
from bench.workload import HOLD_LOCAL_TOKENS_PER_SECOND, HOLD_MAX_TOKENS, HOLD_SIM_MODEL


def _mb(kib: float) -> str:
    return number(megabytes(kib)) if kib >= 0 else "n/a"


def _per_stream_kb(m: HoldMeasurement) -> str:
    r = m.result
    if r is None or r.peak_open <= 0 or r.hwm_kb < 0 or r.rss_before_kb < 0:
        return "n/a"
    return number((r.hwm_kb - r.rss_before_kb) * 1024 / 1000 / r.peak_open)


def streams_section(holds: Sequence[HoldMeasurement]) -> list[str]:
    out = [
        "",
        "## Many streams open at once (`streams`)",
        "",
        f"Every stream asks for {HOLD_MAX_TOKENS} tokens and is read to its end over 128 client "
        "channels (128 connections, fewer than 100 streams on each), with at most 100 streams being "
        "opened at any moment. `local`: omnirelay's local provider at "
        f"{HOLD_LOCAL_TOKENS_PER_SECOND} tokens/s after a 10 s wait for the first token, so that "
        "all streams are open before any relays tokens (opening 10,000 takes the core several "
        f"seconds). `sim`: through the simulator, `{HOLD_SIM_MODEL}` (200 ms between tokens), one "
        "upstream connection per stream (the provider's pool raised to match); `relay` is the bare "
        "relay with a pool as large. A stream is open from its first event (route_started, sent "
        "before the upstream answers) to its last. Figures cover the whole run, first call to last "
        "end: *CPU per delta* is the server's CPU time over the text deltas relayed, opening and "
        "ending the streams included; *unhindered s* is how long one stream lasts when nothing slows "
        "it, against which *run s* shows how much a saturated server stretched them. RSS: the "
        "server's resident memory before the first call (connections open), and its peak (VmHWM); "
        "*kB per stream* is the difference over the streams open at the peak. MB = 10^6 bytes.",
        "",
    ]
    out += table(
        (
            "case",
            "server",
            "streams",
            "peak open",
            "all open for s",
            "ramp s",
            "unhindered s",
            "run s",
            "server CPU",
            "CPU per delta us",
            "sim CPU",
            "RSS before MB",
            "RSS peak MB",
            "kB per stream",
            "errors",
        ),
        "llrrrrrrrrrrrrr",
        [_hold_row(m) for m in holds],
    )
    return out


def _hold_row(m: HoldMeasurement) -> tuple[str, ...]:
    r = m.result
    if r is None:
        return (m.case, m.target, "n/a", *(["n/a"] * 11), f"failed: {m.failure.splitlines()[0]}")
    return (
        m.case,
        m.target,
        str(r.streams),
        str(r.peak_open),
        number(r.all_open_s) if math.isfinite(r.ramp_s) else "never all",
        number(r.ramp_s),
        number(m.nominal_s),
        number(r.run_s),
        percent(r.server_cpu),
        number(cpu_per_delta_us(r)),
        percent(r.upstream_cpu),
        _mb(r.rss_before_kb),
        _mb(r.hwm_kb),
        _per_stream_kb(m),
        str(r.errors),
    )


def start_section(startups: Sequence[StartupSample], warm_calls: int) -> list[str]:
    out = [
        "",
        "## Cold start and idle memory (`start`)",
        "",
        f"{len(startups)} starts of `omnirelay serve` (a new process each, pinned like the other "
        "servers; the files it imports are in the page cache). Times from the spawn; the first call "
        "is made by a new client, which connects then. Memory: VmRSS at the serving line, and "
        f"after {warm_calls} calls (unary and streaming alternating) and 1 s idle. "
        "Median [min-max] over the starts; MB = 10^6 bytes.",
        "",
    ]
    if not startups:
        return [*out, "No start succeeded."]

    def spread(values: Sequence[float]) -> str:
        return cell(Spread.of(values))

    out += table(
        ("figure", "value"),
        "lr",
        [
            ("spawn to serving line, s", spread([s.serving_s for s in startups])),
            ("spawn to first `Complete` answered, s", spread([s.first_call_s for s in startups])),
            ("RSS at the serving line, MB", spread([megabytes(s.rss_started_kb) for s in startups])),
            (f"RSS after {warm_calls} calls, idle, MB", spread([megabytes(s.rss_warm_kb) for s in startups])),
        ],
    )
    return out


def median_first_call_s(startups: Sequence[StartupSample]) -> float:
    return statistics.median(s.first_call_s for s in startups) if startups else math.nan


def median_warm_rss_mb(startups: Sequence[StartupSample]) -> float:
    values = [megabytes(s.rss_warm_kb) for s in startups if s.rss_warm_kb >= 0]
    return statistics.median(values) if values else math.nan


def workers_section(summaries: Sequence[Summary], ratios: Sequence[Ratio], skipped: str) -> list[str]:
    out = ["", "## Worker processes (`workers`)", ""]
    if skipped:
        return [*out, skipped]
    out += [
        "Unary `Complete` through omnirelay's local provider served by `omnirelay serve --workers N` "
        "(N processes on one port, SO_REUSEPORT, under a supervising parent). Nothing is pinned in "
        "this scenario: two workers need both cores, so the workers and the load generator share "
        "the machine's two cores, and the figures say what the machine as a whole serves. Server "
        "CPU is that of the parent and its workers together, in cores (200% = both); other load "
        "cannot be told apart here, so these measurements are not repeated when the machine is busy.",
        "",
    ]
    out += table(
        ("target", "c", "calls/s", "p50 ms", "p99 ms", "errors", "server CPU", "loadgen CPU"),
        "lrrrrrrr",
        [
            (
                s.target,
                str(s.concurrency),
                cell(s.rate),
                cell(s.latency_p50_ms),
                cell(s.latency_p99_ms),
                str(s.errors),
                cell(s.server_cpu, "percent"),
                cell(s.loadgen_cpu, "percent"),
            )
            for s in summaries
        ],
    )
    for r in ratios:
        spread = f" (per-repeat {number(r.low)}-{number(r.high)})" if r.low != r.high else ""
        out += ["", f"2 workers / 1 worker, calls/s at c={r.concurrency}: {number(r.of_medians)}{spread}"]
    return out
