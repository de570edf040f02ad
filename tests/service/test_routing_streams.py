"""Routed streams end to end: gRPC client → omnirelay's router → real HTTP → the simulator.

Before the first chunk a failure is retried or fallen back on without the caller seeing it;
after it, ``routing.stream_recovery`` decides: "error" ends the stream with STREAM_INTERRUPTED,
"continue" has the next deployment continue the delivered text (an assistant prefix) and says
so with a RouteChanged event. The simulator's record says what each upstream was asked and sent.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence

import grpc
import pytest
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2
from grpc import aio

from omnirelay.config import Settings
from omnirelay.config.routing import ModelRoutingSettings, RetrySettings, RoutingSettings
from omnirelay.sim.core import Served
from omnirelay.sim.server import RunningSim, start
from omnirelay_client.v1 import completion_pb2, stream_pb2, stream_pb2_grpc, types_pb2
from tests.conftest import StartServer
from tests.helpers import drain, error_info, rich_status, stream_request, user
from tests.routing_helpers import FAST_RETRY, model, routed, sim_provider

PROMPT = "tell me about the harbor relays"
# Base model names differ, so each deployment's answer differs from the other's.
A = "alpha-model"
B = "beta-model"
CONTINUE = RoutingSettings(stream_recovery="continue")
# What the format's request calls the assistant: Gemini says "model".
ASSISTANT_ROLE = {"openai": "assistant", "anthropic": "assistant", "gemini": "model", "ollama": "assistant"}

Event = stream_pb2.StreamCompleteResponse


@pytest.fixture
async def sim() -> AsyncIterator[RunningSim]:
    running = await start()
    yield running
    await running.stop()


async def gateway(
    start_server: StartServer,
    settings: Settings,
    sim: RunningSim,
    *deployments: tuple[str, str],
    routing: RoutingSettings | None = None,
    model_routing: ModelRoutingSettings | None = None,
    retry: RetrySettings | None = None,
    b_kind: str = "openai",
) -> aio.Channel:
    """A server whose model "routed" has ``deployments`` (provider, provider_model) in priority order.

    Providers "sim-a" (OpenAI's format) and "sim-b" (``b_kind``'s) both reach the simulator.
    """
    providers = [sim_provider("sim-a", sim), sim_provider("sim-b", sim, b_kind)]
    configured = routed(
        settings,
        providers,
        [model("routed", *deployments, routing=model_routing)],
        routing=routing,
        retry=retry or FAST_RETRY,
    )
    _, channel = await start_server(configured)
    return channel


def stream_call(
    channel: aio.Channel,
    model_name: str = "routed",
    messages: Sequence[types_pb2.Message] | None = None,
    tools: Sequence[types_pb2.Tool] = (),
    **sampling: object,
) -> aio.UnaryStreamCall[stream_pb2.StreamCompleteRequest, Event]:
    request = completion_pb2.CompleteRequest(
        model=model_name,
        messages=list(messages) if messages is not None else [user(PROMPT)],
        tools=list(tools),
        sampling=types_pb2.SamplingParams(**sampling),  # type: ignore[arg-type]
    )
    stub = stream_pb2_grpc.StreamCompletionServiceStub(channel)
    return stub.StreamComplete(stream_pb2.StreamCompleteRequest(request=request))


async def collect(
    call: aio.UnaryStreamCall[stream_pb2.StreamCompleteRequest, Event],
) -> tuple[list[Event], grpc.aio.AioRpcError | None]:
    """Every event the stream sent, and the error that ended it (None: it ended well)."""
    events: list[Event] = []
    try:
        async for event in call:
            events.append(event)
    except grpc.aio.AioRpcError as exc:
        return events, exc
    return events, None


async def trailers(call: aio.UnaryStreamCall[stream_pb2.StreamCompleteRequest, Event]) -> dict[str, str]:
    return {key: str(value) for key, value in await call.trailing_metadata() or ()}


def kinds(events: Sequence[Event]) -> list[str]:
    return [str(e.WhichOneof("event")) for e in events]


def deltas(events: Sequence[Event]) -> list[str]:
    return [e.text_delta.text for e in events if e.HasField("text_delta")]


async def direct_deltas(
    channel: aio.Channel, name: str, messages: Sequence[types_pb2.Message] | None = None
) -> list[str]:
    """The text pieces ``name`` (a provider/model route) streams for the same request, fault-free."""
    events, error = await collect(stream_call(channel, name, messages))
    assert error is None, error
    return deltas(events)


def assistant(text: str) -> types_pb2.Message:
    return types_pb2.Message(role=types_pb2.ROLE_ASSISTANT, content=[types_pb2.ContentPart(text=text)])


def error_attempts(error: grpc.aio.AioRpcError) -> list[types_pb2.Attempt]:
    """The attempts of the typed RouteFacts detail an ended routed call carries."""
    for detail in rich_status(error).details:
        if detail.Is(types_pb2.RouteFacts.DESCRIPTOR):
            facts = types_pb2.RouteFacts()
            detail.Unpack(facts)
            return list(facts.attempts)
    raise AssertionError("no RouteFacts detail")


def debug_lines(error: grpc.aio.AioRpcError) -> list[str]:
    for detail in rich_status(error).details:
        if detail.Is(error_details_pb2.DebugInfo.DESCRIPTOR):
            info = error_details_pb2.DebugInfo()
            detail.Unpack(info)
            return list(info.stack_entries)
    raise AssertionError("no DebugInfo detail")


def outcomes(attempts: Sequence[types_pb2.Attempt]) -> list[tuple[str, int]]:
    return [(a.deployment, a.outcome) for a in attempts]


async def until(check: Callable[[], bool], seconds: float = 5.0) -> bool:
    """Poll ``check()`` until true or ``seconds`` passed (a bound on waiting, not a speed check)."""
    for _ in range(int(seconds / 0.02)):
        if check():
            return True
        await asyncio.sleep(0.02)
    return bool(check())


def served_models(sim: RunningSim) -> list[str]:
    return [s.model for s in sim.simulator.served]


# --- 1. failure before the first chunk ------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "model_routing", "outcome"),
    [
        ("fault=503", None, types_pb2.ATTEMPT_OUTCOME_UPSTREAM_ERROR),
        ("fault=429", None, types_pb2.ATTEMPT_OUTCOME_RATE_LIMITED),
        ("fault=500", None, types_pb2.ATTEMPT_OUTCOME_UPSTREAM_ERROR),
        ("fault=hang", ModelRoutingSettings(ttft_timeout_seconds=0.2), types_pb2.ATTEMPT_OUTCOME_TIMEOUT),
    ],
    ids=["503", "429", "500", "hang"],
)
async def test_failure_before_first_chunk_falls_back_unseen(
    start_server: StartServer,
    settings: Settings,
    sim: RunningSim,
    fault: str,
    model_routing: ModelRoutingSettings | None,
    outcome: int,
) -> None:
    a_model = f"{A}+{fault}"
    channel = await gateway(
        start_server, settings, sim, ("sim-a", a_model), ("sim-b", B), model_routing=model_routing
    )
    call = stream_call(channel)
    events, error = await collect(call)
    assert error is None, error
    # The response metadata names who served the call: B, the only one that answered.
    assert (await trailers(call))["x-omnirelay-provider"] == "sim-b"
    # The route is announced at once (A); the move to B comes before any text, so the caller
    # sees no error and nothing to discard.
    names = kinds(events)
    assert names[:3] == ["route_started", "route_changed", "text_delta"]
    assert names.count("route_changed") == 1
    assert events[0].route_started.deployment == f"sim-a/{a_model}"
    assert events[0].route_started.attempt == 1
    change = events[1].route_changed
    assert (change.to.deployment, change.to.provider, change.to.attempt) == (f"sim-b/{B}", "sim-b", 2)
    assert getattr(change, "from").deployment == f"sim-a/{a_model}"
    assert "before its first token" in change.reason
    routed_text = deltas(events)
    alone = await direct_deltas(channel, f"sim-b/{B}")
    assert routed_text == alone
    assert kinds(events)[-1] == "done"
    route = events[-1].done.route
    assert route.deployment == f"sim-b/{B}"
    assert route.fallback_used
    assert outcomes(route.attempts) == [
        (f"sim-a/{a_model}", outcome),
        (f"sim-b/{B}", types_pb2.ATTEMPT_OUTCOME_SUCCESS),
    ]
    # A answered nothing; B (and then the direct call) answered everything.
    assert served_models(sim) == [A, B, B]
    a_served = sim.simulator.served[0]
    assert a_served.pieces_sent == 0
    assert not a_served.completed
    if fault == "fault=hang":
        # The abandoned attempt's connection was closed, not left hanging.
        assert await until(lambda: a_served.disconnected)


# --- 2. failure after the first chunk, "error" mode (the default) ---------------------------------


@pytest.mark.parametrize(
    ("fault", "outcome"),
    [
        ("fault=drop+after=3", types_pb2.ATTEMPT_OUTCOME_STREAM_BROKEN),
        ("fault=stream_error+after=3", types_pb2.ATTEMPT_OUTCOME_UPSTREAM_ERROR),
    ],
    ids=["drop", "stream_error"],
)
async def test_failure_after_first_chunk_ends_with_stream_interrupted(
    start_server: StartServer, settings: Settings, sim: RunningSim, fault: str, outcome: int
) -> None:
    a_model = f"{A}+{fault}"
    channel = await gateway(start_server, settings, sim, ("sim-a", a_model), ("sim-b", B))
    events, error = await collect(stream_call(channel))
    assert error is not None
    assert kinds(events) == ["route_started", "text_delta", "text_delta", "text_delta"]
    assert events[0].route_started.deployment == f"sim-a/{a_model}"
    assert events[0].route_started.attempt == 1
    received = deltas(events)
    # Exactly what A sent: its own first three pieces, nothing replayed, nothing from B.
    a_served = sim.simulator.served[0]
    assert a_served.pieces_sent == 3
    assert served_models(sim) == [A]
    alone = await direct_deltas(channel, f"sim-a/{A}")
    assert received == alone[:3]

    assert error.code() == grpc.StatusCode.UNAVAILABLE
    info = error_info(error)
    assert info.reason == "STREAM_INTERRUPTED"
    assert info.metadata["delivered_chunks"] == str(len(events) - 1) == "3"
    attempts = error_attempts(error)
    assert [a.deployment for a in attempts] == [f"sim-a/{a_model}"]
    assert attempts[0].outcome == outcome
    assert any(line.startswith(f"sim-a/{a_model} (routed)") for line in debug_lines(error))


# --- 3. "continue" mode ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("b_kind", "fault", "outcome"),
    [
        ("openai", "drop", types_pb2.ATTEMPT_OUTCOME_STREAM_BROKEN),
        ("anthropic", "drop", types_pb2.ATTEMPT_OUTCOME_STREAM_BROKEN),
        ("gemini", "drop", types_pb2.ATTEMPT_OUTCOME_STREAM_BROKEN),
        ("ollama", "drop", types_pb2.ATTEMPT_OUTCOME_STREAM_BROKEN),
        # The format's in-stream error frame is the upstream's server error.
        ("openai", "stream_error", types_pb2.ATTEMPT_OUTCOME_UPSTREAM_ERROR),
    ],
    ids=["openai", "anthropic", "gemini", "ollama", "openai-stream_error"],
)
async def test_continue_mode_hands_the_delivered_text_to_the_next_deployment(
    start_server: StartServer, settings: Settings, sim: RunningSim, b_kind: str, fault: str, outcome: int
) -> None:
    a_model = f"{A}+fault={fault}+after=3"
    channel = await gateway(
        start_server, settings, sim, ("sim-a", a_model), ("sim-b", B), routing=CONTINUE, b_kind=b_kind
    )
    events, error = await collect(stream_call(channel))
    assert error is None, error
    names = kinds(events)
    assert names[:5] == ["route_started", "text_delta", "text_delta", "text_delta", "route_changed"]
    started = events[0].route_started
    assert (started.deployment, started.attempt) == (f"sim-a/{a_model}", 1)

    delivered = "".join(deltas(events[1:4]))
    alone_a = await direct_deltas(channel, f"sim-a/{A}")
    assert delivered == "".join(alone_a[:3])

    change = events[4].route_changed
    previous = getattr(change, "from")
    assert (previous.deployment, previous.attempt) == (f"sim-a/{a_model}", 1)
    assert (change.to.deployment, change.to.provider, change.to.attempt) == (f"sim-b/{B}", "sim-b", 2)
    assert f"sim-a/{a_model}" in change.reason

    # B's part: its deltas, then finish, usage and done, each once.
    tail = names[5:]
    b_count = tail.count("text_delta")
    assert b_count > 0
    assert tail[:b_count] == ["text_delta"] * b_count
    assert sorted(tail[b_count:]) == ["done", "finish", "usage"]
    assert tail[-1] == "done"

    # B was asked to continue: the request ends with an assistant message holding the delivered text.
    assert served_models(sim)[:2] == [A, B]
    b_served = sim.simulator.served[1]
    assert b_served.format == b_kind
    assert b_served.last_role == ASSISTANT_ROLE[b_kind]
    assert b_served.last_message == delivered
    assert b_served.completed
    assert b_served.pieces_sent == b_count

    # Nothing repeated: the whole text is A's three pieces, then what B says after that prefix.
    alone_b = await direct_deltas(channel, f"sim-b/{B}", [user(PROMPT), assistant(delivered)])
    assert "".join(deltas(events)) == delivered + "".join(alone_b)
    assert deltas(events)[3:] == alone_b

    route = events[-1].done.route
    assert route.deployment == f"sim-b/{B}"
    assert route.fallback_used
    assert outcomes(route.attempts) == [
        (f"sim-a/{a_model}", outcome),
        (f"sim-b/{B}", types_pb2.ATTEMPT_OUTCOME_SUCCESS),
    ]


async def test_continue_mode_spends_the_delivered_tokens_from_max_tokens(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    a_model = f"{A}+fault=drop+after=3"
    channel = await gateway(start_server, settings, sim, ("sim-a", a_model), ("sim-b", B), routing=CONTINUE)
    events, error = await collect(stream_call(channel, max_tokens=8))
    assert error is None, error
    # Three pieces (one token each) from A, so B may add only five: eight in all, as asked.
    assert len(deltas(events)) == 8
    assert sim.simulator.served[1].pieces_sent == 5
    finish = [e.finish for e in events if e.HasField("finish")]
    assert [f.finish_reason for f in finish] == [types_pb2.FINISH_REASON_LENGTH]


async def test_continue_mode_response_metadata_names_the_deployment_that_finished(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    """The trailers "name who served the call" (services/context.py): after a RouteChanged, B did.

    The stream service sets them only on RouteStarted, so they keep naming A, the deployment
    that failed, while the same stream's Done names B.
    """
    a_model = f"{A}+fault=drop+after=3"
    channel = await gateway(start_server, settings, sim, ("sim-a", a_model), ("sim-b", B), routing=CONTINUE)
    call = stream_call(channel)
    events, error = await collect(call)
    assert error is None, error
    assert "route_changed" in kinds(events)
    done = events[-1].done.route
    assert done.provider == "sim-b"
    assert (await trailers(call))["x-omnirelay-provider"] == done.provider


@pytest.mark.parametrize(
    "deployments",
    [
        (("sim-a", f"{A}+fault=drop+after=3"),),
        (("sim-a", f"{A}+fault=drop+after=3"), ("sim-b", f"{B}+fault=503")),
    ],
    ids=["no-fallback-left", "fallback-fails-before-its-first-chunk"],
)
async def test_continue_mode_without_a_continuation_still_ends_with_stream_interrupted(
    start_server: StartServer,
    settings: Settings,
    sim: RunningSim,
    deployments: tuple[tuple[str, str], ...],
) -> None:
    """Chunks reached the caller and nobody continued them: the caller must learn how many.

    "continue" only adds a way to recover; when it cannot, the stream should end as in "error"
    mode (STREAM_INTERRUPTED with delivered_chunks), not with an error that reads as if the
    call never started.
    """
    channel = await gateway(start_server, settings, sim, *deployments, routing=CONTINUE)
    events, error = await collect(stream_call(channel))
    assert error is not None
    # A continuation attempt is announced (route_changed) even when it then fails unseen.
    expected = ["route_started", "text_delta", "text_delta", "text_delta"]
    assert kinds(events) == expected + ["route_changed"] * (len(deployments) - 1)
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    info = error_info(error)
    assert info.reason == "STREAM_INTERRUPTED", (info.reason, error.details())
    assert info.metadata["delivered_chunks"] == "3"
    attempts = error_attempts(error)
    assert [a.deployment for a in attempts] == [f"{p}/{m}" for p, m in deployments]


# --- 4. "continue" mode never continues a stream that carried tool calls ---------------------------


async def test_continue_mode_does_not_continue_a_stream_with_tool_call_deltas(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    # The simulator streams a tool call as an opening delta (id, name) and argument fragments;
    # drop after=1 cuts the connection after the first fragment.
    a_model = f"{A}+tool=lookup+fault=drop+after=1"
    channel = await gateway(start_server, settings, sim, ("sim-a", a_model), ("sim-b", B), routing=CONTINUE)
    parameters = struct_pb2.Struct()
    parameters.update({"type": "object", "properties": {"query": {"type": "string"}}})
    lookup = types_pb2.Tool(name="lookup", description="Look a word up.", parameters=parameters)
    events, error = await collect(stream_call(channel, tools=[lookup]))
    assert error is not None
    names = kinds(events)
    assert names[0] == "route_started"
    assert "tool_call_delta" in names
    assert set(names[1:]) == {"tool_call_delta"}
    assert "route_changed" not in names
    calls = [e.tool_call_delta for e in events if e.HasField("tool_call_delta")]
    assert calls[0].name == "lookup"
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    info = error_info(error)
    assert info.reason == "STREAM_INTERRUPTED"
    assert info.metadata["delivered_chunks"] == str(len(calls))
    assert "more than text" in (error.details() or "")
    # B was never asked to continue something a text prefix cannot carry.
    assert served_models(sim) == [A]
    assert [a.deployment for a in error_attempts(error)] == [f"sim-a/{a_model}"]


# --- 5. a caller's cancel closes the upstream -----------------------------------------------------


@pytest.mark.parametrize("recovery", ["error", "continue"])
async def test_client_cancel_mid_stream_closes_the_upstream_without_fallback(
    start_server: StartServer, settings: Settings, sim: RunningSim, recovery: str
) -> None:
    a_model = f"{A}+itl=50+tokens=200"
    channel = await gateway(
        start_server,
        settings,
        sim,
        ("sim-a", a_model),
        ("sim-b", B),
        routing=RoutingSettings(stream_recovery=recovery),
    )
    call = stream_call(channel)
    seen = 0
    async for event in call:
        if event.HasField("text_delta"):
            seen += 1
            if seen == 2:
                break
    call.cancel()
    a_served = sim.simulator.served[0]
    assert await until(lambda: a_served.disconnected), "the upstream stream was left running"
    assert a_served.pieces_sent < 200
    assert not a_served.completed
    # Give a (wrong) fallback the time it would need, then check none started.
    await asyncio.sleep(0.3)
    assert served_models(sim) == [A]


# --- 6. retry on the same deployment before the first chunk ----------------------------------------


async def test_retry_before_first_chunk_stays_on_the_same_deployment(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    a_model = f"{A}+fault=503+fail_first=1"
    channel = await gateway(
        start_server,
        settings,
        sim,
        ("sim-a", a_model),
        retry=RetrySettings(max_attempts=2, base_delay_seconds=0.0, max_delay_seconds=0.0),
    )
    events, error = await collect(stream_call(channel))
    assert error is None, error
    # A retry on the same deployment is no route change: one announcement, attempt 1.
    assert events[0].route_started.deployment == f"sim-a/{a_model}"
    assert events[0].route_started.attempt == 1
    assert "route_changed" not in kinds(events)
    served: list[Served] = sim.simulator.served
    assert [(s.model, s.fault) for s in served] == [(A, "503"), (A, "")]
    assert served[1].completed
    assert deltas(events) == await direct_deltas(channel, f"sim-a/{A}")
    route = events[-1].done.route
    assert not route.fallback_used
    assert outcomes(route.attempts) == [
        (f"sim-a/{a_model}", types_pb2.ATTEMPT_OUTCOME_UPSTREAM_ERROR),
        (f"sim-a/{a_model}", types_pb2.ATTEMPT_OUTCOME_SUCCESS),
    ]


# --- 7. every deployment fails before the first chunk ---------------------------------------------


@pytest.mark.parametrize(
    ("a_fault", "b_fault", "code", "reason"),
    [
        # OpenAI's 503 is "overloaded": both failed the same way, so that error is the answer.
        ("503", "503", grpc.StatusCode.UNAVAILABLE, "UPSTREAM_OVERLOADED"),
        ("429", "429", grpc.StatusCode.RESOURCE_EXHAUSTED, "UPSTREAM_RATE_LIMITED"),
        ("503", "429", grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE"),
    ],
    ids=["same-503", "same-429", "mixed"],
)
async def test_every_deployment_failing_before_first_chunk_sends_no_text(
    start_server: StartServer,
    settings: Settings,
    sim: RunningSim,
    a_fault: str,
    b_fault: str,
    code: grpc.StatusCode,
    reason: str,
) -> None:
    a_model, b_model = f"{A}+fault={a_fault}", f"{B}+fault={b_fault}"
    channel = await gateway(start_server, settings, sim, ("sim-a", a_model), ("sim-b", b_model))
    events, error = await collect(stream_call(channel))
    # Each attempt was announced; no text reached the caller before the error.
    assert kinds(events) == ["route_started", "route_changed"]
    assert error is not None
    assert error.code() == code
    assert error_info(error).reason == reason
    assert ("failed the same way" in (error.details() or "")) == (a_fault == b_fault)
    attempts = error_attempts(error)
    assert [a.deployment for a in attempts] == [f"sim-a/{a_model}", f"sim-b/{b_model}"]
    assert all(a.outcome != types_pb2.ATTEMPT_OUTCOME_SUCCESS for a in attempts)
    lines = debug_lines(error)
    assert len(lines) == 2
    assert served_models(sim) == [A, B]


async def test_stream_default_deadline_applies_when_the_caller_sets_none(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    # A model's own deadline bounds a stream whose caller set none, even while the upstream
    # has not sent its first byte (the provider's read timeout is far longer).
    routed_settings = routed(
        settings,
        [sim_provider("slow", sim, read_timeout=30.0)],
        [model("bounded", ("slow", "gpt+fault=hang"), routing=ModelRoutingSettings(deadline_seconds=0.3))],
    )
    _, channel = await start_server(routed_settings)
    call = stream_pb2_grpc.StreamCompletionServiceStub(channel).StreamComplete(
        stream_request(model="bounded")
    )
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await drain(call)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "default deadline of model 'bounded'" in (caught.value.details() or "")
    assert time.monotonic() - started < 5.0
    for _ in range(100):
        if sim.simulator.served and sim.simulator.served[0].disconnected:
            break
        await asyncio.sleep(0.02)
    assert sim.simulator.served[0].disconnected
