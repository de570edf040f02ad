"""Server processes under test: start pinned to a CPU set, wait for the serving line, always stop."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

# omnirelay ("omnirelay serving on H:P profile=..."), its simulator ("omnirelay sim serving on H:P")
# and the echo server print such a line; anchored at a line start so that a log line mentioning
# the address does not count.
SERVING_LINE: Final = re.compile(rb"^[\w-]+(?: [\w-]+)? serving on ([^\s:]+):(\d+)", re.MULTILINE)
POLL_S: Final = 0.05


class ServerStartError(RuntimeError):
    """The server exited or did not print its serving line in time."""


@dataclass(frozen=True, slots=True)
class ServerSpec:
    name: str
    argv: tuple[str, ...]
    # Set in the server's environment on top of the runner's (omnirelay's settings ride in it).
    env: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class RunningServer:
    spec: ServerSpec
    process: subprocess.Popen[bytes]
    address: str
    log_path: Path


@dataclass(frozen=True, slots=True)
class StopOutcome:
    name: str
    returncode: int
    # True when SIGTERM was not enough within the grace period.
    killed: bool


def pin_to(cpus: frozenset[int] | None) -> Callable[[], None] | None:
    """A preexec_fn that pins the child (and whatever it forks) to `cpus` before it runs anything."""
    if cpus is None:
        return None

    def pin() -> None:
        os.sched_setaffinity(0, cpus)

    return pin


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        text = ""
    return "\n".join(text.splitlines()[-lines:]) or "(no output)"


def start_server(
    spec: ServerSpec,
    log_path: Path,
    cpus: frozenset[int] | None,
    timeout_s: float,
    cwd: Path,
    poll_s: float = POLL_S,
) -> RunningServer:
    """Start the server and return once it prints its serving line; stop it again on any failure.

    Its output goes to a file, not a pipe: a server that logs every call would block on a full pipe
    nobody reads during the measurement. `poll_s`: how often the log is read for that line (the
    start scenario times it).
    """
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            spec.argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env={**os.environ, **dict(spec.env)} if spec.env else None,
            preexec_fn=pin_to(cpus),
            # Its own process group: a Ctrl-C of the runner does not reach it, stop_server does,
            # and a forced stop can reach the children it may have forked.
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            match = SERVING_LINE.search(log_path.read_bytes())
            if match:
                address = f"{match[1].decode()}:{match[2].decode()}"
                return RunningServer(spec, process, address, log_path)
            if process.poll() is not None:
                raise ServerStartError(
                    f"{spec.name} exited with status {process.returncode} before serving:\n"
                    f"{_log_tail(log_path)}"
                )
            if time.monotonic() > deadline:
                raise ServerStartError(
                    f"{spec.name} printed no serving line within {timeout_s:.0f} s:\n{_log_tail(log_path)}"
                )
            time.sleep(poll_s)
    except BaseException:
        _stop(spec.name, process, grace_s=5.0)
        raise


def _stop(name: str, process: subprocess.Popen[bytes], grace_s: float) -> StopOutcome:
    killed = False
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            killed = True
            _kill_group(process.pid)
            process.wait()
    # The group is the one this module created for the server: anything left in it is an orphaned
    # child of the server and would otherwise keep a CPU busy after the run.
    _kill_group(process.pid)
    return StopOutcome(name, process.returncode, killed)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def stop_server(server: RunningServer, grace_s: float = 10.0) -> StopOutcome:
    """SIGTERM, then SIGKILL after the grace period."""
    return _stop(server.spec.name, server.process, grace_s)


def stop_all(servers: Sequence[RunningServer]) -> list[StopOutcome]:
    return [stop_server(server) for server in servers]


class LoadToolError(RuntimeError):
    """A load generator that ran over its time, exited with an error, or printed no result."""


def run_load_tool(argv: Sequence[str], cwd: Path, cpus: frozenset[int] | None, timeout_s: float) -> Any:
    """Run a load generator (pinned to ``cpus``) and return its last stdout line, parsed as JSON."""
    try:
        done = subprocess.run(
            argv,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            preexec_fn=pin_to(cpus),
        )
    except subprocess.TimeoutExpired:
        raise LoadToolError(f"load generator ran over {timeout_s:.0f} s") from None
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise LoadToolError(f"load generator exited {done.returncode}: {tail}")
    return json.loads(lines[-1])
