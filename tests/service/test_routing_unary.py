"""Routed unary Complete over a real channel against the simulator: fallback, retries, budget, breakers.

Each test starts its own simulator and gateway. The simulator's record (``served``) is the
ground truth for which deployments were actually called; its ``model`` is the provider model
without the ``+options``, so every deployment in a test gets a distinct base name.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

import grpc
import pytest
from google.rpc import error_details_pb2

from omnirelay.app import App
from omnirelay.config import HttpProviderSettings, ModelSettings, Settings
from omnirelay.config.routing import (
    BreakerSettings,
    ModelRoutingSettings,
    RetryBudgetSettings,
    RetrySettings,
)
from omnirelay.resilience.breaker import BreakerState
from omnirelay.sim.server import RunningSim, start
from omnirelay_client.errors import OmniRelayError, from_rpc_error
from omnirelay_client.v1 import completion_pb2, completion_pb2_grpc, types_pb2
from tests.conftest import StartServer
from tests.helpers import error_info, request, rich_status
from tests.routing_helpers import FAST_RETRY, NEVER_OPEN, OPEN_BUDGET, model, routed, sim_provider

if TYPE_CHECKING:
    # Only in the generated stubs: what CompletionServiceStub(aio_channel) returns.
    from omnirelay_client.v1.completion_pb2_grpc import CompletionServiceAsyncStub as Stub

SUCCESS = types_pb2.ATTEMPT_OUTCOME_SUCCESS
RATE_LIMITED = types_pb2.ATTEMPT_OUTCOME_RATE_LIMITED
UPSTREAM_ERROR = types_pb2.ATTEMPT_OUTCOME_UPSTREAM_ERROR
TIMEOUT = types_pb2.ATTEMPT_OUTCOME_TIMEOUT
CONNECTION_ERROR = types_pb2.ATTEMPT_OUTCOME_CONNECTION_ERROR
RETRY3 = RetrySettings(max_attempts=3, base_delay_seconds=0.0, max_delay_seconds=0.0)


@pytest.fixture
async def sim() -> AsyncIterator[RunningSim]:
    running = await start()
    yield running
    await running.stop()


async def gateway(
    start_server: StartServer,
    settings: Settings,
    providers: list[HttpProviderSettings],
    models: list[ModelSettings],
    retry: RetrySettings = FAST_RETRY,
    budget: RetryBudgetSettings = OPEN_BUDGET,
    breaker: BreakerSettings = NEVER_OPEN,
) -> tuple[App, Stub]:
    """A gateway over these providers and models (plus the development ones), and a stub to it."""
    routed_settings = routed(settings, providers, models, retry=retry, budget=budget, breaker=breaker)
    app, channel = await start_server(routed_settings)
    return app, completion_pb2_grpc.CompletionServiceStub(channel)


def seen(sim: RunningSim) -> list[str]:
    """The provider models (without options) the simulator was asked to complete, in order."""
    return [s.model for s in sim.simulator.served]


def closed_port() -> int:
    """A localhost port nobody listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def failure(
    stub: Stub, req: completion_pb2.CompleteRequest, deadline: float | None = None
) -> OmniRelayError:
    """The typed error of a call expected to fail (``deadline``: the gRPC timeout, in seconds)."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Complete(req, timeout=deadline)
    return from_rpc_error(caught.value)


def routed_request(model_name: str, **routing: object) -> completion_pb2.CompleteRequest:
    req = request(model=model_name)
    req.routing.CopyFrom(types_pb2.RoutingOptions(**routing))  # type: ignore[arg-type]
    return req


async def wait_for(condition: Callable[[], bool], seconds: float = 3.0) -> bool:
    """Poll ``condition()`` every 20 ms for at most ``seconds``."""
    for _ in range(int(seconds / 0.02)):
        if condition():
            return True
        await asyncio.sleep(0.02)
    return bool(condition())


# --- 1. Fallback on each triggering class --------------------------------------------------------

FALLBACK_CASES = {
    # name: (kind of the failing provider, its provider_model, expected outcome, has an upstream id)
    "rate_limited_429": ("openai", "first+fault=429", RATE_LIMITED, True),
    "overloaded_529_anthropic": ("anthropic", "first+fault=529", UPSTREAM_ERROR, True),
    "overloaded_503": ("openai", "first+fault=503", UPSTREAM_ERROR, True),
    "server_error_500": ("openai", "first+fault=500", UPSTREAM_ERROR, True),
    "timeout_hang": ("openai", "first+fault=hang", TIMEOUT, False),
    "connection_refused": ("dead", "first", CONNECTION_ERROR, False),
}


@pytest.mark.parametrize("case", list(FALLBACK_CASES))
async def test_fallback_to_the_next_deployment_on_each_triggering_failure(
    start_server: StartServer, settings: Settings, sim: RunningSim, case: str
) -> None:
    kind, provider_model, failed_outcome, has_upstream_id = FALLBACK_CASES[case]
    if kind == "dead":
        bad = sim_provider("bad", sim, base_url=f"http://127.0.0.1:{closed_port()}/v1")
    else:
        bad = sim_provider("bad", sim, kind=kind)
    good = sim_provider("good", sim)
    m = model(
        "m",
        ("bad", provider_model),
        ("good", "second"),
        routing=ModelRoutingSettings(attempt_timeout_seconds=0.5),
    )
    _, stub = await gateway(start_server, settings, [bad, good], [m])

    response = await stub.Complete(request(model="m"))

    route = response.route
    assert (route.resolved_model, route.provider, route.deployment) == ("m", "good", "good/second")
    assert route.fallback_used
    assert [(a.provider, a.deployment, a.outcome) for a in route.attempts] == [
        ("bad", f"bad/{provider_model}", failed_outcome),
        ("good", "good/second", SUCCESS),
    ]
    assert all(a.model == "m" for a in route.attempts)
    failed = route.attempts[0]
    if has_upstream_id:
        assert failed.upstream_request_id.startswith("sim-")
        assert failed.upstream_request_id == sim.simulator.served[0].request_id
    else:
        assert failed.upstream_request_id == ""
    assert route.attempts[1].upstream_request_id == sim.simulator.served[-1].request_id
    assert seen(sim)[-1] == "second"


# --- 2. No fallback on the caller's or the key's errors ------------------------------------------


@pytest.mark.parametrize(
    ("fault", "code", "reason"),
    [
        ("400", grpc.StatusCode.INVALID_ARGUMENT, "UPSTREAM_INVALID_REQUEST"),
        ("401", grpc.StatusCode.UNAUTHENTICATED, "UPSTREAM_AUTHENTICATION"),
    ],
)
async def test_invalid_request_and_authentication_do_not_fall_back(
    start_server: StartServer,
    settings: Settings,
    sim: RunningSim,
    fault: str,
    code: grpc.StatusCode,
    reason: str,
) -> None:
    providers = [sim_provider("p1", sim), sim_provider("p2", sim)]
    models = [
        model(
            "m",
            ("p1", f"first+fault={fault}"),
            ("p2", "second"),
            routing=ModelRoutingSettings(fallbacks=("other",)),
        ),
        model("other", ("p2", "third")),
    ]
    _, stub = await gateway(start_server, settings, providers, models)

    error = await failure(stub, request(model="m"))

    assert error.code == code
    assert error.reason == reason
    assert seen(sim) == ["first"]


# --- 3. Context length: only a larger window may follow --------------------------------------------


async def test_context_length_falls_back_only_to_a_larger_window(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    p = sim_provider("p", sim)
    models = [
        model(
            "m1",
            ("p", "ctx+fault=context"),
            context_window=1000,
            routing=ModelRoutingSettings(fallbacks=("small", "big")),
        ),
        model("small", ("p", "smallmodel"), context_window=500),
        model("big", ("p", "bigmodel"), context_window=200_000),
    ]
    _, stub = await gateway(start_server, settings, [p], models)

    response = await stub.Complete(request(model="m1"))

    assert response.route.resolved_model == "big"
    assert response.route.deployment == "p/bigmodel"
    assert response.route.fallback_used
    assert seen(sim) == ["ctx", "bigmodel"]
    assert [(a.model, a.deployment) for a in response.route.attempts] == [
        ("m1", "p/ctx+fault=context"),
        ("big", "p/bigmodel"),
    ]


async def test_context_length_with_no_larger_window_is_the_callers_error(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    p = sim_provider("p", sim)
    models = [
        model(
            "m1",
            ("p", "ctx+fault=context"),
            context_window=1000,
            routing=ModelRoutingSettings(fallbacks=("small",)),
        ),
        model("small", ("p", "smallmodel"), context_window=500),
    ]
    _, stub = await gateway(start_server, settings, [p], models)

    error = await failure(stub, request(model="m1"))

    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason == "CONTEXT_LENGTH_EXCEEDED"
    assert seen(sim) == ["ctx"]


# --- 4. Fallback across models: per model, per request, and switched off -------------------------


def fallback_models(sim: RunningSim) -> tuple[list[HttpProviderSettings], list[ModelSettings]]:
    providers = [sim_provider("p", sim)]
    models = [
        model("m1", ("p", "one+fault=500"), routing=ModelRoutingSettings(fallbacks=("m2",))),
        model("m2", ("p", "two")),
        model("m3", ("p", "three")),
    ]
    return providers, models


async def test_fallback_to_the_models_configured_fallback(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    _, stub = await gateway(start_server, settings, *fallback_models(sim))

    response = await stub.Complete(request(model="m1"))

    assert (response.route.resolved_model, response.route.deployment) == ("m2", "p/two")
    assert response.route.requested_model == "m1"
    assert response.route.fallback_used
    assert seen(sim) == ["one", "two"]


async def test_request_fallback_models_replace_the_configured_chain(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    _, stub = await gateway(start_server, settings, *fallback_models(sim))

    response = await stub.Complete(routed_request("m1", fallback_models=["m3"]))

    assert (response.route.resolved_model, response.route.deployment) == ("m3", "p/three")
    assert response.route.fallback_used
    assert seen(sim) == ["one", "three"]


async def test_request_fallback_models_apply_to_a_model_without_fallbacks(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    providers = [sim_provider("p", sim)]
    models = [model("m1", ("p", "one+fault=503")), model("m3", ("p", "three"))]
    _, stub = await gateway(start_server, settings, providers, models)

    response = await stub.Complete(routed_request("m1", fallback_models=["m3"]))

    assert response.route.resolved_model == "m3"
    assert seen(sim) == ["one", "three"]


async def test_allow_fallback_false_returns_the_first_error(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    providers, models = fallback_models(sim)
    # A second deployment of m1 too: neither deployment nor model fallback may happen.
    models[0] = dataclasses.replace(
        models[0], deployments=(*models[0].deployments, *model("x", ("p", "sibling")).deployments)
    )
    _, stub = await gateway(start_server, settings, providers, models)

    error = await failure(stub, routed_request("m1", allow_fallback=False))

    assert error.code == grpc.StatusCode.UNAVAILABLE
    assert error.reason == "UPSTREAM_SERVER_ERROR"
    assert seen(sim) == ["one"]
    assert [a.deployment for a in error.route_attempts] == ["p/one+fault=500"]


# --- 5. Every attempt failed ----------------------------------------------------------------------


async def test_all_attempts_failing_differently_is_unavailable_with_every_attempt(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    providers = [sim_provider("p1", sim), sim_provider("p2", sim)]
    models = [
        model(
            "m",
            ("p1", "a+fault=500"),
            ("p2", "b+fault=429"),
            routing=ModelRoutingSettings(fallbacks=("n",)),
        ),
        model("n", ("p2", "c+fault=503")),
    ]
    _, stub = await gateway(start_server, settings, providers, models)

    error = await failure(stub, request(model="m"))

    assert error.code == grpc.StatusCode.UNAVAILABLE
    assert error.reason == "UPSTREAM_UNAVAILABLE"
    ids = [s.request_id for s in sim.simulator.served]
    assert [
        (a.model, a.provider, a.deployment, a.outcome, a.upstream_request_id) for a in error.route_attempts
    ] == [
        ("m", "p1", "p1/a+fault=500", UPSTREAM_ERROR, ids[0]),
        ("m", "p2", "p2/b+fault=429", RATE_LIMITED, ids[1]),
        ("n", "p2", "p2/c+fault=503", UPSTREAM_ERROR, ids[2]),
    ]
    assert all(i.startswith("sim-") for i in ids)
    # The readable DebugInfo lines say the same, one per attempt.
    assert len(error.attempts) == 3
    assert all(f"[upstream request {i}]" in line for i, line in zip(ids, error.attempts, strict=True))


async def test_all_attempts_rate_limited_is_resource_exhausted_with_the_shortest_retry_after(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    providers = [sim_provider("p1", sim), sim_provider("p2", sim)]
    models = [model("m", ("p1", "a+fault=429+retry_after=7"), ("p2", "b+fault=429+retry_after=3"))]
    _, stub = await gateway(start_server, settings, providers, models)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Complete(request(model="m"))

    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_info(caught.value).reason == "UPSTREAM_RATE_LIMITED"
    delays = []
    for detail in rich_status(caught.value).details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            delays.append(retry.retry_delay.ToTimedelta().total_seconds())
    assert delays == [3.0]
    error = from_rpc_error(caught.value)
    assert [(a.deployment, a.outcome) for a in error.route_attempts] == [
        ("p1/a+fault=429+retry_after=7", RATE_LIMITED),
        ("p2/b+fault=429+retry_after=3", RATE_LIMITED),
    ]


# --- 6. Retries -----------------------------------------------------------------------------------


async def test_retry_recovers_on_the_same_deployment(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    providers = [sim_provider("p1", sim), sim_provider("p2", sim)]
    models = [model("m", ("p1", "a+fault=503+fail_first=2"), ("p2", "b"))]
    _, stub = await gateway(start_server, settings, providers, models, retry=RETRY3)

    response = await stub.Complete(request(model="m"))

    assert response.route.deployment == "p1/a+fault=503+fail_first=2"
    assert not response.route.fallback_used
    assert seen(sim) == ["a", "a", "a"]
    assert [a.outcome for a in response.route.attempts] == [UPSTREAM_ERROR, UPSTREAM_ERROR, SUCCESS]


async def test_retry_waits_at_least_the_upstreams_retry_after(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    providers = [sim_provider("p1", sim)]
    models = [model("m", ("p1", "a+fault=429+retry_after=0.3+fail_first=1"))]
    _, stub = await gateway(start_server, settings, providers, models, retry=RETRY3)

    began = time.monotonic()
    response = await stub.Complete(request(model="m"))
    elapsed = time.monotonic() - began

    assert elapsed >= 0.3
    assert seen(sim) == ["a", "a"]
    assert [a.outcome for a in response.route.attempts] == [RATE_LIMITED, SUCCESS]


async def test_retry_never_sleeps_past_the_deadline(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    providers = [sim_provider("p1", sim)]
    models = [model("m", ("p1", "a+fault=429+retry_after=5"))]
    _, stub = await gateway(start_server, settings, providers, models, retry=RETRY3)

    began = time.monotonic()
    error = await failure(stub, request(model="m"), deadline=0.5)
    elapsed = time.monotonic() - began

    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.reason == "UPSTREAM_RATE_LIMITED"
    assert elapsed < 2.0
    assert seen(sim) == ["a"]


async def test_retry_after_beyond_the_limit_is_not_waited_for(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    providers = [sim_provider("p1", sim), sim_provider("p2", sim)]
    models = [model("m", ("p1", "a+fault=429+retry_after=5"), ("p2", "b"))]
    retry = dataclasses.replace(RETRY3, max_retry_after_seconds=1.0)
    _, stub = await gateway(start_server, settings, providers, models, retry=retry)

    response = await stub.Complete(request(model="m"))

    # Not retried on p1 (that would mean a 5 s wait): the route moved straight on to p2.
    assert response.route.deployment == "p2/b"
    assert seen(sim) == ["a", "b"]


# --- 7. The retry budget --------------------------------------------------------------------------


async def test_retry_budget_caps_retries_during_an_outage(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    providers = [sim_provider("p1", sim)]
    models = [model("m", ("p1", "down+fault=503"))]
    budget = RetryBudgetSettings(ratio=0.1, min_retries_per_second=0.0, window_seconds=60)
    _, stub = await gateway(start_server, settings, providers, models, retry=RETRY3, budget=budget)

    for _ in range(20):
        error = await failure(stub, request(model="m"))
        assert error.code == grpc.StatusCode.UNAVAILABLE

    sent = len(seen(sim))
    assert 20 <= sent <= 20 + 2
    assert sent < 20 * 3


# --- 8. Circuit breakers --------------------------------------------------------------------------

A = "p1/a+fault=503+fail_first=3"


async def test_breaker_opens_skips_the_deployment_then_recovers_half_open(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    providers = [sim_provider("p1", sim), sim_provider("p2", sim)]
    models = [model("m", ("p1", "a+fault=503+fail_first=3"), ("p2", "b"))]
    breaker = BreakerSettings(failure_threshold=3, reset_timeout_seconds=0.3)
    app, stub = await gateway(start_server, settings, providers, models, breaker=breaker)

    for _ in range(3):
        response = await stub.Complete(request(model="m"))
        assert response.route.deployment == "p2/b"
        assert response.route.fallback_used
    assert dict(app.pool.states())[A] is BreakerState.OPEN

    # Open: A is ordered after B, so B serves first try and A is neither called nor listed.
    response = await stub.Complete(request(model="m"))
    assert response.route.deployment == "p2/b"
    assert not response.route.fallback_used
    assert [(a.deployment, a.outcome) for a in response.route.attempts] == [("p2/b", SUCCESS)]
    assert seen(sim).count("a") == 3

    await asyncio.sleep(0.35)
    response = await stub.Complete(request(model="m"))
    assert response.route.deployment == A
    assert seen(sim).count("a") == 4
    assert dict(app.pool.states())[A] is BreakerState.CLOSED


async def test_open_breaker_on_the_only_deployment_is_recorded_as_circuit_open(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    providers = [sim_provider("p1", sim)]
    models = [model("m", ("p1", "a+fault=503"))]
    breaker = BreakerSettings(failure_threshold=2, reset_timeout_seconds=60.0)
    _, stub = await gateway(start_server, settings, providers, models, breaker=breaker)
    for _ in range(2):
        await failure(stub, request(model="m"))

    error = await failure(stub, request(model="m"))

    assert error.code == grpc.StatusCode.UNAVAILABLE
    assert [(a.deployment, a.outcome) for a in error.route_attempts] == [
        ("p1/a+fault=503", types_pb2.ATTEMPT_OUTCOME_CIRCUIT_OPEN)
    ]
    assert seen(sim) == ["a", "a"]


async def test_callers_bad_requests_never_open_the_breaker(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    providers = [sim_provider("p1", sim), sim_provider("p2", sim)]
    models = [model("m", ("p1", "a+fault=400"), ("p2", "b"))]
    breaker = BreakerSettings(failure_threshold=3, reset_timeout_seconds=60.0)
    app, stub = await gateway(start_server, settings, providers, models, breaker=breaker)

    for _ in range(6):
        error = await failure(stub, request(model="m"))
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT

    assert dict(app.pool.states())["p1/a+fault=400"] is BreakerState.CLOSED
    assert seen(sim) == ["a"] * 6


# --- 9. Cancellation ------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["client_cancel", "grpc_deadline"])
async def test_cancel_closes_the_upstream_and_makes_no_further_attempt(
    start_server: StartServer, settings: Settings, sim: RunningSim, how: str
) -> None:
    providers = [sim_provider("p1", sim), sim_provider("p2", sim)]
    models = [
        model("m", ("p1", "stuck+fault=hang"), ("p2", "b"), routing=ModelRoutingSettings(fallbacks=("n",))),
        model("n", ("p2", "c")),
    ]
    _, stub = await gateway(start_server, settings, providers, models)

    if how == "client_cancel":
        call = stub.Complete(request(model="m"))
        assert await wait_for(lambda: len(sim.simulator.served) == 1)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
    else:
        error = await failure(stub, request(model="m"), deadline=0.3)
        assert error.code == grpc.StatusCode.DEADLINE_EXCEEDED

    assert await wait_for(lambda: sim.simulator.served[0].disconnected)
    await asyncio.sleep(0.2)  # room for a (wrong) fallback attempt to show up
    assert seen(sim) == ["stuck"]
    assert not sim.simulator.served[0].completed


# --- 10. The model's default deadline ------------------------------------------------------------


async def test_model_default_deadline_applies_when_the_caller_sets_none(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    providers = [sim_provider("p1", sim)]
    models = [model("m", ("p1", "stuck+fault=hang"), routing=ModelRoutingSettings(deadline_seconds=0.3))]
    _, stub = await gateway(start_server, settings, providers, models)

    error = await failure(stub, request(model="m"))

    assert error.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert error.reason == "DEADLINE_EXCEEDED"
    assert await wait_for(lambda: sim.simulator.served[0].disconnected)
    assert [(a.provider, a.deployment, a.outcome) for a in error.route_attempts] == [
        ("p1", "p1/stuck+fault=hang", TIMEOUT)
    ]
    assert len(error.attempts) == 1
