"""The Gemini adapter over real HTTP against the simulator's Gemini wire format."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import httpx
import pytest

from omnirelay.config.schema import HttpProviderSettings
from omnirelay.domain import (
    CompletionRequest,
    Deployment,
    FinishReason,
    Message,
    ProviderCall,
    ResponseFormat,
    ResponseFormatType,
    Role,
    Sampling,
    TextDelta,
    TextPart,
    ToolChoice,
    ToolChoiceMode,
    ToolSpec,
)
from omnirelay.errors import (
    ContentFilteredError,
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
from omnirelay.providers.assemble import Assembler
from omnirelay.providers.gemini import GeminiProvider, parse_response, parse_stream_array
from omnirelay.providers.http import HttpTransport
from omnirelay.sim.server import RunningSim

SECRET = "sk-test-secret"
TOOL = ToolSpec("lookup", "look a thing up", {"type": "object", "properties": {"query": {"type": "string"}}})

AUTO_DEFAULT = ToolChoice()

Make = Callable[..., GeminiProvider]


@pytest.fixture
async def make(sim: RunningSim) -> AsyncIterator[Make]:
    made: list[GeminiProvider] = []

    def build(**settings: Any) -> GeminiProvider:
        config = HttpProviderSettings(
            name="gemini", kind="gemini", base_url=sim.base_url, api_key=SECRET, **settings
        )
        provider = GeminiProvider(config, HttpTransport(config))
        made.append(provider)
        return provider

    yield build
    for provider in made:
        await provider.aclose()


def call(
    model: str = "gemini-2.5-flash",
    prompt: str = "hello there",
    system: str = "",
    tools: tuple[ToolSpec, ...] = (),
    tool_choice: ToolChoice = AUTO_DEFAULT,
    **sampling: Any,
) -> ProviderCall:
    messages: tuple[Message, ...] = (Message(Role.USER, (TextPart(prompt),)),)
    if system:
        messages = (Message(Role.SYSTEM, (TextPart(system),)), *messages)
    request = CompletionRequest(model, messages, tools=tools, tool_choice=tool_choice)
    return ProviderCall(request, Sampling(**sampling), Deployment("gemini", "gemini", model))


async def streamed(provider: GeminiProvider, c: ProviderCall) -> Assembler:
    assembler = Assembler()
    async for chunk in provider.stream(c):
        assembler.add(chunk)
    return assembler


# ---------------------------------------------------------------- answers


async def test_unary_text_usage_finish(make: Make, sim: RunningSim) -> None:
    result = await make().complete(call(system="be brief"))
    (choice,) = result.choices
    assert len(choice.text.split()) == 12
    assert choice.finish_reason is FinishReason.STOP
    # The simulator counts "be brief\nhello there": the system instruction arrived too.
    assert result.usage.input_tokens == 4
    assert result.usage.output_tokens == 12
    assert result.upstream_request_id.startswith("sim-")
    assert sim.simulator.served[-1].completed


async def test_stream_assembles_to_the_unary_answer(make: Make) -> None:
    provider = make()
    unary = await provider.complete(call(system="be brief"))
    result = (await streamed(provider, call(system="be brief"))).result()
    assert result.choices == unary.choices
    assert result.usage == unary.usage


async def test_max_tokens_is_length(make: Make) -> None:
    provider = make()
    for result in (
        await provider.complete(call(max_tokens=5)),
        (await streamed(provider, call(max_tokens=5))).result(),
    ):
        assert result.choices[0].finish_reason is FinishReason.LENGTH
        assert result.usage.output_tokens == 5
        assert len(result.choices[0].text.split()) == 5


async def test_max_tokens_with_nothing_said_has_no_parts(make: Make) -> None:
    provider = make()
    for result in (
        await provider.complete(call(max_tokens=0)),
        (await streamed(provider, call(max_tokens=0))).result(),
    ):
        assert result.choices[0].text == ""
        assert result.choices[0].finish_reason is FinishReason.LENGTH
        assert result.usage.output_tokens == 0


async def test_stop_sequence(make: Make) -> None:
    provider = make()
    full = (await provider.complete(call())).choices[0].text
    stop = " " + full.split()[5]
    cut = (await provider.complete(call(stop=(stop,)))).choices[0]
    assert cut.text == full[: full.find(stop)]
    assert cut.finish_reason is FinishReason.STOP


async def test_required_tool_choice_gives_a_tool_call(make: Make) -> None:
    provider = make()
    request = call(prompt="find relays", tools=(TOOL,), tool_choice=ToolChoice(ToolChoiceMode.REQUIRED))
    unary = (await provider.complete(request)).choices[0]
    assert unary.finish_reason is FinishReason.TOOL_CALLS
    assert [(c.id, c.name) for c in unary.tool_calls] == [("call_0", "lookup")]
    assert set(json.loads(unary.tool_calls[0].arguments_json)) == {"query"}
    assert unary.text == ""
    stream = (await streamed(provider, request)).result().choices[0]
    assert stream.tool_calls == unary.tool_calls
    assert stream.finish_reason is FinishReason.TOOL_CALLS


async def test_named_tool_choice_picks_that_function(make: Make) -> None:
    other = ToolSpec("weather", "", {"type": "object", "properties": {"city": {"type": "string"}}})
    choice = ToolChoice(ToolChoiceMode.FUNCTION, "weather")
    result = await make().complete(call(tools=(TOOL, other), tool_choice=choice))
    assert [c.name for c in result.choices[0].tool_calls] == ["weather"]


async def test_json_mode(make: Make) -> None:
    fmt = ResponseFormat(ResponseFormatType.JSON_OBJECT)
    text = (await make().complete(call(response_format=fmt))).choices[0].text
    assert set(json.loads(text)) == {"answer"}


async def test_several_candidates(make: Make) -> None:
    provider = make()
    unary = await provider.complete(call(n=2, max_tokens=4))
    assert [c.index for c in unary.choices] == [0, 1]
    assert unary.choices[0].text == unary.choices[1].text
    assert unary.usage.output_tokens == 8
    stream = (await streamed(provider, call(n=2, max_tokens=4))).result()
    assert stream.choices == unary.choices
    assert stream.usage == unary.usage


async def test_key_travels_in_a_header_never_in_the_url(sim: RunningSim) -> None:
    seen: list[httpx.Request] = []

    async def record(request: httpx.Request) -> None:
        seen.append(request)

    config = HttpProviderSettings(name="gemini", kind="gemini", base_url=sim.base_url, api_key=SECRET)
    client = httpx.AsyncClient(base_url=sim.base_url, event_hooks={"request": [record]})
    provider = GeminiProvider(config, HttpTransport(config, client))
    await provider.complete(call())
    await streamed(provider, call())
    await provider.embed(Deployment("e", "gemini", "text-embedding-004"), ["x"], 0)
    await provider.aclose()
    assert [r.url.path for r in seen] == [
        "/v1beta/models/gemini-2.5-flash:generateContent",
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
        "/v1beta/models/text-embedding-004:batchEmbedContents",
    ]
    assert seen[1].url.params["alt"] == "sse"
    for request in seen:
        assert request.headers["x-goog-api-key"] == SECRET
        assert SECRET not in str(request.url)


# ---------------------------------------------------------------- faults

FAULTS = [
    ("400", UpstreamInvalidRequestError, grpc.StatusCode.INVALID_ARGUMENT),
    ("401", UpstreamAuthenticationError, grpc.StatusCode.UNAUTHENTICATED),
    ("403", UpstreamPermissionError, grpc.StatusCode.PERMISSION_DENIED),
    ("404", UpstreamNotFoundError, grpc.StatusCode.NOT_FOUND),
    ("429", RateLimitedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    ("quota", QuotaExhaustedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    ("500", UpstreamServerError, grpc.StatusCode.UNAVAILABLE),
    ("503", OverloadedError, grpc.StatusCode.UNAVAILABLE),
    ("529", OverloadedError, grpc.StatusCode.UNAVAILABLE),
    ("context", ContextLengthExceededError, grpc.StatusCode.INVALID_ARGUMENT),
    ("filter", ContentFilteredError, grpc.StatusCode.INVALID_ARGUMENT),
]
UNARY_ONLY = [
    ("malformed", MalformedResponseError, grpc.StatusCode.UNAVAILABLE),
    ("drop", UpstreamConnectionError, grpc.StatusCode.UNAVAILABLE),
    ("stream_error", OverloadedError, grpc.StatusCode.UNAVAILABLE),
]


def no_secret(error: UpstreamError) -> None:
    assert SECRET not in error.message
    assert SECRET not in str(error)
    assert all(SECRET not in value for value in error.metadata.values())


@pytest.mark.parametrize(
    ("fault", "cls", "code"), FAULTS + UNARY_ONLY, ids=[f[0] for f in FAULTS + UNARY_ONLY]
)
async def test_unary_faults(make: Make, fault: str, cls: type[UpstreamError], code: grpc.StatusCode) -> None:
    with pytest.raises(UpstreamError) as caught:
        await make().complete(call(f"gemini-2.5-flash+fault={fault}"))
    assert type(caught.value) is cls, caught.value.message
    assert caught.value.code is code
    no_secret(caught.value)


@pytest.mark.parametrize(("fault", "cls", "code"), FAULTS, ids=[f[0] for f in FAULTS])
async def test_stream_faults_before_any_token(
    make: Make, fault: str, cls: type[UpstreamError], code: grpc.StatusCode
) -> None:
    with pytest.raises(UpstreamError) as caught:
        await streamed(make(), call(f"gemini-2.5-flash+fault={fault}"))
    assert type(caught.value) is cls, caught.value.message
    assert caught.value.code is code
    no_secret(caught.value)


async def test_rate_limit_retry_delay_and_request_id(make: Make) -> None:
    with pytest.raises(RateLimitedError) as caught:
        await make().complete(call("gemini-2.5-flash+fault=429+retry_after=2"))
    assert caught.value.retry_after_seconds == 2.0
    assert caught.value.retryable
    assert caught.value.upstream_request_id.startswith("sim-")
    assert caught.value.http_status == 429


@pytest.mark.parametrize(
    ("fault", "cls"),
    [("drop", StreamBrokenError), ("stream_error", OverloadedError), ("malformed", MalformedResponseError)],
)
async def test_stream_faults_after_some_tokens(make: Make, fault: str, cls: type[UpstreamError]) -> None:
    received: list[str] = []

    async def read() -> None:
        async for chunk in make().stream(call(f"gemini-2.5-flash+fault={fault}+after=3+tokens=10")):
            if isinstance(chunk, TextDelta):
                received.append(chunk.text)

    with pytest.raises(UpstreamError) as caught:
        await read()
    assert type(caught.value) is cls, caught.value.message
    assert caught.value.retryable
    assert len(received) == 3
    no_secret(caught.value)


async def test_hang_hits_the_total_timeout(make: Make) -> None:
    with pytest.raises(UpstreamTimeoutError):
        await make(total_timeout=0.3).complete(call("gemini-2.5-flash+fault=hang"))


async def test_stream_hang_hits_the_read_timeout(make: Make) -> None:
    with pytest.raises(UpstreamTimeoutError):
        await streamed(make(read_timeout=0.3), call("gemini-2.5-flash+fault=hang"))


async def test_cancel_reaches_the_upstream(make: Make, sim: RunningSim) -> None:
    stream = make().stream(call("gemini-2.5-flash+itl=30+tokens=200"))
    seen = 0
    async for chunk in stream:
        if isinstance(chunk, TextDelta):
            seen += 1
            if seen == 3:
                break
    await stream.aclose()
    served = sim.simulator.served[-1]
    for _ in range(50):
        if served.disconnected:
            break
        await asyncio.sleep(0.02)
    assert served.disconnected
    assert not served.completed
    assert served.pieces_sent < 200


# ---------------------------------------------------------------- embeddings


async def test_embeddings(make: Make) -> None:
    provider = make()
    deployment = Deployment("embed", "gemini", "text-embedding-004")
    result = await provider.embed(deployment, ["red apple", "blue sky"], 16)
    assert [len(v) for v in result.vectors] == [16, 16]
    assert math.isclose(sum(x * x for x in result.vectors[0]), 1.0, rel_tol=1e-4)
    assert result.vectors[0] != result.vectors[1]
    assert (await provider.embed(deployment, ["red apple"], 16)).vectors[0] == result.vectors[0]
    assert result.usage.input_tokens == 4
    assert result.usage.estimated
    assert len((await provider.embed(deployment, ["x"], 0)).vectors[0]) == 768


async def test_embedding_faults(make: Make) -> None:
    with pytest.raises(RateLimitedError):
        await make().embed(Deployment("e", "gemini", "text-embedding-004+fault=429"), ["x"], 8)


# ---------------------------------------------------------------- the wire itself


async def raw_post(sim: RunningSim, target: str, body: dict[str, Any], query: str = "") -> httpx.Response:
    async with httpx.AsyncClient(base_url=sim.base_url) as client:
        return await client.post(
            f"/v1beta/models/{target}{query}", json=body, headers={"x-goog-api-key": "k"}
        )


BODY = {"contents": [{"role": "user", "parts": [{"text": "hello there"}]}]}


async def test_sse_framing_is_crlf_without_terminator(sim: RunningSim) -> None:
    response = await raw_post(sim, "m+tokens=4:streamGenerateContent", BODY, "?alt=sse")
    assert response.headers["content-type"].startswith("text/event-stream")
    frames = response.content.split(b"\r\n\r\n")
    assert frames[-1] == b""
    frames = frames[:-1]
    assert len(frames) == 4
    assert all(f.startswith(b"data: {") for f in frames)
    assert b"[DONE]" not in response.content
    chunks = [json.loads(f[len(b"data: ") :]) for f in frames]
    # Every chunk repeats usage; only the last counts the answer and says why it finished.
    assert [("candidatesTokenCount" in c["usageMetadata"]) for c in chunks] == [False, False, False, True]
    assert [c["candidates"][0].get("finishReason") for c in chunks] == [None, None, None, "STOP"]


async def test_stream_error_is_a_raw_json_body_after_the_frames(sim: RunningSim) -> None:
    response = await raw_post(sim, "m+fault=stream_error+after=2:streamGenerateContent", BODY, "?alt=sse")
    assert response.status_code == 200
    frames, _, tail = response.content.rpartition(b"\r\n\r\n")
    assert frames.count(b"data: ") == 2
    assert json.loads(tail)["error"]["status"] == "UNAVAILABLE"


async def test_json_array_stream_matches_the_unary_answer(sim: RunningSim) -> None:
    unary = parse_response((await raw_post(sim, "m:generateContent", BODY)).json())
    response = await raw_post(sim, "m:streamGenerateContent", BODY)
    assert response.headers["content-type"].startswith("application/json")
    assert response.content.startswith(b"[{")
    assert response.content.endswith(b"\n]")
    result = Assembler().extend(parse_stream_array(response.content)).result()
    assert result.choices == unary.choices
    assert result.usage == unary.usage


async def test_json_array_stream_error(sim: RunningSim) -> None:
    response = await raw_post(sim, "m+fault=stream_error:streamGenerateContent", BODY)
    with pytest.raises(OverloadedError):
        parse_stream_array(response.content)
    cut = await raw_post(sim, "m+fault=malformed:streamGenerateContent", BODY)
    with pytest.raises(MalformedResponseError):
        parse_stream_array(cut.content)


async def test_unknown_method_and_bad_bodies(sim: RunningSim) -> None:
    unknown = await raw_post(sim, "m:countTokens", BODY)
    assert unknown.status_code == 404
    assert unknown.json()["error"]["status"] == "NOT_FOUND"
    empty = await raw_post(sim, "m:generateContent", {"contents": []})
    assert empty.status_code == 400
    assert empty.json()["error"]["status"] == "INVALID_ARGUMENT"
