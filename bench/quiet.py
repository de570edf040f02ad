"""Waiting for a quiet machine before a measurement.

On a shared machine (a developer's, while tests run) other processes take CPU from the server or
the load generator mid-measurement and make one target look slower than the other. Between
measurements the servers idle, so a busy machine then is someone else's load.
"""

from __future__ import annotations

import time
from typing import Final

SAMPLE_S: Final = 0.5


def _busy_and_total() -> tuple[int, int]:
    """Task and steal ticks, and all ticks, of every CPU since boot (the aggregate "cpu" line)."""
    with open("/proc/stat") as stat:
        ticks = [int(value) for value in stat.readline().split()[1:9]]
    return ticks[0] + ticks[1] + ticks[2] + ticks[7], sum(ticks)


def machine_busy(sample_s: float = SAMPLE_S) -> float:
    """Share of all CPUs busy over `sample_s` (0..1); 0 when /proc/stat cannot be read."""
    try:
        busy0, total0 = _busy_and_total()
        time.sleep(sample_s)
        busy1, total1 = _busy_and_total()
    except OSError:
        return 0.0
    return (busy1 - busy0) / (total1 - total0) if total1 > total0 else 0.0


def wait_for_quiet(threshold: float, max_wait_s: float) -> float:
    """Sleep until the machine's busy share drops under `threshold` or `max_wait_s` passes.

    Returns the last busy share seen, so the caller can tell a timeout from a quiet machine.
    """
    deadline = time.monotonic() + max_wait_s
    busy = machine_busy()
    while busy >= threshold and time.monotonic() < deadline:
        busy = machine_busy()
    return busy


class Patience:
    """Seconds a run may still spend beyond its plan: waiting for a quiet machine, measuring again.

    On a machine others use, each measurement could otherwise wait and retry up to its own limit,
    and a busy hour would stretch the run by as much; with a budget the run's length stays bounded
    and what could not be measured quietly is flagged instead.
    """

    def __init__(self, budget_s: float) -> None:
        self.left = budget_s

    def spend(self, seconds: float) -> None:
        self.left = max(0.0, self.left - seconds)

    def wait_for_quiet(self, threshold: float, max_wait_s: float) -> float:
        """`wait_for_quiet` within what is left; the first sample is part of the plan, not spent."""
        started = time.monotonic()
        busy = wait_for_quiet(threshold, min(max_wait_s, self.left))
        self.spend(time.monotonic() - started - SAMPLE_S)
        return busy
