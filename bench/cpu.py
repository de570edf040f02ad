"""CPU use over a measurement window, read from /proc (Linux).

Besides the CPU time of the server and of the load generator, it reads how busy the server's core
was as a whole: on a shared machine the excess over the server's own time is load from other
processes (or the hypervisor), which lowers the server's figures without being the server's fault.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import dataclass
from typing import Final

CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")
UNKNOWN: Final = -1.0


@dataclass(frozen=True, slots=True)
class CpuUse:
    """Shares of one core over the window; UNKNOWN (-1) when it could not be read."""

    server: float
    # Task and steal time of the server's core(s), whoever used them.
    server_core: float
    loadgen: float
    # A process behind the server on its core (the simulator behind omnirelay).
    upstream: float = UNKNOWN


@dataclass(frozen=True, slots=True)
class _Sample:
    wall_ns: int
    own_ns: int
    server_ticks: int
    upstream_ticks: int
    core_busy_ticks: int
    core_total_ticks: int


def process_ticks(pid: int) -> int:
    """utime + stime of a process (all its threads), in clock ticks; -1 when it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            # The command name (field 2) may hold spaces: split after its closing parenthesis.
            fields = stat.read().rpartition(")")[2].split()
    except OSError:
        return -1
    return int(fields[11]) + int(fields[12])


def tree_ticks(pid: int) -> int:
    """utime + stime of a process and all its live descendants (a server and its workers); -1 if gone.

    Workers' time does not show in their parent's figures until they exit (and are waited for), so
    a server of several processes is measured as the sum of its tree.
    """
    children: dict[int, list[int]] = {}
    ticks: dict[int, int] = {}
    try:
        pids = [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return -1
    for other in pids:
        try:
            with open(f"/proc/{other}/stat") as stat:
                fields = stat.read().rpartition(")")[2].split()
        except OSError:
            continue
        # After the command: state, ppid, ..., utime (12th field), stime (13th).
        children.setdefault(int(fields[1]), []).append(other)
        ticks[other] = int(fields[11]) + int(fields[12])
    if pid not in ticks:
        return -1
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        total += ticks.get(current, 0)
        todo += children.get(current, [])
    return total


def core_ticks(cpus: frozenset[int]) -> tuple[int, int]:
    """Busy and total clock ticks of these CPUs since boot; (-1, -1) when /proc/stat cannot be read."""
    names = {f"cpu{cpu}" for cpu in cpus}
    busy = total = 0
    try:
        with open("/proc/stat") as stat:
            for line in stat:
                name, _, rest = line.partition(" ")
                if name in names:
                    # user nice system idle iowait irq softirq steal (guest time is inside user).
                    ticks = [int(value) for value in rest.split()[:8]]
                    total += sum(ticks)
                    # Task time and steal (the hypervisor ran something else). Interrupt time is left
                    # out: the kernel charges part of it to the running task, the server included,
                    # so counting it would report the server's own network work as someone else's.
                    busy += ticks[0] + ticks[1] + ticks[2] + ticks[7]
    except OSError:
        return -1, -1
    return busy, total


class CpuWindow:
    """Samples at the window's start and end: `run` sleeps through a scheduled window, or `begin`
    and `end` bracket one whose end is not known in advance."""

    def __init__(self, server_pid: int, upstream_pid: int = 0, server_tree: bool = False) -> None:
        self._server_pid = server_pid
        self._upstream_pid = upstream_pid
        # The server is a parent of workers: measure it with its descendants.
        self._server_ticks = tree_ticks if server_tree else process_ticks
        cpus: frozenset[int] = frozenset()
        if server_pid:
            with contextlib.suppress(OSError):
                cpus = frozenset(os.sched_getaffinity(server_pid))
        self._server_cpus = cpus
        self._first: _Sample | None = None

    def _sample(self) -> _Sample:
        busy, total = core_ticks(self._server_cpus) if self._server_cpus else (-1, -1)
        return _Sample(
            wall_ns=time.perf_counter_ns(),
            own_ns=time.process_time_ns(),
            server_ticks=self._server_ticks(self._server_pid) if self._server_pid else -1,
            upstream_ticks=process_ticks(self._upstream_pid) if self._upstream_pid else -1,
            core_busy_ticks=busy,
            core_total_ticks=total,
        )

    async def run(self, start_ns: int, end_ns: int) -> CpuUse:
        await asyncio.sleep(max(0.0, (start_ns - time.perf_counter_ns()) / 1e9))
        self.begin()
        await asyncio.sleep(max(0.0, (end_ns - time.perf_counter_ns()) / 1e9))
        return self.end()

    def begin(self) -> None:
        self._first = self._sample()

    def end(self) -> CpuUse:
        """CPU use since `begin`."""
        first, last = self._first, self._sample()
        if first is None:
            raise RuntimeError("CpuWindow.end before begin")
        wall_s = (last.wall_ns - first.wall_ns) / 1e9
        server = _share(first.server_ticks, last.server_ticks, wall_s)
        server_core = UNKNOWN
        if first.core_total_ticks >= 0 and last.core_total_ticks > first.core_total_ticks:
            # Busy over total ticks is already a share per core; scale back to "cores' worth".
            share = (last.core_busy_ticks - first.core_busy_ticks) / (
                last.core_total_ticks - first.core_total_ticks
            )
            server_core = share * len(self._server_cpus)
        return CpuUse(
            server=server,
            server_core=server_core,
            loadgen=(last.own_ns - first.own_ns) / 1e9 / wall_s,
            upstream=_share(first.upstream_ticks, last.upstream_ticks, wall_s),
        )


def _share(first_ticks: int, last_ticks: int, wall_s: float) -> float:
    """A process's CPU time over the window as a share of one core; UNKNOWN when it was not read."""
    if first_ticks < 0 or last_ticks < 0:
        return UNKNOWN
    return (last_ticks - first_ticks) / CLOCK_TICKS / wall_s
