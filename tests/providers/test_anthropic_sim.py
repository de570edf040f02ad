"""The Anthropic adapter over real HTTP against the simulator's Anthropic wire format."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
import pytest

from omnirelay.config.schema import HttpProviderSettings
from omnirelay.domain import (
    CompletionRequest,
    CompletionResult,
    Deployment,
    FinishReason,
    Message,
    ProviderCall,
    Role,
    Sampling,
    StreamChunk,
    TextDelta,
    TextPart,
    TokenUsage,
    ToolCallDelta,
    ToolChoice,
    ToolChoiceMode,
    ToolSpec,
)
from omnirelay.errors import (
    ContextLengthExceededError,
    MalformedResponseError,
    OverloadedError,
    QuotaExhaustedError,
    RateLimitedError,
    StreamBrokenError,
    UpstreamAuthenticationError,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamInvalidRequestError,
    UpstreamNotFoundError,
    UpstreamPermissionError,
    UpstreamServerError,
    UpstreamTimeoutError,
)
from omnirelay.providers.anthropic import AnthropicProvider
from omnirelay.providers.assemble import Assembler
from omnirelay.providers.http import HttpTransport
from omnirelay.sim.server import RunningSim

KEY = "sk-test-secret"
NO_CHOICE = ToolChoice()
# Five tokens to the simulator's tokenizer: Name / three / harbor / lanterns / "."
PROMPT = "Name three harbor lanterns."
TOOLS = (
    ToolSpec("lookup", "Look something up", {"type": "object", "properties": {"query": {"type": "string"}}}),
    ToolSpec("other", "Another tool", {"type": "object", "properties": {"query": {"type": "string"}}}),
)


def make_provider(
    sim: RunningSim, total_timeout: float = 600.0, read_timeout: float = 120.0
) -> AnthropicProvider:
    config = HttpProviderSettings(
        name="claude",
        kind="anthropic",
        base_url=sim.base_url,
        api_key=KEY,
        total_timeout=total_timeout,
        read_timeout=read_timeout,
    )
    return AnthropicProvider(config, HttpTransport(config))


@pytest.fixture
async def provider(sim: RunningSim) -> AsyncIterator[AnthropicProvider]:
    adapter = make_provider(sim)
    yield adapter
    await adapter.aclose()


def call(
    model: str = "claude-sim",
    *,
    tools: tuple[ToolSpec, ...] = (),
    choice: ToolChoice = NO_CHOICE,
    **sampling: Any,
) -> ProviderCall:
    request = CompletionRequest(
        model="claude",
        messages=(Message(Role.USER, (TextPart(PROMPT),)),),
        tools=tools,
        tool_choice=choice,
        sampling=Sampling(**sampling),
    )
    return ProviderCall(request, request.sampling, Deployment("claude", "claude", model))


async def collect(provider: AnthropicProvider, provider_call: ProviderCall) -> list[StreamChunk]:
    return [chunk async for chunk in provider.stream(provider_call)]


async def streamed(provider: AnthropicProvider, provider_call: ProviderCall) -> CompletionResult:
    return Assembler().extend(await collect(provider, provider_call)).result()


async def answer(provider: AnthropicProvider, provider_call: ProviderCall, stream: bool) -> CompletionResult:
    return await streamed(provider, provider_call) if stream else await provider.complete(provider_call)


async def drain(provider: AnthropicProvider, provider_call: ProviderCall, into: list[StreamChunk]) -> None:
    """Read the stream into ``into``, so a test still sees what arrived before a failure."""
    async for chunk in provider.stream(provider_call):
        into.append(chunk)


def same_answer(a: CompletionResult, b: CompletionResult) -> None:
    assert a.choices == b.choices
    assert a.usage == b.usage


# Answers.


async def test_unary_text_usage_finish(sim: RunningSim, provider: AnthropicProvider) -> None:
    result = await provider.complete(call())
    (choice,) = result.choices
    assert len(choice.text.split()) == 12  # the simulator's default answer length
    assert choice.finish_reason is FinishReason.STOP
    assert choice.tool_calls == ()
    assert result.usage == TokenUsage(input_tokens=5, output_tokens=12)
    (served,) = sim.simulator.served
    assert (served.format, served.model, served.stream, served.completed) == (
        "anthropic",
        "claude-sim",
        False,
        True,
    )
    assert result.upstream_request_id == served.request_id


async def test_stream_assembles_to_the_unary_answer(sim: RunningSim, provider: AnthropicProvider) -> None:
    model = "claude-sim+tokens=20"
    unary = await provider.complete(call(model))
    chunks = await collect(provider, call(model))
    same_answer(Assembler().extend(chunks).result(), unary)
    assert len(unary.choices[0].text.split()) == 20
    assert sum(isinstance(c, TextDelta) for c in chunks) == 20  # one delta per simulated token
    assert [type(c).__name__ for c in chunks[-2:]] == ["FinishChunk", "UsageChunk"]
    assert sim.simulator.served[-1].completed


@pytest.mark.parametrize("stream", [False, True])
async def test_max_tokens_cuts_with_length(provider: AnthropicProvider, stream: bool) -> None:
    provider_call = call(max_tokens=5)
    result = await answer(provider, provider_call, stream)
    (choice,) = result.choices
    assert choice.finish_reason is FinishReason.LENGTH
    assert result.usage.output_tokens == 5
    assert len(choice.text.split()) == 5


@pytest.mark.parametrize("stream", [False, True])
async def test_stop_sequence(provider: AnthropicProvider, stream: bool) -> None:
    full = (await provider.complete(call())).choices[0].text
    stop = " " + full.split()[4]
    provider_call = call(stop=(stop,))
    result = await answer(provider, provider_call, stream)
    (choice,) = result.choices
    assert choice.text == full[: full.index(stop)]
    assert stop not in choice.text
    assert choice.finish_reason is FinishReason.STOP


async def test_sim_reports_the_stop_sequence(sim: RunningSim, provider: AnthropicProvider) -> None:
    full = (await provider.complete(call())).choices[0].text
    stop = " " + full.split()[4]
    body = {
        "model": "claude-sim",
        "max_tokens": 50,
        "stop_sequences": [stop],
        "messages": [{"role": "user", "content": PROMPT}],
    }
    async with httpx.AsyncClient(base_url=sim.base_url) as client:
        data = (await client.post("/v1/messages", json=body)).json()
    assert (data["stop_reason"], data["stop_sequence"]) == ("stop_sequence", stop)


@pytest.mark.parametrize("stream", [False, True])
async def test_required_tool_choice_calls_a_tool(provider: AnthropicProvider, stream: bool) -> None:
    provider_call = call(tools=TOOLS, choice=ToolChoice(ToolChoiceMode.REQUIRED))
    result = await answer(provider, provider_call, stream)
    (choice,) = result.choices
    assert choice.finish_reason is FinishReason.TOOL_CALLS
    assert choice.text == ""
    (tool_call,) = choice.tool_calls
    assert tool_call.name == "lookup"  # "any" picks the first tool in the simulator
    assert tool_call.id.startswith("toolu_")
    arguments = json.loads(tool_call.arguments_json)
    assert list(arguments) == ["query"]
    assert len(arguments["query"].split()) == 3
    assert result.usage.output_tokens > 0


async def test_tool_stream_matches_unary(provider: AnthropicProvider) -> None:
    provider_call = call(tools=TOOLS, choice=ToolChoice(ToolChoiceMode.FUNCTION, "other"))
    unary = await provider.complete(provider_call)
    chunks = await collect(provider, provider_call)
    same_answer(Assembler().extend(chunks).result(), unary)
    assert unary.choices[0].tool_calls[0].name == "other"
    deltas = [c for c in chunks if isinstance(c, ToolCallDelta)]
    assert len(deltas) > 2  # the arguments arrive in fragments
    assert {d.index for d in deltas} == {0}
    assert deltas[0].id == unary.choices[0].tool_calls[0].id


async def test_tool_choice_none_offers_no_tool(provider: AnthropicProvider) -> None:
    result = await provider.complete(
        call("claude-sim+tool=lookup", tools=TOOLS, choice=ToolChoice(ToolChoiceMode.NONE))
    )
    assert result.choices[0].tool_calls == ()
    assert result.choices[0].finish_reason is FinishReason.STOP


async def test_json_mode_is_declared_unsupported_and_never_sent(
    sim: RunningSim, provider: AnthropicProvider
) -> None:
    # Anthropic has no JSON mode switch: the gateway drops response_format (or refuses it in strict mode).
    assert "response_format" in provider.unsupported_parameters
    # The simulator speaks Anthropic's structured-output field for clients that send it.
    body = {
        "model": "claude-sim",
        "max_tokens": 50,
        "messages": [{"role": "user", "content": PROMPT}],
        "output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}},
    }
    async with httpx.AsyncClient(base_url=sim.base_url) as client:
        data = (await client.post("/v1/messages", json=body)).json()
    answer = json.loads(data["content"][0]["text"])
    assert list(answer) == ["answer"]
    assert data["stop_reason"] == "end_turn"


async def test_sim_requires_max_tokens(sim: RunningSim) -> None:
    body = {"model": "claude-sim", "messages": [{"role": "user", "content": PROMPT}]}
    async with httpx.AsyncClient(base_url=sim.base_url) as client:
        response = await client.post("/v1/messages", json=body)
    assert response.status_code == 400
    assert response.json()["error"] == {
        "type": "invalid_request_error",
        "message": "max_tokens: Field required",
    }


async def test_sim_stream_framing(sim: RunningSim) -> None:
    body = {
        "model": "claude-sim+tokens=4",
        "max_tokens": 50,
        "stream": True,
        "messages": [{"role": "user", "content": PROMPT}],
    }
    async with httpx.AsyncClient(base_url=sim.base_url) as client:
        response = await client.post("/v1/messages", json=body)
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert response.headers["request-id"] == sim.simulator.served[-1].request_id
    frames = [f for f in response.text.split("\n\n") if f]
    events = [f.split("\n")[0].removeprefix("event: ") for f in frames]
    assert events == [
        "message_start",
        "content_block_start",
        "ping",
        *["content_block_delta"] * 4,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    data = [json.loads(f.split("\n")[1].removeprefix("data: ")) for f in frames]
    assert data[0]["message"]["usage"]["input_tokens"] == 5
    assert data[-2]["usage"]["input_tokens"] == 5  # cumulative, as Anthropic repeats it
    assert data[-2]["usage"]["output_tokens"] == 4
    assert data[-2]["delta"]["stop_reason"] == "end_turn"


async def test_sim_tool_stream_framing(sim: RunningSim) -> None:
    body = {
        "model": "claude-sim",
        "max_tokens": 50,
        "stream": True,
        "messages": [{"role": "user", "content": PROMPT}],
        "tools": [{"name": "lookup", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "tool", "name": "lookup"},
    }
    async with httpx.AsyncClient(base_url=sim.base_url) as client:
        response = await client.post("/v1/messages", json=body)
    frames = [json.loads(f.split("\n")[1].removeprefix("data: ")) for f in response.text.split("\n\n") if f]
    block = frames[1]["content_block"]
    assert (block["type"], block["name"], block["input"]) == ("tool_use", "lookup", {})
    fragments = [f["delta"]["partial_json"] for f in frames if f["type"] == "content_block_delta"]
    assert fragments[0] == ""
    assert json.loads("".join(fragments))["query"]
    assert frames[-2]["delta"]["stop_reason"] == "tool_use"


# Faults.

FAULTS: list[tuple[str, type[UpstreamError], grpc.StatusCode]] = [
    ("400", UpstreamInvalidRequestError, grpc.StatusCode.INVALID_ARGUMENT),
    ("401", UpstreamAuthenticationError, grpc.StatusCode.UNAUTHENTICATED),
    ("403", UpstreamPermissionError, grpc.StatusCode.PERMISSION_DENIED),
    ("404", UpstreamNotFoundError, grpc.StatusCode.NOT_FOUND),
    ("429", RateLimitedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    ("500", UpstreamServerError, grpc.StatusCode.UNAVAILABLE),
    ("503", OverloadedError, grpc.StatusCode.UNAVAILABLE),
    ("529", OverloadedError, grpc.StatusCode.UNAVAILABLE),
    ("context", ContextLengthExceededError, grpc.StatusCode.INVALID_ARGUMENT),
    ("quota", QuotaExhaustedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
]


def assert_no_key(error: UpstreamError) -> None:
    assert KEY not in str(error)
    assert KEY not in error.message
    assert all(KEY not in value for value in error.metadata.values())


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("fault", "cls", "code"), FAULTS)
async def test_http_faults(
    sim: RunningSim,
    provider: AnthropicProvider,
    fault: str,
    cls: type[UpstreamError],
    code: grpc.StatusCode,
    stream: bool,
) -> None:
    provider_call = call(f"claude-sim+fault={fault}")
    with pytest.raises(UpstreamError) as info:
        await answer(provider, provider_call, stream)
    error = info.value
    assert type(error) is cls
    assert error.code is code
    assert error.upstream_request_id == sim.simulator.served[-1].request_id
    assert error.retry_after_seconds is None
    assert_no_key(error)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("fault", "cls"), [("429", RateLimitedError), ("529", OverloadedError)])
async def test_retry_after(
    provider: AnthropicProvider, fault: str, cls: type[UpstreamError], stream: bool
) -> None:
    provider_call = call(f"claude-sim+fault={fault}+retry_after=2")
    with pytest.raises(cls) as info:
        await answer(provider, provider_call, stream)
    assert info.value.retry_after_seconds == 2.0
    assert info.value.retryable


@pytest.mark.parametrize("stream", [False, True])
async def test_filter_is_a_refusal(provider: AnthropicProvider, stream: bool) -> None:
    provider_call = call("claude-sim+fault=filter")
    result = await answer(provider, provider_call, stream)
    (choice,) = result.choices
    assert choice.finish_reason is FinishReason.REFUSAL
    assert choice.text == ""
    assert result.usage == TokenUsage(input_tokens=5, output_tokens=0)


async def test_hang_unary_times_out(sim: RunningSim) -> None:
    provider = make_provider(sim, total_timeout=0.3)
    try:
        with pytest.raises(UpstreamTimeoutError) as info:
            await provider.complete(call("claude-sim+fault=hang"))
    finally:
        await provider.aclose()
    assert info.value.code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert_no_key(info.value)


async def test_hang_stream_times_out(sim: RunningSim) -> None:
    provider = make_provider(sim, read_timeout=0.3)
    try:
        with pytest.raises(UpstreamTimeoutError):
            await collect(provider, call("claude-sim+fault=hang"))
    finally:
        await provider.aclose()


async def test_drop_unary(provider: AnthropicProvider) -> None:
    with pytest.raises(UpstreamConnectionError) as info:
        await provider.complete(call("claude-sim+fault=drop"))
    assert info.value.retryable
    assert_no_key(info.value)


async def test_malformed_unary(sim: RunningSim, provider: AnthropicProvider) -> None:
    with pytest.raises(MalformedResponseError) as info:
        await provider.complete(call("claude-sim+fault=malformed"))
    assert info.value.upstream_request_id == sim.simulator.served[-1].request_id
    assert_no_key(info.value)


@pytest.mark.parametrize(
    ("fault", "cls"),
    [("drop", StreamBrokenError), ("malformed", MalformedResponseError), ("stream_error", OverloadedError)],
)
async def test_mid_stream_faults_after_three_pieces(
    sim: RunningSim, provider: AnthropicProvider, fault: str, cls: type[UpstreamError]
) -> None:
    chunks: list[StreamChunk] = []
    with pytest.raises(UpstreamError) as info:
        await drain(provider, call(f"claude-sim+fault={fault}+after=3"), chunks)
    assert type(info.value) is cls
    assert [type(c) for c in chunks] == [TextDelta] * 3
    assert sim.simulator.served[-1].pieces_sent == 3
    assert not sim.simulator.served[-1].completed
    assert_no_key(info.value)


async def test_stream_error_during_a_tool_call(provider: AnthropicProvider) -> None:
    chunks: list[StreamChunk] = []
    provider_call = call(
        "claude-sim+fault=stream_error+after=2", tools=TOOLS, choice=ToolChoice(ToolChoiceMode.REQUIRED)
    )
    with pytest.raises(OverloadedError) as info:
        await drain(provider, provider_call, chunks)
    assert info.value.upstream_code == "overloaded_error"
    # The tool_use start, then two argument fragments.
    assert [type(c) for c in chunks] == [ToolCallDelta] * 3
    assert chunks[0] == ToolCallDelta(0, 0, id=chunks[0].id, name="lookup")  # type: ignore[union-attr]


# Cancellation.


async def test_closing_the_stream_stops_the_upstream(sim: RunningSim, provider: AnthropicProvider) -> None:
    stream = provider.stream(call("claude-sim+itl=30+tokens=200"))
    received = [await anext(stream) for _ in range(3)]
    assert all(isinstance(c, TextDelta) for c in received)
    await stream.aclose()
    served = sim.simulator.served[-1]
    for _ in range(50):  # up to about one second
        if served.disconnected:
            break
        await asyncio.sleep(0.02)
    assert served.disconnected
    assert served.pieces_sent < 200
    assert not served.completed
