"""Run the real ``omnirelay`` command in a child process."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import IO

_SERVING = re.compile(r"omnirelay serving on (\S+):(\d+) profile=(\w+)")


def env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OMNIRELAY_")}
    # Each child keeps its usage ledger and spill file apart (a test may set its own): never the
    # checkout's var/, where runs would pile up records and replay each other's spills.
    scratch = tempfile.mkdtemp(prefix="omnirelay-usage-")
    usage = {
        "OMNIRELAY_USAGE__SQLITE_PATH": f"{scratch}/usage.db",
        "OMNIRELAY_USAGE__SPILL_PATH": f"{scratch}/usage-spill.jsonl",
        # Many servers run at once in tests: each takes a free metrics port.
        "OMNIRELAY_METRICS__PORT": "0",
    }
    return {**clean, **usage, **(extra or {})}


def run_cli(
    *args: str, extra_env: Mapping[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "omnirelay", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env(extra_env),
        check=False,
    )


@dataclass
class Served:
    process: subprocess.Popen[str]
    address: str
    profile: str
    # The child's stderr goes to a file: a pipe nobody reads until exit fills up under load
    # (one request line per call) and would block the server.
    log: IO[str]
    stderr: str = ""

    def output(self) -> str:
        """Everything the child wrote to stderr so far (all of it, once stopped)."""
        if self.log.closed:
            return self.stderr
        self.log.seek(0)
        return self.log.read()

    def stop(self, timeout: float = 20, sig: signal.Signals | None = signal.SIGTERM) -> int:
        """Send ``sig`` (None: just wait), collect its output, return the exit code."""
        if sig is not None and self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.communicate()
            raise
        finally:
            self.stderr = self.output()
            self.log.close()
        return self.process.returncode


def start(*args: str, extra_env: Mapping[str, str] | None = None, timeout: float = 20) -> Served:
    """``omnirelay serve --port 0`` and wait for its serving line."""
    log = tempfile.TemporaryFile("w+", encoding="utf-8")  # noqa: SIM115 (closed by Served.stop)
    process = subprocess.Popen(
        [sys.executable, "-m", "omnirelay", "serve", "--host", "127.0.0.1", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env=env(extra_env),
    )
    deadline = time.monotonic() + timeout
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        match = _SERVING.search(line)
        if match:
            return Served(process, f"{match.group(1)}:{match.group(2)}", match.group(3), log)
    process.kill()
    process.communicate()
    with log:
        log.seek(0)
        raise AssertionError(f"omnirelay serve did not start: {log.read()}")
