"""The load scenarios' servers, and the targets the load generator calls in each.

`echo`: the echo server and omnirelay (its `local` provider), both over gRPC; a second echo server
with gRPC's threads as omnirelay's `serve` sets them by default, socket work on the polling thread
and helper threads under SCHED_BATCH (`echo-poller`, unary only, where `unrecorded` is measured);
the same omnirelay server called with deterministic requests, which it answers from its response
cache (`cache-hit`, unary only, at the levels asked for: it starts no server of its own); a second
omnirelay server with usage recording off (`unrecorded`, unary only, at the levels asked for); and
a third with tracing on (`traced`, unary only, at the levels asked for), exporting its spans to the OTLP sink
(bench.otlp_sink), which runs on the load generator's CPU: it stands for a collector elsewhere, and
on the servers' core its work would be charged to the server as other load.
`sim`: the provider simulator, the bare relay (bench.relay_server) and omnirelay, both relays with
the simulator's OpenAI API behind them. Targets: omnirelay and the relay over gRPC, and the
simulator's HTTP API directly.
`workers`: omnirelay serving with one and with two worker processes, none of them pinned.

Every omnirelay server keeps its usage ledger and spill file in the run's data directory (a
temporary one), named after the server: not in the repository's `var/`, where every run would add
its records (about a hundred thousand) to the last run's.

The simulator runs on the servers' CPU, beside the relays. With two cores that is the fair choice:
each target then has one core for everything behind the client and the load generator has the
other to itself. On the load generator's core instead, the direct target would squeeze client and
simulator onto one core while the relays' calls spread over two, and the client would be slowed
by a neighbour in one target and not in the other.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.baseline import HELPER_THREADS_ENV
from bench.procs import POLL_S, RunningServer, ServerSpec, ServerStartError, start_server
from bench.results import (
    BASELINE,
    CACHE_HIT,
    DIRECT,
    ECHO_POLLER,
    ECHO_SCENARIO,
    RELAY,
    SIM_SCENARIO,
    SUBJECT,
    TRACED,
    UNRECORDED,
    WORKER_COUNTS,
    WORKERS_SCENARIO,
    workers_target,
)
from bench.workload import MODES, SIM_API_KEY, SIM_PROVIDER, STREAM_EVENTS, gateway_sim_model
from omnirelay import grpc_io

# Process names (the report's "servers" row and log files); the targets are named in bench.results.
ECHO_SERVER = "echo"
ECHO_POLLER_SERVER = "echo-poller"
OMNIRELAY_SERVER = "omnirelay"
SIM_SERVER = "sim"
RELAY_SERVER = "relay"
OMNIRELAY_SIM_SERVER = "omnirelay-sim"
OMNIRELAY_UNRECORDED_SERVER = "omnirelay-unrecorded"
OMNIRELAY_TRACED_SERVER = "omnirelay-traced"
OTLP_SINK_SERVER = "otlp-sink"
# omnirelay's setting that turns usage recording (and budgets) off.
UNRECORDED_ENV = (("OMNIRELAY_USAGE__ENABLED", "false"),)
# The bare echo server with gRPC's threads set up as omnirelay's `serve` sets them by default: the
# socket work on the polling thread, and every thread but the event loop's under SCHED_BATCH.
ECHO_POLLER_ENV = (
    (grpc_io.ENV, grpc_io.experiments("poller", "")),
    (HELPER_THREADS_ENV, "batch"),
)
# Where the OTLP sink writes its span count, in the run's data directory.
SINK_COUNT_FILE = "otlp-sink-spans.json"
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
    # The server runs unpinned as several processes: the load generator is not pinned either, the
    # server's CPU is that of the process and its children, and other load cannot be told apart.
    spread: bool = False
    # The modes and concurrency levels (empty: all of the scenario's) this target is measured at.
    modes: tuple[str, ...] = MODES
    levels: tuple[int, ...] = ()
    # Deterministic unary requests, every answer required to come from omnirelay's response cache.
    cache_hit: bool = False

    def measures(self, mode: str, concurrency: int) -> bool:
        return mode in self.modes and (not self.levels or concurrency in self.levels)

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
    # Where omnirelay servers keep their usage ledger and spill file: the run's temporary directory.
    data_dir: Path
    # Where unpinned servers run: every CPU of the run (the runner itself is pinned, and a child
    # would inherit its one CPU).
    all_cpus: frozenset[int] | None = None
    # Where helpers that are not measured run (the OTLP sink): the load generator's CPU, off the
    # servers' core. None: not pinned.
    side_cpus: frozenset[int] | None = None

    def omnirelay(self, name: str, argv: Sequence[str], env: tuple[tuple[str, str], ...] = ()) -> ServerSpec:
        """An omnirelay server's spec: `env` and its usage files in the run's data directory."""
        return ServerSpec(name, tuple(argv), env + usage_env(self.data_dir, name))

    def start(
        self,
        spec: ServerSpec,
        failures: list[str],
        started: list[RunningServer],
        pinned: bool = True,
        poll_s: float = POLL_S,
        side: bool = False,
    ) -> RunningServer | None:
        """Appends the server to `started` as soon as it serves, so an interrupt cannot orphan it.

        `side`: a helper, on the side CPUs (`pinned` does not apply).
        """
        log_path = self.log_dir / f"bench-{self.stamp}-{spec.name}.log"
        cpus = self.side_cpus if side else self.cpus if pinned else self.all_cpus
        try:
            server = start_server(spec, log_path, cpus, self.timeout_s, self.cwd, poll_s)
        except (ServerStartError, OSError) as exc:
            failures.append(f"{spec.name} did not start: {exc}")
            return None
        started.append(server)
        return server


def usage_env(data_dir: Path, name: str) -> tuple[tuple[str, str], ...]:
    """omnirelay's usage ledger (SQLite, with its -wal and -shm files) and spill file, in `data_dir`.

    Set even with recording off: omnirelay still opens the ledger at start.
    """
    return (
        ("OMNIRELAY_USAGE__SQLITE_PATH", str(data_dir / f"{name}-usage.db")),
        ("OMNIRELAY_USAGE__SPILL_PATH", str(data_dir / f"{name}-usage-spill.jsonl")),
        ("OMNIRELAY_METRICS__PORT", "0"),
    )


def tracing_env(sink_address: str) -> tuple[tuple[str, str], ...]:
    """omnirelay's settings for tracing every call and exporting the spans over OTLP/gRPC to the sink."""
    return (
        ("OMNIRELAY_TRACING__ENABLED", "true"),
        ("OMNIRELAY_TRACING__EXPORTER", "otlp_grpc"),
        ("OMNIRELAY_TRACING__ENDPOINT", f"http://{sink_address}"),
        ("OMNIRELAY_TRACING__SAMPLE_RATIO", "1.0"),
    )


