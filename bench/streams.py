"""The `streams` scenario: thousands of streams open at once, through omnirelay (bench.holdload).

`local`: omnirelay's `local` provider paced at 2 tokens per second, 20 tokens per stream, 10,000
streams. The provider also waits 10 s before its first token: opening 10,000 streams takes one core
several seconds, and without that wait the first streams would end before the last were open
(relaying 2 tokens per second for thousands of streams already saturates the core). Every stream is
open once omnirelay has sent its first event (route_started), which it does before the provider's
first token.

`sim`: omnirelay in front of the provider simulator (model `sim-model+itl=200+tokens=20`: 200 ms
between tokens, ~4 s per stream), 1,000 streams, each with its own upstream HTTP connection. The
provider's pool is raised to that many connections: at its default (100) the other streams would
wait for a connection and fail after the pool timeout. The bare relay (bench.relay_server, with a
pool as large) is measured the same way, as the baseline of what the HTTP client costs.

Servers are pinned to the servers' CPU and the load generator to its own, as in the other
scenarios; each case starts fresh servers, so that memory figures are the case's own.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from bench.holdload import HoldResult
from bench.memory import megabytes
from bench.outcome import HoldMeasurement, Outcome
from bench.procs import LoadToolError, RunningServer, ServerSpec, run_load_tool, stop_all
from bench.results import RELAY, SUBJECT
from bench.scenarios import OMNIRELAY_SERVER, RELAY_SERVER, SIM_SERVER, Launcher, sim_env
from bench.workload import (
    HOLD_LOCAL_TOKENS_PER_SECOND,
    HOLD_MAX_TOKENS,
    HOLD_SIM_MODEL,
    MODEL,
    SIM_PROVIDER,
)

LOCAL_CASE: Final = "local"
SIM_CASE: Final = "sim"
LOCAL_TTFT_MS: Final = 10_000
LOCAL_ENV: Final = (
    ("OMNIRELAY_PROVIDERS__LOCAL__TOKENS_PER_SECOND", str(HOLD_LOCAL_TOKENS_PER_SECOND)),
    ("OMNIRELAY_PROVIDERS__LOCAL__TTFT_MS", str(LOCAL_TTFT_MS)),
)
# The simulator's model pauses 200 ms between tokens (HOLD_SIM_MODEL's itl).
SIM_TOKEN_INTERVAL_S: Final = 0.2
# Beyond the streams' own time, for the load generator to start and connect.
LOADGEN_MARGIN_S: Final = 60.0


@dataclass(frozen=True, slots=True)
class StreamsConfig:
    local_streams: int
    sim_streams: int
    # Also measure the bare relay in front of the simulator.
    relay_baseline: bool
    # Streams still open this long after the first call count as errors.
    timeout_s: float
    loadgen_cpus: frozenset[int] | None


def pool_env(provider: str, connections: int) -> tuple[tuple[str, str], ...]:
    prefix = f"OMNIRELAY_PROVIDERS__{provider.upper()}__"
    return (
        (f"{prefix}MAX_CONNECTIONS", str(connections)),
        (f"{prefix}MAX_KEEPALIVE_CONNECTIONS", str(connections)),
    )


def _hold(
    case: str,
    target: str,
    server: RunningServer,
    upstream: RunningServer | None,
    streams: int,
    model: str,
    nominal_s: float,
    config: StreamsConfig,
    cwd: Path,
) -> HoldMeasurement:
    argv = [
        sys.executable,
        *("-m", "bench.holdload", "--target", server.address, "--model", model),
        *("--streams", str(streams), "--tokens", str(HOLD_MAX_TOKENS), "--timeout", str(config.timeout_s)),
        *("--server-pid", str(server.process.pid)),
    ]
    if upstream:
        argv += ["--upstream-pid", str(upstream.process.pid)]
    upstream_name = "simulator" if upstream else "local provider"

    def measured(result: HoldResult | None, failure: str = "") -> HoldMeasurement:
        return HoldMeasurement(case, target, upstream_name, model, nominal_s, result, failure)

    timeout = config.timeout_s + LOADGEN_MARGIN_S
    try:
        return measured(HoldResult(**run_load_tool(argv, cwd, config.loadgen_cpus, timeout)))
    except LoadToolError as exc:
        return measured(None, str(exc))


def _record(m: HoldMeasurement, out: Outcome) -> None:
    out.holds.append(m)
    where = f"streams {m.case} {m.target}"
    r = m.result
    if r is None:
        out.failures.append(f"{where}: {m.failure}")
        print(f"{where}  FAILED: {m.failure}", file=sys.stderr, flush=True)
        return
    if r.errors:
        out.failures.append(f"{where}: {r.errors} errors, first: {r.first_error}")
    print(
        f"{where:<24} {r.streams} streams, peak {r.peak_open} open, all open for {r.all_open_s:.1f} s; "
        f"{r.deltas} deltas in {r.run_s:.1f} s; server CPU {r.server_cpu * 100:.0f}%; "
        f"RSS peak {megabytes(r.hwm_kb):.0f} MB; errors {r.errors}",
        file=sys.stderr,
        flush=True,
    )


def _died(servers: Sequence[RunningServer], case: str, out: Outcome) -> None:
    for server in servers:
        if server.process.poll() is not None:
            out.failures.append(
                f"{server.spec.name} died (status {server.process.returncode}) during streams {case}"
            )


def run_streams(
    argv: Mapping[str, Sequence[str]],
    launcher: Launcher,
    config: StreamsConfig,
    settle: Callable[[], None],
    out: Outcome,
) -> None:
    """Both cases, one after the other, each with servers of its own."""
    started: list[RunningServer] = []
    try:
        spec = launcher.omnirelay("omnirelay-hold", argv[OMNIRELAY_SERVER], LOCAL_ENV)
        if server := launcher.start(spec, out.failures, started):
            out.started(server)
            settle()
            streams = config.local_streams
            nominal = LOCAL_TTFT_MS / 1000 + (HOLD_MAX_TOKENS - 1) / HOLD_LOCAL_TOKENS_PER_SECOND
            hold = _hold(LOCAL_CASE, SUBJECT, server, None, streams, MODEL, nominal, config, launcher.cwd)
            _record(hold, out)
            _died(started, LOCAL_CASE, out)
    finally:
        out.stops += stop_all(started)
    started = []
    try:
        sim = launcher.start(ServerSpec("sim-hold", tuple(argv[SIM_SERVER])), out.failures, started)
        if sim is None:
            return
        out.started(sim)
        # A connection per stream, and a few to spare.
        pool = config.sim_streams + config.sim_streams // 10 + 10
        env = sim_env(sim.address) + pool_env(SIM_PROVIDER, pool)
        relays = [(SUBJECT, launcher.omnirelay("omnirelay-sim-hold", argv[OMNIRELAY_SERVER], env))]
        if config.relay_baseline:
            upstream = f"http://{sim.address}/v1"
            relay_argv = (*argv[RELAY_SERVER], "--upstream", upstream, "--connections", str(pool))
            relays.insert(0, (RELAY, ServerSpec("relay-hold", relay_argv)))
        for target, spec in relays:
            server = launcher.start(spec, out.failures, started)
            if server is None:
                continue
            out.started(server)
            settle()
            streams = config.sim_streams
            nominal = (HOLD_MAX_TOKENS - 1) * SIM_TOKEN_INTERVAL_S
            hold = _hold(
                SIM_CASE, target, server, sim, streams, HOLD_SIM_MODEL, nominal, config, launcher.cwd
            )
            _record(hold, out)
            _died(started, SIM_CASE, out)
            # Each relay alone with the simulator: the other's memory and sockets would blur its figures.
            out.stops += stop_all([server])
            started.remove(server)
    finally:
        # The relays before the simulator they call.
        out.stops += reversed(stop_all(started[::-1]))
