"""Helper threads wait for the event loop instead of interrupting it (``server.helper_threads``).

All of omnirelay's Python runs on one thread, the event loop's. The rest of the
process is helpers: the thread polling grpc.aio's completion queue (with
``server.grpc_io = "poller"`` it also reads and writes the sockets), gRPC's
EventEngine and timer threads, the ledger's SQLite thread, uvloop's workers.
Where they share a core with the loop (one-core containers, pinned processes,
a busy host), each wake-up of a helper preempts the loop in the middle of a
call: about eight times a call at c=64 by /proc's switch counts, and the call
comes back to cold caches every time. Under ``SCHED_BATCH`` a waking thread
does not preempt the running one; the helper runs when the loop waits or its
time slice ends, and then finds several events to handle at once. A thread's
share of the CPU is unchanged (same nice value), and on an idle core it runs at
once, so a lightly loaded server answers as fast as before.

``serve`` applies it once it listens, when every helper exists; threads started
later by a helper inherit its policy, threads started later by the loop do not.
Linux only: elsewhere nothing changes, and ``serve`` says so.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

CHOICES: Final = ("batch", "normal")
TASKS: Final = Path("/proc/self/task")


@dataclass(frozen=True, slots=True)
class Deprioritized:
    """What ``deprioritize`` did: threads now under SCHED_BATCH, and threads it could not set."""

    batched: int
    refused: int  # the kernel said no (a policy or limit of the host), or the thread had ended


def supported() -> bool:
    return hasattr(os, "sched_setscheduler") and hasattr(os, "SCHED_BATCH") and TASKS.is_dir()


def other_threads(keep: int, tasks: Path = TASKS) -> list[int]:
    """This process's thread ids, but ``keep`` (the event loop's native id)."""
    return [tid for tid in (int(entry.name) for entry in tasks.iterdir()) if tid != keep]


def deprioritize(tids: Iterable[int]) -> Deprioritized:
    """Put each thread under SCHED_BATCH (its nice value kept)."""
    batched = refused = 0
    param = os.sched_param(0)
    for tid in tids:
        try:
            os.sched_setscheduler(tid, os.SCHED_BATCH, param)
        except OSError:  # ended since it was listed, or the host forbids the policy
            refused += 1
        else:
            batched += 1
    return Deprioritized(batched, refused)


def apply(choice: str, loop_thread: int) -> Deprioritized | None:
    """``server.helper_threads``: with "batch", every thread but ``loop_thread`` yields to it.

    None when nothing was done: "normal", or a platform without the policy.
    """
    if choice not in CHOICES:
        raise ValueError(f"helper_threads {choice!r}: expected one of {', '.join(CHOICES)}")
    if choice == "normal" or not supported():
        return None
    return deprioritize(other_threads(loop_thread))