def sink_count_path(data_dir: Path) -> Path:
    return data_dir / SINK_COUNT_FILE


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
    cache_levels: tuple[int, ...] = (),
    unrecorded_levels: tuple[int, ...] = (),
    traced_levels: tuple[int, ...] = (),
) -> list[Target]:
    """Start a scenario's servers (`argv` by process name) and return the targets that can be measured.

    `cache_levels`: the echo scenario's concurrency levels at which cache hits are measured too.
    `unrecorded_levels`: those at which omnirelay without usage recording is (unary); none: its
    server is not started. `traced_levels`: the same for omnirelay with tracing on, and its sink.
    """
    if scenario == ECHO_SCENARIO:
        return _start_echo(argv, launcher, failures, started, cache_levels, unrecorded_levels, traced_levels)
    if scenario == SIM_SCENARIO:
        return _start_sim(argv, launcher, failures, started)
    if scenario == WORKERS_SCENARIO:
        return _start_workers(argv, launcher, failures, started)
    raise ValueError(f"not a load scenario: {scenario}")


def _start_echo(
    argv: Mapping[str, Sequence[str]],
    launcher: Launcher,
    failures: list[str],
    started: list[RunningServer],
    cache_levels: tuple[int, ...],
    unrecorded_levels: tuple[int, ...],
    traced_levels: tuple[int, ...] = (),
) -> list[Target]:
    targets = []
    echo = launcher.start(ServerSpec(ECHO_SERVER, tuple(argv[ECHO_SERVER])), failures, started)
    if echo:
        targets.append(Target(BASELINE, echo, "grpc", echo.address))
    if unrecorded_levels:
        # Where the unrecorded server is measured (unary, at the ratio's level), in the same repeats.
        spec = ServerSpec(ECHO_POLLER_SERVER, tuple(argv[ECHO_SERVER]), ECHO_POLLER_ENV)
        if poller := launcher.start(spec, failures, started):
            targets.append(
                Target(
                    ECHO_POLLER, poller, "grpc", poller.address, modes=("unary",), levels=unrecorded_levels
                )
            )
    omnirelay = launcher.start(
        launcher.omnirelay(OMNIRELAY_SERVER, argv[OMNIRELAY_SERVER]), failures, started
    )
    if omnirelay:
        targets.append(Target(SUBJECT, omnirelay, "grpc", omnirelay.address))
    if unrecorded_levels:
        # A server of its own beside the other (the same core and settings, recording off), measured
        # next to it in every repeat: the pair recording's cost is judged on runs back to back.
        spec = launcher.omnirelay(OMNIRELAY_UNRECORDED_SERVER, argv[OMNIRELAY_SERVER], UNRECORDED_ENV)
        if unrecorded := launcher.start(spec, failures, started):
            targets.append(
                Target(
                    UNRECORDED,
                    unrecorded,
                    "grpc",
                    unrecorded.address,
                    modes=("unary",),
                    levels=unrecorded_levels,
                )
            )
    if traced_levels and (traced := _start_traced(argv, launcher, failures, started)):
        # Like the unrecorded server: beside `omnirelay`, measured next to it in every repeat.
        targets.append(Target(TRACED, traced, "grpc", traced.address, modes=("unary",), levels=traced_levels))
    if omnirelay and cache_levels:
        # The same server: its cache is on by default, and the hits need nothing else.
        hits = Target(
            CACHE_HIT,
            omnirelay,
            "grpc",
            omnirelay.address,
            modes=("unary",),
            levels=cache_levels,
            cache_hit=True,
        )
        targets.append(hits)
    return targets


