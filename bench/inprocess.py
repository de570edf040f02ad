"""omnirelay's own work per unary call, in one process: no network, no load generator, no gRPC core.

`make bench` measures omnirelay against a bare grpc.aio server over loopback, and its ratios move
with the machine (a faster gRPC core makes the same Python a larger share of a call). This runs
the servicer exactly as `serve` wires it (edge, usage layer, cache layer, router, the `local`
provider, the request line, metrics and the SQLite ledger) on calls made directly on the event
loop, so its cost can be counted in instructions, which do not depend on the machine's load:

    valgrind --tool=callgrind --callgrind-out-file=cg.%p python -m bench.inprocess --calls 500
    valgrind --tool=callgrind --callgrind-out-file=cg.%p python -m bench.inprocess --calls 2000

The difference of the two totals over 1,500 is the instructions of one call (start-up cancels
out). Settings come from the profile and the environment as for `serve`, so a part can be
switched off to see its share, e.g. OMNIRELAY_LOGGING__REQUESTS=false. Without valgrind it
prints wall time per call, which is only a rough guide.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, cast
from unittest import mock

from grpc import aio

from bench.scenarios import usage_env
from bench.workload import cached_unary_request, unary_request
from omnirelay.app import build_app
from omnirelay.cli import run_on
from omnirelay.config import Settings, load_settings, secret_values
from omnirelay.telemetry import logs

# Names the usage files in the data directory, as a bench server's name does.
SERVER_NAME: Final = "inprocess"


class _Context:
    """What the servicer chain asks of a call's context, for a call with no metadata and no deadline."""

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()

    def time_remaining(self) -> float | None:
        return None

    def set_trailing_metadata(self, metadata: Sequence[tuple[str, str]]) -> None:
        pass

    def code(self) -> None:
        return None

    async def abort(self, code: Any, details: str = "", trailing_metadata: Any = ()) -> None:
        raise RuntimeError(f"the call failed: {code} {details}")


@dataclass(frozen=True)
class Outcome:
    calls: int
    seconds: float
    recorded: int  # usage records written to the ledger by the end
    hits: int  # calls answered from the response cache


def settings_for(profile: str, data: Path) -> Settings:
    """The profile's settings as `serve` reads them, with the ledger and spill file in ``data`` and
    the metrics listener on a free port, as `make bench` gives them to its servers (set in the
    environment only while they are read)."""
    with mock.patch.dict(os.environ, dict(usage_env(data, SERVER_NAME))):
        return load_settings(profile)


async def run(settings: Settings, calls: int, cache_hit: bool, log: Path) -> Outcome:
    """``calls`` unary calls through the wired servicer, each followed by one turn of the event
    loop (its timers: the usage batch, the recorder, the log sink); then a clean shutdown."""
    with log.open("w") as lines, contextlib.redirect_stderr(lines):
        # Lines go where `serve`'s go (its stderr), here a file, so their cost is counted too.
        logs.configure(settings.logging, secret_values(settings))
        app = build_app(settings, host="127.0.0.1", port=0)
        await app.start()
        assert app.completion is not None
        complete = app.completion.Complete
        request = cached_unary_request() if cache_hit else unary_request()
        context = cast(aio.ServicerContext[Any, Any], _Context())
        started = time.perf_counter()
        for _ in range(calls):
            await complete(request, context)
            await asyncio.sleep(0)
        seconds = time.perf_counter() - started
        await app.shutdown(grace=0)
        recorded = app.usage.recorder.counters.written if settings.usage.enabled else 0
        hits = app.cache.counters.hits if app.cache is not None else 0
    return Outcome(calls, seconds, recorded, hits)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.inprocess", description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument(
        "--cache-hit", action="store_true", help="the cacheable request: every call after the first a hit"
    )
    parser.add_argument(
        "--profile", default="development", help="settings profile (make bench serves development)"
    )
    args = parser.parse_args(argv)
    if args.calls < 1:
        parser.error("--calls must be >= 1")
    with tempfile.TemporaryDirectory(prefix="omnirelay-inprocess-") as tmp:
        data = Path(tmp)
        settings = settings_for(args.profile, data)
        found: list[Outcome] = []

        async def measured() -> int:
            found.append(await run(settings, args.calls, args.cache_hit, data / "server.log"))
            return 0

        # On the event loop `serve` would use (uvloop unless the settings say otherwise).
        run_on(settings.server.event_loop, measured())
    outcome = found[0]
    per_call = outcome.seconds / outcome.calls * 1e6
    print(
        f"{outcome.calls} calls, {per_call:.1f} us per call (wall), "
        f"{outcome.recorded} usage records written, {outcome.hits} cache hits"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
