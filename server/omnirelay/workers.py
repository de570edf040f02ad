"""``omnirelay serve --workers N``: N server processes on one port, and the parent that keeps them.

Each worker is the ordinary ``serve`` command (its own event loop, providers and
graceful shutdown) started as ``python -m omnirelay serve --supervised-fd FD``
and bound with SO_REUSEPORT, so the kernel spreads connections across them. The
parent serves nothing: it starts the workers, prints the one serving line once
every worker listens, restarts workers that die, and on SIGTERM/SIGINT forwards
SIGTERM to each and waits for their graceful shutdown.

Parent and worker share one socketpair per worker. The worker writes ``ready``
on it once it listens; the parent reads EOF on it when the worker exits, and the
worker reads EOF when the parent exits, even by SIGKILL, so workers never outlive
their parent.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from omnirelay.config import Settings

log = logging.getLogger("omnirelay.workers")

READY = b"ready\n"
# A worker crash loop (bad upstream, bug at start) must end, not spin: give up
# after this many unexpected exits within the window.
MAX_CRASHES = 5
CRASH_WINDOW_SECONDS = 30.0
STOP_MARGIN_SECONDS = 5.0


def report_ready(fd: int, loop: asyncio.AbstractEventLoop, on_parent_gone: Callable[[], None]) -> None:
    """Worker side, once listening: tell the parent, then call ``on_parent_gone`` if its end closes."""
    lifeline = socket.socket(fileno=fd)
    try:
        lifeline.sendall(READY)
    except OSError:  # the parent is already gone
        lifeline.close()
        on_parent_gone()
        return
    lifeline.setblocking(False)

    def readable() -> None:
        try:
            data = lifeline.recv(64)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            # The parent died without stopping us (SIGKILL, OOM): nobody would restart or stop
            # this worker, and it would keep the port. Shut down gracefully instead.
            log.warning("supervisor went away; shutting down")
            loop.remove_reader(lifeline)
            on_parent_gone()

    loop.add_reader(lifeline, readable)


def reserve_port(host: str, port: int) -> socket.socket:
    """Bind (not listen) a SO_REUSEPORT socket: resolves port 0 and holds the port while workers start.

    Not listening, it gets no connections; SO_REUSEPORT lets the workers bind beside it,
    and a plain server already on the port makes this fail early.
    """
    family, kind, proto, _, address = socket.getaddrinfo(
        host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    holder = socket.socket(family, kind, proto)
    try:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind(address)
    except OSError:
        holder.close()
        raise
    return holder


class Supervisor:
    def __init__(self, settings: Settings, host: str, port: int, workers: int) -> None:
        self.settings = settings
        self.host = host
        self.port = port
        self.count = workers
        self.procs: dict[int, asyncio.subprocess.Process] = {}
        self.crashes: collections.deque[float] = collections.deque()
        self.stopping = asyncio.Event()
        self.failed = False
        self.ready = [asyncio.Event() for _ in range(workers)]

    async def run(self, holder: socket.socket) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        slots = [asyncio.create_task(self._keep(slot)) for slot in range(self.count)]
        all_ready = asyncio.gather(*(event.wait() for event in self.ready))
        stopped = asyncio.create_task(self.stopping.wait())
        first: list[asyncio.Future[Any]] = [all_ready, stopped]
        await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
        holder.close()  # every worker listens (or we are stopping): the workers hold the port now
        if not self.stopping.is_set():
            address = f"{self.host}:{self.port}"
            print(
                f"omnirelay serving on {address} profile={self.settings.profile} workers={self.count}",
                flush=True,
            )
            await stopped
        all_ready.cancel()
        await self._stop_all(slots)
        codes = [p.returncode for p in self.procs.values()]
        return 1 if self.failed or any(code != 0 for code in codes) else 0

    async def _keep(self, slot: int) -> None:
        try:
            await self._keep_running(slot)
        except Exception:
            # e.g. spawning failed (out of fds or memory): a slot that silently stopped would
            # leave the parent waiting forever for a worker that never comes.
            log.exception("supervising worker %d failed", slot)
            self._give_up(f"cannot run worker {slot}")

    async def _keep_running(self, slot: int) -> None:
        """Run worker ``slot``; restart it when it dies, unless stopping or crashing too often."""
        while not self.stopping.is_set():
            proc, lifeline = await self._spawn(slot)
            self.procs[slot] = proc
            if self.stopping.is_set():  # stopped while spawning: _stop_all did not see this one
                _signal(proc, signal.SIGTERM)
            reader, writer = await asyncio.open_connection(sock=lifeline)
            if await reader.readline() == READY:
                log.info("worker %d (pid %d) listening", slot, proc.pid)
                self.ready[slot].set()
                await reader.read()  # EOF: the worker exited
            code = await proc.wait()
            writer.close()
            if self.stopping.is_set():
                return
            log.error("worker %d (pid %d) exited unexpectedly with %s", slot, proc.pid, _describe(code))
            if not self.ready[slot].is_set():
                # Failing before ever listening (port taken, provider cannot start) will not fix
                # itself by retrying: fail fast, as a single server would.
                return self._give_up(f"worker {slot} could not start")
            now = time.monotonic()
            self.crashes.append(now)
            while self.crashes[0] < now - CRASH_WINDOW_SECONDS:
                self.crashes.popleft()
            if len(self.crashes) >= MAX_CRASHES:
                return self._give_up(f"{len(self.crashes)} worker crashes within {CRASH_WINDOW_SECONDS:g}s")
            del self.procs[slot]  # replaced below: its exit code no longer decides ours
            delay = min(0.25 * 2 ** (len(self.crashes) - 1), 5.0)
            log.warning("restarting worker %d in %.2fs", slot, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), delay)

    def _give_up(self, why: str) -> None:
        log.error("giving up: %s", why)
        self.failed = True
        self.stopping.set()

    async def _spawn(self, slot: int) -> tuple[asyncio.subprocess.Process, socket.socket]:
        ours, theirs = socket.socketpair()
        # Each worker has its own metrics (Prometheus scrapes each as a target): port + slot.
        metrics_port = self.settings.metrics.port
        env = {**os.environ, "OMNIRELAY_METRICS__PORT": str(metrics_port + slot if metrics_port else 0)}
        argv = [sys.executable, "-m", "omnirelay", "serve", "--host", self.host, "--port", str(self.port)]
        argv += ["--profile", self.settings.profile, "--supervised-fd", str(theirs.fileno())]
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                pass_fds=(theirs.fileno(),),
                # Only the parent decides when workers stop: a terminal's Ctrl-C reaches the
                # parent alone, which then stops each worker once, gracefully.
                start_new_session=True,
                env=env,
                # The parent's stdout carries exactly one line that tools parse.
                stdout=sys.stderr.fileno(),
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()  # the child has its own copy; keeping ours would hide the child's exit
        return proc, ours

    async def _stop_all(self, slots: list[asyncio.Task[None]]) -> None:
        """SIGTERM every worker, wait for their graceful shutdown, SIGKILL whatever outlives it."""
        log.info("stopping %d workers", len(self.procs))
        for proc in self.procs.values():
            _signal(proc, signal.SIGTERM)
        s = self.settings.server
        budget = s.shutdown_drain_seconds + s.shutdown_grace_seconds + STOP_MARGIN_SECONDS
        _, late = await asyncio.wait(slots, timeout=budget)
        if late:
            log.error("workers still running after %.1fs; killing them", budget)
            for proc in self.procs.values():
                _signal(proc, signal.SIGKILL)
            await asyncio.wait(slots)


def _signal(proc: asyncio.subprocess.Process, sig: signal.Signals) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):  # exited, not yet reaped
            proc.send_signal(sig)


def _describe(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-code).name}"
    return f"code {code}"


def supervise(settings: Settings, host: str, port: int, workers: int) -> int:
    """Parent side of ``serve --workers N``: returns the exit code."""
    try:
        holder = reserve_port(host, port)
    except OSError as exc:
        print(f"omnirelay: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
        return 1
    port = holder.getsockname()[1]
    return asyncio.run(Supervisor(settings, host, port, workers).run(holder))
