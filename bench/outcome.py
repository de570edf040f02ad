"""What a run collects as it goes; the report is built from it once the servers are stopped."""

from __future__ import annotations

from dataclasses import dataclass, field

from bench.holdload import HoldResult
from bench.otlp_sink import SinkCount
from bench.procs import RunningServer, StopOutcome
from bench.results import Measurement


@dataclass(frozen=True, slots=True)
class HoldMeasurement:
    """One run of bench.holdload (streams scenario): which server, what it relayed, and the figures."""

    case: str
    # The server the streams went through (omnirelay or the relay) and what was behind it.
    target: str
    upstream: str
    model: str
    # How long one stream lasts when nothing slows it down: the upstream's wait before the first
    # token and its pauses between tokens.
    nominal_s: float
    result: HoldResult | None
    failure: str = ""


@dataclass(frozen=True, slots=True)
class StartupSample:
    """One cold start of omnirelay (start scenario); seconds from spawning it, memory in kB."""

    repeat: int
    serving_s: float
    first_call_s: float
    rss_started_kb: int
    rss_warm_kb: int


@dataclass(slots=True)
class Outcome:
    measurements: list[Measurement] = field(default_factory=list)
    holds: list[HoldMeasurement] = field(default_factory=list)
    startups: list[StartupSample] = field(default_factory=list)
    # Why a scenario was not measured, by scenario.
    skipped: dict[str, str] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    stops: list[StopOutcome] = field(default_factory=list)
    # The command of every server started, by name, for the report.
    servers: dict[str, str] = field(default_factory=dict)
    # What the OTLP sink received from the echo scenario's traced server; None when it was not started.
    sink: SinkCount | None = None

    def started(self, server: RunningServer) -> None:
        env = " ".join(f"{key}={value}" for key, value in server.spec.env)
        self.servers[server.spec.name] = " ".join((env, *server.spec.argv)).strip()
