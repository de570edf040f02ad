"""The running event loop and the current task, found without a system call.

On Python 3.11, ``asyncio.get_running_loop()`` (and ``asyncio.current_task()`` without a loop,
which calls it) makes a ``getpid`` system call every time, to notice a fork: 0.3-0.7 us on the VMs
the bench ran on, and the request path asks for the loop a few times a call (the default deadline,
the caller's deadline, the reaper's task), and a coalesced stream once per token. Here each thread
remembers the loop it last found running; while that loop still runs, it is the thread's running
loop (a loop runs in one thread at a time), so asking costs an attribute read and ``is_running()``.
Python 3.12 dropped the system call; this then only saves a little.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any


class _Remembered(threading.local):
    loop: asyncio.AbstractEventLoop | None = None


_here = _Remembered()


def running_loop() -> asyncio.AbstractEventLoop:
    """``asyncio.get_running_loop()``; raises RuntimeError the same way when none runs here."""
    loop = _here.loop
    if loop is not None and loop.is_running():
        return loop
    loop = _here.loop = asyncio.get_running_loop()
    return loop


def current_task() -> asyncio.Task[Any] | None:
    """``asyncio.current_task()``, for the loop running on this thread."""
    return asyncio.current_task(running_loop())
