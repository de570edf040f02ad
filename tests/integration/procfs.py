"""What Linux's /proc shows of the tests' child processes: their threads and their children."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class ThreadStat:
    tid: int
    name: str
    fields: tuple[str, ...]  # ``stat`` after the command name: field 3 (state) first

    def field(self, number: int) -> int:
        """``stat`` field ``number`` as proc(5) numbers them (14 utime, 15 stime, 41 policy)."""
        return int(self.fields[number - 3])


def thread_stats(pid: int) -> list[ThreadStat]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            # The command name may hold spaces and parentheses: the fields follow its last ")".
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:  # a thread that ended while we looked
            continue
        found.append(ThreadStat(int(task.name), name, tuple(fields)))
    return found


def state_and_parent(pid: int | str) -> tuple[str, int] | None:
    """A process's state letter and parent pid; None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    state, ppid = stat[stat.rindex(")") + 2 :].split()[:2]  # the command name may hold spaces
    return state, int(ppid)


def children(parent: int) -> set[int]:
    """Live (not zombie) child processes of ``parent``."""
    found = set()
    for entry in os.listdir("/proc"):
        info = state_and_parent(entry) if entry.isdigit() else None
        if info is not None and info[1] == parent and info[0] != "Z":
            found.add(int(entry))
    return found
