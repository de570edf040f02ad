"""OpenAI, Azure and the OpenAI-compatible flavors: their quirks, over HTTP to the simulator and unit-level.

What every provider must do (unary, streaming, faults, timeouts, cancel) is in
test_conformance.py; this file holds what only this adapter does: the wire
shape it sends, include_usage, flavors, Azure's URL, key and filters, and
embeddings.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from omnirelay import errors
from omnirelay.config.schema import HttpProviderSettings
from omnirelay.domain import (
    CompletionRequest,
    Deployment,
    FinishReason,
    ImagePart,
    Message,
    ProviderCall,
    ResponseFormat,
    ResponseFormatType,
    Role,
    Sampling,
    TextPart,
    ToolCall,
    ToolChoice,
    ToolChoiceMode,
    ToolSpec,
    UsageChunk,
)
from omnirelay.providers import azure, openai
from omnirelay.providers.assemble import Assembler
from omnirelay.providers.http import HttpTransport
from omnirelay.providers.sse import SSEEvent
from omnirelay.sim.server import RunningSim

SECRET = "sk-test-secret-never-shown"

Make = Callable[..., openai.OpenAIProvider]


@pytest.fixture
async def make(sim: RunningSim) -> AsyncIterator[tuple[Make, list[httpx.Request]]]:
    """Providers against the simulator, with every request they send recorded."""
    made: list[openai.OpenAIProvider] = []
    sent: list[httpx.Request] = []

    async def record(request: httpx.Request) -> None:
        sent.append(request)

    def build(kind: str = "openai", **overrides: Any) -> openai.OpenAIProvider:
        values: dict[str, Any] = {
            "name": f"sim-{kind}",
            "kind": kind,
            "base_url": sim.base_url + ("/v1" if kind == "openai" else ""),
            "api_key": SECRET,
            "api_version": "2024-10-21" if kind == "azure" else "",
            "total_timeout": 30.0,
        }
        values.update(overrides)
        settings = HttpProviderSettings(**values)
        client = httpx.AsyncClient(base_url=settings.base_url, event_hooks={"request": [record]})
        cls = azure.AzureOpenAIProvider if kind == "azure" else openai.OpenAIProvider
        provider = cls(settings, HttpTransport(settings, client=client))
        made.append(provider)
        return provider

    yield build, sent
    for provider in made:
        await provider.aclose()


def call(model: str = "sim-model", prompt: str = "tell me about relays", **sampling: Any) -> ProviderCall:
    return call_with(
        CompletionRequest(model=model, messages=(Message(Role.USER, (TextPart(prompt),)),)), **sampling
    )


def call_with(request: CompletionRequest, **sampling: Any) -> ProviderCall:
    return ProviderCall(request, Sampling(**sampling), Deployment("sim", "sim", request.model))


async def assemble(provider: openai.OpenAIProvider, c: ProviderCall) -> Any:
    return Assembler().extend([chunk async for chunk in provider.stream(c)]).result()


def body_of(request: httpx.Request) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(request.content)
    return data


# --- what goes on the wire ----------------------------------------------------------------------------


async def test_openai_wire_shape(make: tuple[Make, list[httpx.Request]], sim: RunningSim) -> None:
    build, sent = make
    provider = build()
    await provider.complete(call(max_tokens=5, seed=7, temperature=0.5))
    result = await assemble(provider, call())
    unary, streamed = (body_of(r) for r in sent)
    assert sent[0].url.path == "/v1/chat/completions"
    assert sent[0].headers["authorization"] == f"Bearer {SECRET}"
    assert unary["max_completion_tokens"] == 5
    assert "max_tokens" not in unary
    assert (unary["seed"], unary["temperature"]) == (7, 0.5)
    assert "stream" not in unary
    assert streamed["stream"] is True
    assert streamed["stream_options"] == {"include_usage": True}
    # include_usage gives the real counts, not an estimate.
    assert not result.usage.estimated
    assert result.usage.output_tokens == 12
    assert [s.format for s in sim.simulator.served] == ["openai", "openai"]


async def test_local_server_without_key_sends_no_authorization(
    make: tuple[Make, list[httpx.Request]],
) -> None:
    build, sent = make
    provider = build(api_key="", flavor="vllm")
    result = await provider.complete(call(max_tokens=4, top_k=40))
    assert result.choices[0].finish_reason is FinishReason.LENGTH
    assert "authorization" not in sent[0].headers
    body = body_of(sent[0])
    assert body["max_tokens"] == 4
    assert body["top_k"] == 40
    assert "top_k" not in provider.unsupported_parameters


async def test_top_k_is_declared_unsupported_and_not_sent_to_openai(
    make: tuple[Make, list[httpx.Request]],
) -> None:
    build, sent = make
    provider = build()
    assert "top_k" in provider.unsupported_parameters
    await provider.complete(call(top_k=40))
    assert "top_k" not in body_of(sent[0])


async def test_stream_without_include_usage_is_estimated(make: tuple[Make, list[httpx.Request]]) -> None:
    build, sent = make
    provider = build(flavor="mistral")
    result = await assemble(provider, call(prompt="tell me about relays"))
    assert "stream_options" not in body_of(sent[0])
    assert result.usage.estimated
    assert result.usage.output_tokens == 12  # twelve words, one token each to the estimator
    assert result.usage.input_tokens == 7  # four words plus three for the message


async def test_tool_choice_function_names_the_tool(make: tuple[Make, list[httpx.Request]]) -> None:
    build, sent = make
    tools = (
        ToolSpec("first", "", {"type": "object", "properties": {"query": {"type": "string"}}}),
        ToolSpec(
            "second",
            "the other",
            {"type": "object", "properties": {"query": {"type": "string"}}},
            strict=True,
        ),
    )
    request = CompletionRequest(
        model="sim-model",
        messages=(Message(Role.USER, (TextPart("find relays"),)),),
        tools=tools,
        tool_choice=ToolChoice(ToolChoiceMode.FUNCTION, "second"),
    )
    result = await build().complete(call_with(request))
    assert [c.name for c in result.choices[0].tool_calls] == ["second"]
    body = body_of(sent[0])
    assert body["tool_choice"] == {"type": "function", "function": {"name": "second"}}
    assert body["tools"][1]["function"]["strict"] is True
    assert "strict" not in body["tools"][0]["function"]
    assert "description" not in body["tools"][0]["function"]


async def test_json_schema_response_format(make: tuple[Make, list[httpx.Request]]) -> None:
    build, sent = make
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}}
    fmt = ResponseFormat(ResponseFormatType.JSON_SCHEMA, "reply", schema, strict=True)
    result = await build().complete(call(response_format=fmt))
    assert json.loads(result.choices[0].text).keys() == {"answer"}
    assert body_of(sent[0])["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "reply", "schema": schema, "strict": True},
    }


def test_messages_images_tool_calls_and_tool_results() -> None:
    request = CompletionRequest(
        model="m",
        messages=(
            Message(Role.SYSTEM, (TextPart("be brief"),)),
            Message(
                Role.USER, (TextPart("what is this?"), ImagePart(data=b"\x89PNG", media_type="image/png"))
            ),
            Message(Role.USER, (ImagePart(url="https://example.com/a.jpg", detail="low"),)),
            Message(Role.ASSISTANT, tool_calls=(ToolCall("call_1", "look", '{"q":"x"}'),)),
            Message(Role.TOOL, (TextPart("found"),), tool_call_id="call_1"),
            Message(Role.SYSTEM, (TextPart("late system"),)),
        ),
    )
    body = openai.build_body(
        ProviderCall(
            request, Sampling(stop=("END",), logprobs=True, top_logprobs=2, n=2), Deployment("m", "p", "gm")
        ),
        stream=False,
    )
    assert body["model"] == "gm"
    assert body["messages"] == [
        {"role": "system", "content": "be brief"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw=="}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg", "detail": "low"}}
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "look", "arguments": '{"q":"x"}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "found"},
        {"role": "system", "content": "late system"},
    ]
    assert (body["stop"], body["logprobs"], body["top_logprobs"], body["n"]) == (["END"], True, 2, 2)


# --- OpenAI faults with OpenAI-only outcomes ----------------------------------------------------------


async def test_content_filter_is_a_finish_reason_on_openai(make: tuple[Make, list[httpx.Request]]) -> None:
    build, _ = make
    provider = build()
    unary = await provider.complete(call("sim-model+fault=filter"))
    assert unary.choices[0].finish_reason is FinishReason.CONTENT_FILTER
    assert unary.choices[0].text == ""
    streamed = await assemble(provider, call("sim-model+fault=filter"))
    assert streamed.choices[0].finish_reason is FinishReason.CONTENT_FILTER


async def test_invalid_key_message_never_shows_the_key(make: tuple[Make, list[httpx.Request]]) -> None:
    build, _ = make
    with pytest.raises(errors.UpstreamAuthenticationError) as caught:
        await build().complete(call("sim-model+fault=401"))
    assert "Incorrect API key provided" in caught.value.message
    assert SECRET not in caught.value.message
    assert SECRET[:8] not in caught.value.message  # not even the masked prefix OpenAI echoes
    assert caught.value.upstream_code == "invalid_api_key"


async def test_529_is_overloaded_and_quota_is_not_retryable(make: tuple[Make, list[httpx.Request]]) -> None:
    build, _ = make
    provider = build()
    with pytest.raises(errors.OverloadedError) as overloaded:
        await provider.complete(call("sim-model+fault=529+retry_after=3"))
    assert overloaded.value.retry_after_seconds == 3.0
    with pytest.raises(errors.QuotaExhaustedError) as quota:
        await provider.complete(call("sim-model+fault=quota"))
    assert not quota.value.retryable
    with pytest.raises(errors.ContextLengthExceededError) as context:
        async for _ in provider.stream(call("sim-model+fault=context")):
            pass
    assert "maximum context length" in context.value.message


async def test_rate_limit_without_header_uses_the_message_delay(
    make: tuple[Make, list[httpx.Request]],
) -> None:
    build, _ = make
    with pytest.raises(errors.RateLimitedError) as caught:
        await build().complete(call("sim-model+fault=429"))
    assert caught.value.retry_after_seconds == pytest.approx(26.604)


async def test_stream_drop_is_a_broken_stream(make: tuple[Make, list[httpx.Request]]) -> None:
    build, _ = make
    with pytest.raises(errors.StreamBrokenError):
        async for _ in build().stream(call("sim-model+fault=drop+after=2")):
            pass


async def test_stream_error_frame_is_a_server_error(make: tuple[Make, list[httpx.Request]]) -> None:
    build, _ = make
    with pytest.raises(errors.UpstreamServerError) as caught:
        async for _ in build().stream(call("sim-model+fault=stream_error+after=2")):
            pass
    assert "The server had an error" in caught.value.message


async def test_stream_hang_hits_the_total_timeout(make: tuple[Make, list[httpx.Request]]) -> None:
    build, _ = make
    with pytest.raises(errors.UpstreamTimeoutError):
        async for _ in build(total_timeout=0.3).stream(call("sim-model+fault=hang")):
            pass


# --- Azure --------------------------------------------------------------------------------------------


async def test_azure_url_key_and_annotations(make: tuple[Make, list[httpx.Request]], sim: RunningSim) -> None:
    build, sent = make
    provider = build("azure")
    unary = await provider.complete(call("my-deployment", max_tokens=6))
    streamed = await assemble(provider, call("my-deployment", max_tokens=6))
    assert sent[0].url.path == "/openai/deployments/my-deployment/chat/completions"
    assert sent[0].url.params["api-version"] == "2024-10-21"
    assert sent[0].headers["api-key"] == SECRET
    assert "authorization" not in sent[0].headers
    assert unary.upstream_request_id.startswith("sim-")
    assert unary.choices[0].finish_reason is FinishReason.LENGTH
    assert streamed.choices[0].text == unary.choices[0].text
    assert streamed.usage.output_tokens == unary.usage.output_tokens == 6
    assert [s.format for s in sim.simulator.served] == ["azure", "azure"]


async def test_azure_content_filter_is_an_error(make: tuple[Make, list[httpx.Request]]) -> None:
    build, _ = make
    provider = build("azure")
    with pytest.raises(errors.ContentFilteredError) as caught:
        await provider.complete(call("dep+fault=filter"))
    assert caught.value.upstream_code == "content_filter"
    assert caught.value.upstream_request_id.startswith("sim-")
    with pytest.raises(errors.ContentFilteredError):
        async for _ in provider.stream(call("dep+fault=filter")):
            pass


async def test_azure_refusals_before_any_work(
    make: tuple[Make, list[httpx.Request]], sim: RunningSim
) -> None:
    build, _ = make
    with pytest.raises(errors.UpstreamNotFoundError):
        await build("azure", api_version="").complete(call("dep"))
    with pytest.raises(errors.UpstreamAuthenticationError) as caught:
        await build("azure", api_key="").complete(call("dep"))
    assert "Access denied" in caught.value.message
    assert sim.simulator.served == []


async def test_azure_rate_limit_delay(make: tuple[Make, list[httpx.Request]]) -> None:
    build, _ = make
    provider = build("azure")
    with pytest.raises(errors.RateLimitedError) as from_message:
        await provider.complete(call("dep+fault=429"))
    assert from_message.value.retry_after_seconds == 6.0
    with pytest.raises(errors.RateLimitedError) as from_header:
        await provider.complete(call("dep+fault=429+retry_after=2"))
    assert from_header.value.retry_after_seconds == 2.0


# --- embeddings ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["openai", "azure"])
async def test_embeddings(make: tuple[Make, list[httpx.Request]], kind: str) -> None:
    build, sent = make
    provider = build(kind)
    deployment = Deployment("embed", kind, "text-embedding-3-small")
    first = await provider.embed(deployment, ["hello world", "relay"], 16)
    again = await provider.embed(deployment, ["relay"], 16)
    assert len(first.vectors) == 2
    assert all(len(v) == 16 for v in first.vectors)
    assert math.isclose(math.fsum(x * x for x in first.vectors[0]), 1.0, rel_tol=1e-5)
    assert again.vectors[0] == first.vectors[1]
    assert first.vectors[0] != first.vectors[1]
    assert first.usage.input_tokens == 3
    assert body_of(sent[0])["encoding_format"] == "float"
    expected = (
        "/v1/embeddings" if kind == "openai" else "/openai/deployments/text-embedding-3-small/embeddings"
    )
    assert sent[0].url.path == expected


async def test_embeddings_fault(make: tuple[Make, list[httpx.Request]]) -> None:
    build, _ = make
    with pytest.raises(errors.UpstreamNotFoundError):
        await build().embed(Deployment("e", "openai", "text-embedding-3-small+fault=404"), ["x"], 0)


# --- flavor quirks (unit level) -----------------------------------------------------------------------


def _events(*frames: dict[str, Any] | str) -> list[SSEEvent]:
    return [SSEEvent(f if isinstance(f, str) else json.dumps(f)) for f in frames]


def _chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"id": "c1", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}


def _run(parser: openai.StreamParser, events: list[SSEEvent]) -> Any:
    chunks = [c for e in events for c in parser.feed(e)] + parser.end()
    assert isinstance(chunks[-1], UsageChunk)
    return Assembler().extend(chunks).result()


def test_groq_usage_in_x_groq() -> None:
    usage = {"prompt_tokens": 21, "completion_tokens": 4, "total_tokens": 25, "queue_time": 0.01}
    events = _events(
        _chunk({"role": "assistant", "content": ""}, x_groq={"id": "req_01"}),
        _chunk({"content": "Hi there"}),
        _chunk({}, "stop", x_groq={"id": "req_01", "usage": usage}),
        "[DONE]",
    )
    result = _run(openai.StreamParser("groq", "groq"), events)
    assert result.choices[0].text == "Hi there"
    assert (result.usage.input_tokens, result.usage.output_tokens, result.usage.estimated) == (21, 4, False)
    # Without the groq flavor x_groq means nothing: the usage is estimated.
    assert _run(openai.StreamParser("other", ""), events).usage.estimated
    assert "stream_options" not in openai.build_body(call(), stream=True, flavor="groq")


def test_deepseek_reasoning_content_and_usage_on_the_finish_chunk() -> None:
    usage = {
        "prompt_tokens": 30,
        "completion_tokens": 50,
        "prompt_cache_hit_tokens": 24,
        "prompt_cache_miss_tokens": 6,
        "completion_tokens_details": {"reasoning_tokens": 40},
    }
    events = _events(
        _chunk({"role": "assistant", "content": None, "reasoning_content": "Let me think"}, usage=None),
        _chunk({"content": None, "reasoning_content": " hard."}, usage=None),
        _chunk({"content": "42", "reasoning_content": None}, usage=None),
        _chunk({"content": ""}, "stop", usage=usage),
        "[DONE]",
    )
    result = _run(openai.StreamParser("deepseek", "deepseek"), events)
    choice = result.choices[0]
    assert (choice.text, choice.reasoning) == ("42", "Let me think hard.")
    assert (result.usage.input_tokens, result.usage.cached_input_tokens) == (30, 24)
    assert (result.usage.output_tokens, result.usage.reasoning_tokens) == (50, 40)
    unary = openai.parse_response(
        {
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "42", "reasoning_content": "Because."},
                    "finish_reason": "stop",
                }
            ],
            "usage": usage,
        },
        flavor="deepseek",
    )
    assert (unary.choices[0].text, unary.choices[0].reasoning) == ("42", "Because.")


def test_mistral_random_seed_and_thinking_blocks() -> None:
    body = openai.build_body(call(seed=11, max_tokens=9), stream=True, flavor="mistral")
    assert body["random_seed"] == 11
    assert "seed" not in body
    assert body["max_tokens"] == 9
    assert "stream_options" not in body
    thinking = [
        {"type": "thinking", "thinking": [{"type": "text", "text": "Hmm."}]},
        {"type": "text", "text": "Yes"},
    ]
    result = openai.parse_response(
        {
            "choices": [
                {"index": 0, "message": {"content": thinking, "tool_calls": None}, "finish_reason": "stop"}
            ]
        },
        flavor="mistral",
    )
    assert (result.choices[0].text, result.choices[0].reasoning) == ("Yes", "Hmm.")
    assert result.usage.estimated


def test_openai_refusal_and_legacy_function_call() -> None:
    refused = openai.parse_response(
        {
            "choices": [
                {
                    "index": 0,
                    "message": {"content": None, "refusal": "I can't help."},
                    "finish_reason": "stop",
                }
            ]
        }
    )
    assert refused.choices[0].refusal == "I can't help."
    assert refused.choices[0].finish_reason is FinishReason.REFUSAL
    legacy = openai.parse_response(
        {
            "choices": [
                {
                    "index": 0,
                    "message": {"content": None, "function_call": {"name": "f", "arguments": '{"a":1}'}},
                    "finish_reason": "function_call",
                }
            ]
        }
    )
    assert legacy.choices[0].finish_reason is FinishReason.TOOL_CALLS
    assert legacy.choices[0].tool_calls[0].name == "f"
    assert legacy.choices[0].tool_calls[0].arguments_json == '{"a":1}'


def test_two_choices_stream_each_finish_once() -> None:
    frames = _events(
        {"choices": [{"index": 0, "delta": {"content": "a"}}, {"index": 1, "delta": {"content": "b"}}]},
        {"choices": [{"index": 1, "delta": {}, "finish_reason": "length"}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}},
        "[DONE]",
    )
    result = _run(openai.StreamParser(), frames)
    assert [(c.text, c.finish_reason) for c in result.choices] == [
        ("a", FinishReason.STOP),
        ("b", FinishReason.LENGTH),
    ]
    assert result.usage.output_tokens == 2


def test_in_stream_error_events() -> None:
    # Groq: `event: error` then the connection closes; the frame's own status decides the class.
    groq = SSEEvent('{"error":{"message":"tool call validation failed","code":400}}', event="error")
    with pytest.raises(errors.UpstreamInvalidRequestError) as caught:
        openai.StreamParser("groq", "groq").feed(groq)
    assert "tool call validation failed" in caught.value.message
    # A bare error object under `event: error` still reads; without a status it is a server error.
    with pytest.raises(errors.UpstreamServerError) as bare:
        openai.StreamParser().feed(SSEEvent('{"message":"boom"}', event="error"))
    assert bare.value.message == "openai: boom"
    with pytest.raises(errors.RateLimitedError):
        openai.StreamParser().feed(SSEEvent('{"error":{"message":"slow down","code":"rate_limit_exceeded"}}'))
