"""Serving status from the breakers, token-free readiness, and active probes on model listings.

Each test runs a gateway with only its own providers and models (no shipped registry, no
local provider), so the breakers in the pool are exactly the deployments named here.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from omnirelay.app import App
from omnirelay.config import HttpProviderSettings, ModelSettings, Settings
from omnirelay.config.routing import BreakerSettings, ProbeSettings
from omnirelay.resilience.breaker import BreakerState
from omnirelay.sim.server import RunningSim, start
from omnirelay_client.v1 import completion_pb2_grpc
from tests.conftest import StartServer
from tests.helpers import request
from tests.routing_helpers import model, routed, sim_provider

SERVICE = "omnirelay.v1.CompletionService"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# Probes that never run by themselves: tests call probe_once() directly.
MANUAL_PROBES = ProbeSettings(enabled=True, interval_seconds=3600.0, timeout_seconds=2.0)


@pytest.fixture
async def sim() -> AsyncIterator[RunningSim]:
    running = await start()
    yield running
    await running.stop()


def only(
    settings: Settings,
    providers: list[HttpProviderSettings],
    models: list[ModelSettings],
    breaker: BreakerSettings,
    probes: ProbeSettings | None = None,
) -> Settings:
    bare = dataclasses.replace(settings, providers={}, models={}, default_model=models[0].name)
    result = routed(bare, providers, models, breaker=breaker)
    if probes is not None:
        result = dataclasses.replace(result, resilience=dataclasses.replace(result.resilience, probes=probes))
    return result


async def status(channel: aio.Channel) -> int:
    reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=SERVICE))
    return int(reply.status)


async def wait_status(channel: aio.Channel, wanted: int, seconds: float = 2.0) -> int:
    """Poll the health status until it is ``wanted`` (at most ``seconds``); the last status seen."""
    seen = await status(channel)
    for _ in range(int(seconds / 0.02)):
        if seen == wanted:
            break
        await asyncio.sleep(0.02)
        seen = await status(channel)
    return seen


async def wait_for(condition: Callable[[], bool], seconds: float = 2.0) -> bool:
    for _ in range(int(seconds / 0.02)):
        if condition():
            return True
        await asyncio.sleep(0.02)
    return condition()


async def fail_once(channel: aio.Channel, model_name: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError):
        await completion_pb2_grpc.CompletionServiceStub(channel).Complete(request(model=model_name))


def states(app: App) -> dict[str, BreakerState]:
    return dict(app.pool.states())


# --- Serving status follows the breakers ----------------------------------------------------------


async def test_not_serving_only_when_every_breaker_is_open_and_back_after_the_reset_timeout(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    providers = [sim_provider("p1", sim), sim_provider("p2", sim)]
    models = [model("ma", ("p1", "a+fault=503")), model("mb", ("p2", "b+fault=503"))]
    breaker = BreakerSettings(failure_threshold=1, reset_timeout_seconds=1.0)
    app, channel = await start_server(only(settings, providers, models, breaker))
    assert await status(channel) == SERVING

    await fail_once(channel, "ma")
    assert states(app) == {"p1/a+fault=503": BreakerState.OPEN, "p2/b+fault=503": BreakerState.CLOSED}
    await asyncio.sleep(0.05)  # room for a (wrong) NOT_SERVING to be published
    assert await status(channel) == SERVING

    await fail_once(channel, "mb")
    assert set(states(app).values()) == {BreakerState.OPEN}
    assert await wait_status(channel, NOT_SERVING, seconds=0.5) == NOT_SERVING

    # Nobody calls: the reset timeout alone brings it back.
    assert await wait_status(channel, SERVING, seconds=2.5) == SERVING


async def test_each_deployment_is_a_health_service_following_its_breaker(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    providers = [sim_provider("p1", sim), sim_provider("p2", sim)]
    models = [model("m", ("p1", "a+fault=503+fail_first=1"), ("p2", "b"))]
    breaker = BreakerSettings(failure_threshold=1, reset_timeout_seconds=0.3)
    _, channel = await start_server(only(settings, providers, models, breaker))
    health = health_pb2_grpc.HealthStub(channel)

    async def deployment(name: str) -> int:
        reply = await health.Check(health_pb2.HealthCheckRequest(service=f"omnirelay.deployment/{name}"))
        return int(reply.status)

    assert await deployment("p1/a+fault=503+fail_first=1") == SERVING
    assert await deployment("p2/b") == SERVING
    # p1 fails once (the call falls back to p2): its breaker opens, and so does its health.
    await completion_pb2_grpc.CompletionServiceStub(channel).Complete(request(model="m"))
    assert await wait_for_async(lambda: deployment("p1/a+fault=503+fail_first=1"), NOT_SERVING)
    assert await deployment("p2/b") == SERVING
    # After the reset timeout the next call is p1's half-open trial; it succeeds and p1 serves again.
    await asyncio.sleep(0.35)
    await completion_pb2_grpc.CompletionServiceStub(channel).Complete(request(model="m"))
    assert await wait_for_async(lambda: deployment("p1/a+fault=503+fail_first=1"), SERVING)


async def wait_for_async(probe: Callable[[], Awaitable[int]], wanted: int, seconds: float = 2.0) -> bool:
    for _ in range(int(seconds / 0.02)):
        if await probe() == wanted:
            return True
        await asyncio.sleep(0.02)
    return await probe() == wanted


async def test_readiness_checks_spend_no_tokens(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    providers = [sim_provider("p1", sim)]
    models = [model("m", ("p1", "a"))]
    _, channel = await start_server(only(settings, providers, models, BreakerSettings()))

    for _ in range(10):
        assert await status(channel) == SERVING

    assert sim.simulator.served == []
    assert sim.simulator.listed == []


# --- Active probes ----------------------------------------------------------------------------------


async def test_probes_are_off_by_default(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    providers = [sim_provider("p1", sim)]
    app, channel = await start_server(only(settings, providers, [model("m", ("p1", "a"))], BreakerSettings()))

    await completion_pb2_grpc.CompletionServiceStub(channel).Complete(request(model="m"))

    assert app.prober is None
    assert sim.simulator.listed == []


async def test_probe_hits_only_the_model_listing(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    providers = [sim_provider("p1", sim), sim_provider("p2", sim, kind="anthropic")]
    models = [model("m", ("p1", "a"), ("p2", "b"))]
    app, _ = await start_server(only(settings, providers, models, BreakerSettings(), MANUAL_PROBES))
    assert app.prober is not None

    results = await app.prober.probe_once()

    assert results == {"p1": "ok", "p2": "ok"}
    snapshot = sim.simulator.snapshot()
    assert snapshot["listings"] == 2
    assert snapshot["requests"] == 0
    assert snapshot["listings_by_format"] == {"openai": 1, "anthropic": 1}


async def test_background_probes_run_on_their_interval_without_completions(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    providers = [sim_provider("p1", sim)]
    probes = ProbeSettings(enabled=True, interval_seconds=0.05, timeout_seconds=1.0)
    await start_server(only(settings, providers, [model("m", ("p1", "a"))], BreakerSettings(), probes))

    assert await wait_for(lambda: len(sim.simulator.listed) >= 3)
    assert sim.simulator.served == []


async def test_failing_probes_count_against_that_providers_breakers(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    providers = [
        sim_provider("sick", sim, headers=(("x-sim-options", "fault=503"),)),
        sim_provider("well", sim),
    ]
    models = [model("m", ("sick", "a"), ("well", "b")), model("n", ("sick", "c"))]
    breaker = BreakerSettings(failure_threshold=2, reset_timeout_seconds=60.0)
    app, _ = await start_server(only(settings, providers, models, breaker, MANUAL_PROBES))
    assert app.prober is not None

    first = await app.prober.probe_once()
    assert first["well"] == "ok"
    assert first["sick"] != "ok"
    assert set(states(app).values()) == {BreakerState.CLOSED}
    await app.prober.probe_once()

    assert states(app) == {
        "sick/a": BreakerState.OPEN,
        "sick/c": BreakerState.OPEN,
        "well/b": BreakerState.CLOSED,
    }
    assert sim.simulator.served == []


async def test_a_successful_probe_half_opens_an_open_breaker(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    # The first two listings fail, later ones answer: the provider recovered.
    providers = [sim_provider("p1", sim, headers=(("x-sim-options", "fault=503;fail_first=2"),))]
    breaker = BreakerSettings(failure_threshold=2, reset_timeout_seconds=60.0)
    app, _ = await start_server(only(settings, providers, [model("m", ("p1", "a"))], breaker, MANUAL_PROBES))
    assert app.prober is not None
    await app.prober.probe_once()
    await app.prober.probe_once()
    assert states(app) == {"p1/a": BreakerState.OPEN}

    assert await app.prober.probe_once() == {"p1": "ok"}

    assert states(app) == {"p1/a": BreakerState.HALF_OPEN}