def _start_traced(
    argv: Mapping[str, Sequence[str]], launcher: Launcher, failures: list[str], started: list[RunningServer]
) -> RunningServer | None:
    """The OTLP sink, then a server like `omnirelay` (the same core and settings) tracing every call.

    The sink starts first, so it stops after the traced server, which exports its last spans as it
    stops.
    """
    sink_argv = (*argv[OTLP_SINK_SERVER], "--count-file", str(sink_count_path(launcher.data_dir)))
    sink = launcher.start(ServerSpec(OTLP_SINK_SERVER, sink_argv), failures, started, side=True)
    if sink is None:
        return None
    spec = launcher.omnirelay(OMNIRELAY_TRACED_SERVER, argv[OMNIRELAY_SERVER], tracing_env(sink.address))
    return launcher.start(spec, failures, started)


def _start_sim(
    argv: Mapping[str, Sequence[str]], launcher: Launcher, failures: list[str], started: list[RunningServer]
) -> list[Target]:
    sim = launcher.start(ServerSpec(SIM_SERVER, tuple(argv[SIM_SERVER])), failures, started)
    if sim is None:
        return []
    base_url = f"http://{sim.address}/v1"
    reset_url = f"http://{sim.address}/_sim/reset"
    targets = [Target(DIRECT, sim, "http", base_url, stream_events=0, reset_url=reset_url)]

    def relayed(name: str, server: RunningServer) -> Target:
        # The two relays: the same requests and models, the simulator behind both on the same core.
        return Target(
            name,
            server,
            "grpc",
            server.address,
            models={mode: gateway_sim_model(mode) for mode in MODES},
            # A relay's framing (route_started, deltas, finish, usage, done) is its own to decide;
            # the load generator holds every stream to the probe's count.
            stream_events=0,
            upstream=sim,
            reset_url=reset_url,
        )

    relay_spec = ServerSpec(RELAY_SERVER, (*argv[RELAY_SERVER], "--upstream", base_url))
    if relay := launcher.start(relay_spec, failures, started):
        targets.append(relayed(RELAY, relay))
    spec = launcher.omnirelay(OMNIRELAY_SIM_SERVER, argv[OMNIRELAY_SERVER], sim_env(sim.address))
    if omnirelay := launcher.start(spec, failures, started):
        targets.append(relayed(SUBJECT, omnirelay))
    # Baselines first, as in the echo scenario.
    return targets


def _start_workers(
    argv: Mapping[str, Sequence[str]], launcher: Launcher, failures: list[str], started: list[RunningServer]
) -> list[Target]:
    targets = []
    for count in WORKER_COUNTS:
        # `--workers N` prints its serving line once every worker listens. Unpinned: two workers
        # need both cores.
        spec = launcher.omnirelay(f"omnirelay-{count}w", (*argv[OMNIRELAY_SERVER], "--workers", str(count)))
        if server := launcher.start(spec, failures, started, pinned=False):
            targets.append(Target(workers_target(count), server, "grpc", server.address, spread=True))
    return targets


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
