"""Formatting of the report's figures and tables (Markdown)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from bench.stats import Spread


def number(value: float) -> str:
    if not math.isfinite(value):
        return "n/a"
    if value >= 100:
        return f"{value:.0f}"
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


def percent(value: float) -> str:
    return f"{value * 100:.0f}%" if math.isfinite(value) and value >= 0 else "n/a"


def signed_ms(value: float) -> str:
    """A latency difference: two decimals and a sign, whatever its size (it may be negative)."""
    return f"{value:+.2f}" if math.isfinite(value) else "n/a"


def cell(spread: Spread, fmt: str = "number") -> str:
    show = percent if fmt == "percent" else number
    if spread.low == spread.high or not math.isfinite(spread.low):
        return show(spread.median)
    return f"{show(spread.median)} [{show(spread.low)}-{show(spread.high)}]"


def table(header: Sequence[str], align: str, rows: Sequence[Sequence[str]]) -> list[str]:
    """`align` has one letter per column: l(eft) or r(ight)."""
    rule = ["---:" if a == "r" else "---" for a in align]
    return [f"| {' | '.join(cells)} |" for cells in (header, rule, *rows)]
