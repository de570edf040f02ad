"""A process's memory, read from /proc (Linux)."""

from __future__ import annotations

from typing import Final

UNKNOWN: Final = -1
KB: Final = 1024
MB: Final = 1_000_000


def status_kb(pid: int, field: str) -> int:
    """A kB figure of /proc/PID/status (VmRSS: resident now, VmHWM: peak resident); -1 if unread."""
    prefix = f"{field}:"
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(prefix):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return UNKNOWN
    return UNKNOWN


def megabytes(kib: float) -> float:
    """kB as /proc counts them (KiB) in MB (10^6 bytes), the unit of the report's memory figures."""
    return kib * KB / MB
