"""The scenarios' servers, and the targets the load generator calls in each.

`echo`: the echo server and omnirelay (its `local` provider), both over gRPC.
`sim`: the provider simulator, and omnirelay with an OpenAI provider pointing at it. Targets:
omnirelay over gRPC (the simulator behind it), and the simulator's HTTP API directly.

The simulator runs on the servers' CPU, beside omnirelay. With two cores that is the fair choice:
each target then has one core for everything behind the client and the load generator has the
other to itself. On the load generator's core instead, the direct target would squeeze client and
simulator onto one core while omnirelay's calls spread over two, and the client would be slowed
by a neighbour in one target and not in the other.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.procs import RunningServer, ServerSpec, ServerStartError, start_server
from bench.results import BASELINE, DIRECT, ECHO_SCENARIO, SUBJECT
from bench.workload import MODES, SIM_API_KEY, SIM_PROVIDER, STREAM_EVENTS, gateway_sim_model

# Process names (the report's "servers" row and log files); the targets are named in bench.results.
ECHO_SERVER = "echo"
OMNIRELAY_SERVER = "omnirelay"
SIM_SERVER = "sim"
OMNIRELAY_SIM_SERVER = "omnirelay-sim"
RESET_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class Target:
    """What the load generator calls: a server, over which protocol, and what runs behind it."""

    name: str
    server: RunningServer
    protocol: str
    # host:port for gRPC; the API's base URL for HTTP.
    address: str
    # The model each mode's requests name; absent: the workload's default.
    models: Mapping[str, str] = field(default_factory=dict)
    # Events every stream must have; 0: as many as the load generator's probe stream had.
    stream_events: int = STREAM_EVENTS
    # A server behind this one on the same core; its CPU is measured, and its death ends the target.
    upstream: RunningServer | None = None
    # Posted before each measurement; empty when nothing needs resetting.
    reset_url: str = ""

    @property
    def processes(self) -> tuple[RunningServer, ...]:
        return (self.server, self.upstream) if self.upstream else (self.server,)


@dataclass(frozen=True, slots=True)
class Launcher:
    """How to start servers: where their logs go, on which CPUs, how long to wait for them."""

    log_dir: Path
    stamp: str
    cpus: frozenset[int] | None
    timeout_s: float
    cwd: Path

    def start(
        self, spec: ServerSpec, failures: list[str], started: list[RunningServer]
    ) -> RunningServer | None:
        """Appends the server to `started` as soon as it serves, so an interrupt cannot orphan it."""
        log_path = self.log_dir / f"bench-{self.stamp}-{spec.name}.log"
        try:
            server = start_server(spec, log_path, self.cpus, self.timeout_s, self.cwd)
        except (ServerStartError, OSError) as exc:
            failures.append(f"{spec.name} did not start: {exc}")
            return None
        started.append(server)
        return server


def sim_env(sim_address: str) -> tuple[tuple[str, str], ...]:
    """omnirelay's settings for a provider named `sim` of kind openai at the simulator."""
    prefix = f"OMNIRELAY_PROVIDERS__{SIM_PROVIDER.upper()}__"
    return (
        (f"{prefix}KIND", "openai"),
        (f"{prefix}BASE_URL", f"http://{sim_address}/v1"),
        (f"{prefix}API_KEY", SIM_API_KEY),
    )


def start_targets(
    scenario: str,
    argv: Mapping[str, Sequence[str]],
    launcher: Launcher,
    failures: list[str],
    started: list[RunningServer],
) -> list[Target]:
    """Start a scenario's servers (`argv` by process name) and return the targets that can be measured."""
    if scenario == ECHO_SCENARIO:
        targets = []
        echo = launcher.start(ServerSpec(ECHO_SERVER, tuple(argv[ECHO_SERVER])), failures, started)
        if echo:
            targets.append(Target(BASELINE, echo, "grpc", echo.address))
        omnirelay = launcher.start(
            ServerSpec(OMNIRELAY_SERVER, tuple(argv[OMNIRELAY_SERVER])), failures, started
        )
        if omnirelay:
            targets.append(Target(SUBJECT, omnirelay, "grpc", omnirelay.address))
        return targets
    sim = launcher.start(ServerSpec(SIM_SERVER, tuple(argv[SIM_SERVER])), failures, started)
    if sim is None:
        return []
    reset_url = f"http://{sim.address}/_sim/reset"
    direct = Target(DIRECT, sim, "http", f"http://{sim.address}/v1", stream_events=0, reset_url=reset_url)
    spec = ServerSpec(OMNIRELAY_SIM_SERVER, tuple(argv[OMNIRELAY_SERVER]), sim_env(sim.address))
    omnirelay = launcher.start(spec, failures, started)
    if omnirelay is None:
        return [direct]
    relay = Target(
        SUBJECT,
        omnirelay,
        "grpc",
        omnirelay.address,
        models={mode: gateway_sim_model(mode) for mode in MODES},
        # The relay's framing (route_started, deltas, finish, usage, done) is the adapter's to
        # decide; the load generator holds every stream to the probe's count.
        stream_events=0,
        upstream=sim,
        reset_url=reset_url,
    )
    # Baseline first, as in the echo scenario.
    return [direct, relay]


def reset(target: Target) -> str:
    """Empty the simulator's record of served requests; what went wrong, or "".

    The simulator keeps every request it served; over a run that is hundreds of thousands of
    objects, which would slow its garbage collector measurement after measurement.
    """
    if not target.reset_url:
        return ""
    try:
        with urllib.request.urlopen(
            urllib.request.Request(target.reset_url, method="POST"), timeout=RESET_TIMEOUT_S
        ) as response:
            response.read()
    except (urllib.error.URLError, OSError) as exc:
        return f"could not reset the simulator's record: {exc}"
    return ""
