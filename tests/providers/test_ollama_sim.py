"""The Ollama native adapter over real HTTP against the simulator's /api/chat and /api/embed."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from omnirelay.config.schema import HttpProviderSettings
from omnirelay.domain import (
    CompletionRequest,
    CompletionResult,
    Deployment,
    FinishChunk,
    FinishReason,
    Message,
    ProviderCall,
    ResponseFormat,
    ResponseFormatType,
    Role,
    Routing,
    Sampling,
    StreamChunk,
    TextDelta,
    TextPart,
    ToolChoice,
    ToolChoiceMode,
    ToolSpec,
    UsageChunk,
)
from omnirelay.errors import (
    ContentFilteredError,
    ContextLengthExceededError,
    InvalidArgumentError,
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
from omnirelay.providers.assemble import Assembler
from omnirelay.providers.base import ChatProvider, EmbeddingProvider
from omnirelay.providers.http import HttpTransport
from omnirelay.providers.ollama import OllamaProvider
from omnirelay.sim.server import RunningSim

SECRET = "sk-test-secret"
PROMPT = "Say hello to the relay"  # 5 tokens to the simulator's tokenizer
TOOLS = (
    ToolSpec(
        "get_weather", "Weather for a city", {"type": "object", "properties": {"city": {"type": "string"}}}
    ),
)


def settings(sim: RunningSim, **overrides: Any) -> HttpProviderSettings:
    values: dict[str, Any] = {"name": "ollama", "kind": "ollama", "base_url": sim.base_url, "api_key": SECRET}
    return HttpProviderSettings(**(values | overrides))


def make(sim: RunningSim, **overrides: Any) -> OllamaProvider:
    config = settings(sim, **overrides)
    return OllamaProvider(config, HttpTransport(config))


@pytest.fixture
async def ollama(sim: RunningSim) -> AsyncIterator[OllamaProvider]:
    provider = make(sim)
    yield provider
    await provider.aclose()


def call(
    model: str = "llama3.2", prompt: str = PROMPT, sampling: Sampling | None = None, **request: Any
) -> ProviderCall:
    messages = (Message(Role.USER, (TextPart(prompt),)),)
    req = CompletionRequest(model="m", messages=messages, **request)
    return ProviderCall(req, sampling or Sampling(), Deployment("m", "ollama", model))


async def collect(
    provider: OllamaProvider, c: ProviderCall, into: list[StreamChunk] | None = None
) -> list[StreamChunk]:
    chunks = [] if into is None else into
    async for chunk in provider.stream(c):
        chunks.append(chunk)
    return chunks


async def answer(provider: OllamaProvider, c: ProviderCall, stream: bool) -> CompletionResult:
    if stream:
        return assembled(await collect(provider, c))
    return await provider.complete(c)


def assembled(chunks: list[StreamChunk]) -> CompletionResult:
    return Assembler().extend(chunks).result()


def test_satisfies_the_provider_protocols(sim: RunningSim) -> None:
    provider = make(sim)
    assert isinstance(provider, ChatProvider)
    assert isinstance(provider, EmbeddingProvider)
    assert provider.name == "ollama"
    assert provider.unsupported_parameters == frozenset({"n", "logprobs", "top_logprobs"})
    assert provider.strict_parameters is False


async def test_unary_text_usage_finish(sim: RunningSim, ollama: OllamaProvider) -> None:
    result = await ollama.complete(call())
    choice = result.choices[0]
    assert len(result.choices) == 1
    assert len(choice.text.split()) == 12
    assert choice.finish_reason is FinishReason.STOP
    assert result.usage.input_tokens == 5
    assert result.usage.output_tokens == 12
    served = sim.simulator.served[-1]
    assert (served.format, served.model, served.stream, served.completed) == (
        "ollama",
        "llama3.2",
        False,
        True,
    )


async def test_stream_assembles_to_the_unary_answer(sim: RunningSim, ollama: OllamaProvider) -> None:
    unary = await ollama.complete(call())
    chunks = await collect(ollama, call())
    assert sum(isinstance(c, TextDelta) for c in chunks) == 12
    assert [type(c) for c in chunks[-2:]] == [FinishChunk, UsageChunk]
    assert assembled(chunks) == unary
    served = sim.simulator.served[-1]
    assert served.stream
    assert served.completed
    assert served.pieces_sent == 12


async def test_max_tokens_is_length(ollama: OllamaProvider) -> None:
    c = call(sampling=Sampling(max_tokens=5))
    for result in (await ollama.complete(c), assembled(await collect(ollama, c))):
        assert result.choices[0].finish_reason is FinishReason.LENGTH
        assert result.usage.output_tokens == 5
        assert len(result.choices[0].text.split()) == 5


async def test_stop_sequence_cuts_the_answer(ollama: OllamaProvider) -> None:
    full = (await ollama.complete(call())).choices[0].text
    stop = " " + full.split()[4]
    expected = full[: full.find(stop)]
    c = call(sampling=Sampling(stop=(stop,)))
    for result in (await ollama.complete(c), assembled(await collect(ollama, c))):
        assert result.choices[0].text == expected
        assert stop not in result.choices[0].text
        assert result.choices[0].finish_reason is FinishReason.STOP


async def test_required_tool_choice_gets_a_tool_call(ollama: OllamaProvider) -> None:
    # Ollama cannot force a call; the simulated model decides to call (the +tool option) as a real one would.
    c = call("llama3.2+tool=get_weather", tools=TOOLS, tool_choice=ToolChoice(ToolChoiceMode.REQUIRED))
    unary = await ollama.complete(c)
    streamed = assembled(await collect(ollama, c))
    for result in (unary, streamed):
        choice = result.choices[0]
        assert choice.finish_reason is FinishReason.TOOL_CALLS
        assert choice.text == ""
        (tool,) = choice.tool_calls
        assert tool.name == "get_weather"
        assert tool.id.startswith("call_")
        assert set(json.loads(tool.arguments_json)) == {"query"}
    assert streamed == unary


async def test_strict_parameters_refuse_an_unenforceable_tool_choice(sim: RunningSim) -> None:
    c = call(
        tools=TOOLS, tool_choice=ToolChoice(ToolChoiceMode.REQUIRED), routing=Routing(strict_parameters=True)
    )
    provider = make(sim)
    try:
        with pytest.raises(InvalidArgumentError) as caught:
            await provider.complete(c)
        assert caught.value.violations[0].field == "tool_choice.mode"
        with pytest.raises(InvalidArgumentError):
            await collect(provider, c)
    finally:
        await provider.aclose()
    assert sim.simulator.served == []


async def test_json_mode(ollama: OllamaProvider) -> None:
    for fmt in (
        ResponseFormat(ResponseFormatType.JSON_OBJECT),
        ResponseFormat(ResponseFormatType.JSON_SCHEMA, "answer", {"type": "object"}),
    ):
        c = call(sampling=Sampling(response_format=fmt))
        for result in (await ollama.complete(c), assembled(await collect(ollama, c))):
            parsed = json.loads(result.choices[0].text)
            assert list(parsed) == ["answer"]
            assert result.choices[0].finish_reason is FinishReason.STOP


FAULTS: list[tuple[str, type[UpstreamError]]] = [
    ("400", UpstreamInvalidRequestError),
    ("401", UpstreamAuthenticationError),
    ("403", UpstreamPermissionError),
    ("404", UpstreamNotFoundError),
    ("429", RateLimitedError),
    ("500", UpstreamServerError),
    ("503", OverloadedError),
    ("529", OverloadedError),
    ("context", ContextLengthExceededError),
    ("quota", QuotaExhaustedError),
    ("filter", ContentFilteredError),
]


@pytest.mark.parametrize(("fault", "expected"), FAULTS)
@pytest.mark.parametrize("stream", [False, True])
async def test_http_faults(
    ollama: OllamaProvider, fault: str, expected: type[UpstreamError], stream: bool
) -> None:
    c = call(f"llama3.2+fault={fault}+retry_after=2")
    with pytest.raises(UpstreamError) as caught:
        await answer(ollama, c, stream)
    error = caught.value
    assert type(error) is expected
    assert SECRET not in str(error)
    assert SECRET not in error.message
    assert error.upstream_request_id.startswith("sim-")
    if fault in ("429", "503", "529"):
        assert error.retry_after_seconds == 2.0


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        ("drop", UpstreamConnectionError),
        ("malformed", MalformedResponseError),
        ("stream_error", UpstreamServerError),
    ],
)
async def test_unary_answer_faults(ollama: OllamaProvider, fault: str, expected: type[UpstreamError]) -> None:
    with pytest.raises(UpstreamError) as caught:
        await ollama.complete(call(f"llama3.2+fault={fault}"))
    assert type(caught.value) is expected
    assert SECRET not in caught.value.message


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        ("drop", StreamBrokenError),
        ("malformed", MalformedResponseError),
        ("stream_error", UpstreamServerError),
    ],
)
async def test_mid_stream_faults_after_some_text(
    ollama: OllamaProvider, fault: str, expected: type[UpstreamError]
) -> None:
    received: list[StreamChunk] = []
    with pytest.raises(UpstreamError) as caught:
        await collect(ollama, call(f"llama3.2+fault={fault}+after=3"), received)
    assert type(caught.value) is expected
    assert SECRET not in caught.value.message
    assert len(received) == 3
    assert all(isinstance(c, TextDelta) for c in received)


@pytest.mark.parametrize("stream", [False, True])
async def test_hang_times_out(sim: RunningSim, stream: bool) -> None:
    provider = make(sim, total_timeout=0.3)
    started = time.monotonic()
    try:
        with pytest.raises(UpstreamTimeoutError):
            await answer(provider, call("llama3.2+fault=hang"), stream)
    finally:
        await provider.aclose()
    assert time.monotonic() - started < 2.0


async def test_closing_the_stream_stops_the_upstream(sim: RunningSim, ollama: OllamaProvider) -> None:
    gen = ollama.stream(call("llama3.2+itl=30+tokens=200"))
    for _ in range(3):
        assert isinstance(await anext(gen), TextDelta)
    await gen.aclose()
    served = sim.simulator.served[-1]
    for _ in range(50):  # the simulator notices within one pacing step; allow up to 1 s
        if served.disconnected:
            break
        await asyncio.sleep(0.02)
    assert served.disconnected
    assert served.pieces_sent < 200
    assert not served.completed


async def test_embeddings(sim: RunningSim, ollama: OllamaProvider) -> None:
    deployment = Deployment("embed", "ollama", "nomic-embed-text")
    result = await ollama.embed(deployment, ["hello relay", "quiet harbor lanterns"], 32)
    assert len(result.vectors) == 2
    assert [len(v) for v in result.vectors] == [32, 32]
    assert result.vectors[0] != result.vectors[1]
    assert result.usage.input_tokens == 5
    default = await ollama.embed(deployment, ["hello relay"], 0)
    assert len(default.vectors[0]) == 384
    assert default.vectors[0][:32] != result.vectors[0]
    with pytest.raises(UpstreamNotFoundError):
        await ollama.embed(Deployment("embed", "ollama", "nomic+fault=404"), ["x"], 0)


async def test_bearer_key_only_when_configured(sim: RunningSim) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        body = {"model": "m", "message": {"role": "assistant", "content": "ok"}, "done": True}
        return httpx.Response(200, json=body, headers={"x-request-id": "up-1"})

    for key in (SECRET, ""):
        config = settings(sim, api_key=key)
        client = httpx.AsyncClient(base_url=config.base_url, transport=httpx.MockTransport(handler))
        provider = OllamaProvider(config, HttpTransport(config, client))
        result = await provider.complete(call())
        await provider.aclose()
        assert result.choices[0].text == "ok"
        assert result.upstream_request_id == "up-1"
    assert seen[0].headers["authorization"] == f"Bearer {SECRET}"
    assert "authorization" not in seen[1].headers
    assert seen[0].url.path == "/api/chat"
    assert json.loads(seen[0].content)["stream"] is False
