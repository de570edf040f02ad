"""The OpenAI adapter against recorded OpenAI traffic (and Ollama's /v1, through the ollama flavor).

Every file of ../shared/fixtures/providers/openai/ is read here; the last test
fails when a fixture is added without a test. Streams are replayed through the
SSE decoder whole, one byte at a time and seven bytes at a time, and must
assemble to the same answer every time.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import grpc
import httpx
import pytest

from omnirelay import errors
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
    TextPart,
    TokenLogprob,
    ToolSpec,
    UsageChunk,
)
from omnirelay.providers import openai
from omnirelay.providers.assemble import Assembler
from omnirelay.providers.http import HttpTransport
from omnirelay.providers.sse import SSEDecoder
from tests.providers.conftest import FIXTURES, fixture_bytes, fixture_http, fixture_json

SPLITS = [None, 1, 7]


def replay(
    raw: bytes, split: int | None, parser: openai.StreamParser
) -> tuple[CompletionResult, list[StreamChunk]]:
    """Feed ``raw`` through the SSE decoder in pieces of ``split`` bytes (None: whole) and assemble."""
    decoder = SSEDecoder()
    chunks: list[StreamChunk] = []
    step = split or len(raw)
    for start in range(0, len(raw), step):
        for event in decoder.feed(raw[start : start + step]):
            chunks.extend(parser.feed(event))
    for event in decoder.flush():
        chunks.extend(parser.feed(event))
    chunks.extend(parser.end())
    return Assembler().extend(chunks).result(), chunks


def sse_body(relative: str) -> bytes:
    """A stream fixture's body: a .sse file, or the body of a recorded .http exchange."""
    if relative.endswith(".http"):
        return fixture_http(relative)[2]
    return fixture_bytes(relative)


Handler = Callable[[httpx.Request], httpx.Response]


def recorded(relative: str, seen: list[httpx.Request] | None = None) -> Handler:
    """An httpx handler answering every request with a recorded .http exchange."""
    status, headers, body = fixture_http(relative)

    def handle(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        return httpx.Response(status, headers=headers, stream=httpx.ByteStream(body))

    return handle


def answering(status: int, body: bytes, headers: dict[str, str] | None = None) -> Handler:
    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, headers=headers or {}, stream=httpx.ByteStream(body))

    return handle


def settings(kind: str = "openai", **overrides: Any) -> HttpProviderSettings:
    base = {"openai": "https://api.openai.com/v1", "azure": "https://res.openai.azure.com"}[kind]
    values: dict[str, Any] = {"name": kind, "kind": kind, "base_url": base, "api_key": "sk-fixture-key"}
    values.update(overrides)
    return HttpProviderSettings(**values)


def mocked_transport(config: HttpProviderSettings, handler: Handler) -> HttpTransport:
    client = httpx.AsyncClient(base_url=config.base_url, transport=httpx.MockTransport(handler))
    return HttpTransport(config, client=client)


def simple_call(prompt: str = "hello", model: str = "gpt-4o-mini", **sampling: Any) -> ProviderCall:
    request = CompletionRequest(model=model, messages=(Message(Role.USER, (TextPart(prompt),)),))
    return ProviderCall(request, Sampling(**sampling), Deployment(model, "openai", model))


COVERED: set[str] = set()


def covers(*names: str) -> None:
    COVERED.update(names)


# --- unary responses ----------------------------------------------------------------------------------

covers("chat_completion.json")


def test_chat_completion() -> None:
    result = openai.parse_response(fixture_json("openai/chat_completion.json"))
    (choice,) = result.choices
    assert choice.text == "YES"
    assert choice.finish_reason is FinishReason.STOP
    assert choice.tool_calls == ()
    assert choice.refusal == ""
    assert choice.logprobs is None
    assert result.usage.input_tokens == 146
    assert result.usage.output_tokens == 3
    assert result.usage.cached_input_tokens == 0
    assert result.usage.reasoning_tokens == 0
    assert not result.usage.estimated


covers("chat_completion_finish_reason_length.json")


def test_chat_completion_finish_reason_length() -> None:
    result = openai.parse_response(fixture_json("openai/chat_completion_finish_reason_length.json"))
    assert result.choices[0].text == '{"'
    assert result.choices[0].finish_reason is FinishReason.LENGTH
    assert (result.usage.input_tokens, result.usage.output_tokens) == (79, 1)


covers("chat_completion_tool_calls_http_200.http")


async def test_chat_completion_tool_calls_over_http_keeps_the_request_id() -> None:
    seen: list[httpx.Request] = []
    config = settings()
    provider = openai.OpenAIProvider(
        config, mocked_transport(config, recorded("openai/chat_completion_tool_calls_http_200.http", seen))
    )
    result = await provider.complete(simple_call(max_tokens=50))
    await provider.aclose()
    (choice,) = result.choices
    assert choice.text == ""
    assert choice.finish_reason is FinishReason.TOOL_CALLS
    (tool,) = choice.tool_calls
    assert tool.id == "call_TTY8UFNo7rNCaOBUNtlRSvMG"
    assert tool.name == "lookup_population"
    assert json.loads(tool.arguments_json) == {"country": "Crumpet"}
    assert (result.usage.input_tokens, result.usage.output_tokens) == (92, 17)
    assert result.upstream_request_id == "req_1e7dabaf1f0dba1ec89a134d3bde8476"
    (request,) = seen
    assert request.url == "https://api.openai.com/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer sk-fixture-key"
    # api.openai.com takes max_completion_tokens (max_tokens is deprecated there).
    assert json.loads(request.content)["max_completion_tokens"] == 50


covers("chat_completion_tool_calls_strict.json")


def test_chat_completion_tool_calls_strict() -> None:
    result = openai.parse_response(fixture_json("openai/chat_completion_tool_calls_strict.json"))
    (tool,) = result.choices[0].tool_calls
    assert tool.id == "call_Y6qJ7ofLgOrBnMD5WbVAeiRV"
    assert tool.name == "GetWeatherArgs"
    assert tool.arguments_json == '{"city":"Edinburgh","country":"UK","units":"c"}'
    assert result.choices[0].finish_reason is FinishReason.TOOL_CALLS
    assert (result.usage.input_tokens, result.usage.output_tokens) == (76, 24)


# --- streams ------------------------------------------------------------------------------------------

covers("chat_stream_finish_reason_length.sse")


@pytest.mark.parametrize("split", SPLITS)
def test_stream_finish_reason_length(split: int | None) -> None:
    result, chunks = replay(
        sse_body("openai/chat_stream_finish_reason_length.sse"), split, openai.StreamParser()
    )
    assert result.choices[0].text == '{"'
    assert result.choices[0].finish_reason is FinishReason.LENGTH
    assert (result.usage.input_tokens, result.usage.output_tokens) == (79, 1)
    assert isinstance(chunks[-1], UsageChunk)
    assert sum(isinstance(c, UsageChunk) for c in chunks) == 1


covers("chat_stream_include_usage.sse")


@pytest.mark.parametrize("split", SPLITS)
def test_stream_include_usage(split: int | None) -> None:
    result, _ = replay(sse_body("openai/chat_stream_include_usage.sse"), split, openai.StreamParser())
    text = result.choices[0].text
    assert text.startswith("I'm unable to provide real-time weather updates. To get the current weather")
    assert text.endswith("checking a reliable weather website or a weather app.")
    assert result.choices[0].finish_reason is FinishReason.STOP
    assert result.usage.input_tokens == 14
    assert result.usage.output_tokens == 30
    assert result.usage.reasoning_tokens == 0
    assert not result.usage.estimated


covers("chat_stream_logprobs.sse")


@pytest.mark.parametrize("split", SPLITS)
def test_stream_logprobs(split: int | None) -> None:
    result, _ = replay(sse_body("openai/chat_stream_logprobs.sse"), split, openai.StreamParser())
    choice = result.choices[0]
    assert choice.text == "Foo!"
    assert choice.logprobs == (TokenLogprob("Foo", -0.0025094282), TokenLogprob("!", -0.26638845))
    assert choice.finish_reason is FinishReason.STOP
    assert (result.usage.input_tokens, result.usage.output_tokens) == (9, 2)


covers("chat_stream_tool_call.sse")


@pytest.mark.parametrize("split", SPLITS)
def test_stream_tool_call(split: int | None) -> None:
    result, _ = replay(sse_body("openai/chat_stream_tool_call.sse"), split, openai.StreamParser())
    choice = result.choices[0]
    (tool,) = choice.tool_calls
    assert tool.id == "call_4XzlGBLtUe9dy3GVNV4jhq7h"
    assert tool.name == "get_weather"
    assert tool.arguments_json == '{"city":"New York City"}'
    assert choice.text == ""
    assert choice.finish_reason is FinishReason.TOOL_CALLS
    assert (result.usage.input_tokens, result.usage.output_tokens) == (44, 16)


covers("chat_stream_tool_call_include_usage_http_200.http")


@pytest.mark.parametrize("split", SPLITS)
def test_stream_tool_call_include_usage(split: int | None) -> None:
    body = sse_body("openai/chat_stream_tool_call_include_usage_http_200.http")
    result, _ = replay(body, split, openai.StreamParser())
    (tool,) = result.choices[0].tool_calls
    assert tool.id == "call_1EYWDzueHEp8OsB8jJSEp7WB"
    assert tool.name == "multiply"
    assert tool.arguments_json == '{"a":1231,"b":2331}'
    assert result.choices[0].finish_reason is FinishReason.TOOL_CALLS
    assert (result.usage.input_tokens, result.usage.output_tokens, result.usage.cached_input_tokens) == (
        54,
        20,
        0,
    )


async def test_stream_over_http_matches_the_replay() -> None:
    config = settings()
    handler = recorded("openai/chat_stream_tool_call_include_usage_http_200.http")
    provider = openai.OpenAIProvider(config, mocked_transport(config, handler))
    chunks = [c async for c in provider.stream(simple_call())]
    await provider.aclose()
    result = Assembler().extend(chunks).result()
    assert result.choices[0].tool_calls[0].arguments_json == '{"a":1231,"b":2331}'
    assert result.usage.output_tokens == 20
    assert isinstance(chunks[-1], UsageChunk)


@pytest.mark.parametrize("split", SPLITS)
def test_stream_cut_before_done_is_broken(split: int | None) -> None:
    raw = sse_body("openai/chat_stream_include_usage.sse")
    cut = raw[: raw.rindex(b"data: [DONE]")]
    with pytest.raises(errors.StreamBrokenError) as caught:
        replay(cut, split, openai.StreamParser())
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert caught.value.retryable


def test_stream_done_without_a_finish_is_broken() -> None:
    raw = sse_body("openai/chat_stream_logprobs.sse")
    frames = raw.split(b"\n\n")
    without_finish = b"\n\n".join(f for f in frames if b'"finish_reason":"stop"' not in f)
    with pytest.raises(errors.StreamBrokenError):
        replay(without_finish, None, openai.StreamParser())


def test_stream_frame_that_is_not_json_is_malformed() -> None:
    raw = sse_body("openai/chat_stream_logprobs.sse")
    with pytest.raises(errors.MalformedResponseError):
        replay(raw[:300] + b"\n\ndata: [DONE]\n\n", None, openai.StreamParser())


def test_mid_stream_error_frame_is_mapped() -> None:
    raw = sse_body("openai/chat_stream_logprobs.sse")
    first = raw[: raw.index(b"\n\n") + 2]
    error = (
        b'data: {"error":{"message":"The server had an error while processing your request.",'
        b'"type":"server_error"}}\n\n'
    )
    with pytest.raises(errors.UpstreamServerError) as caught:
        replay(first + error, None, openai.StreamParser())
    assert "server had an error" in caught.value.message
    assert caught.value.retryable


# --- embeddings ---------------------------------------------------------------------------------------

covers("embeddings_response_base64.json")


def test_embeddings_base64_decode_to_floats() -> None:
    result = openai.parse_embeddings(fixture_json("openai/embeddings_response_base64.json"))
    (vector,) = result.vectors
    assert len(vector) == 128
    assert vector[:3] == pytest.approx((-0.05322972685, -0.07020206749, -0.00470236316))
    assert vector[-1] == pytest.approx(0.15935346484)
    assert result.usage.input_tokens == 4


async def test_embeddings_request_shape() -> None:
    seen: list[httpx.Request] = []
    body = json.dumps(
        {
            "object": "list",
            "data": [{"object": "embedding", "index": 0, "embedding": [0.5, -0.25]}],
            "model": "text-embedding-3-small",
            "usage": {"prompt_tokens": 2, "total_tokens": 2},
        }
    ).encode()

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=body)

    config = settings()
    provider = openai.OpenAIProvider(config, mocked_transport(config, handle))
    result = await provider.embed(Deployment("e", "openai", "text-embedding-3-small"), ["hi there"], 2)
    await provider.aclose()
    assert result.vectors == ((0.5, -0.25),)
    assert seen[0].url == "https://api.openai.com/v1/embeddings"
    assert json.loads(seen[0].content) == {
        "model": "text-embedding-3-small",
        "input": ["hi there"],
        "dimensions": 2,
        "encoding_format": "float",
    }


covers("error_404_embeddings_model_not_found.http")


async def test_embeddings_model_not_found() -> None:
    config = settings()
    handler = recorded("openai/error_404_embeddings_model_not_found.http")
    provider = openai.OpenAIProvider(config, mocked_transport(config, handler))
    with pytest.raises(errors.UpstreamNotFoundError) as caught:
        await provider.embed(Deployment("e", "openai", "nonexistent"), ["x"], 0)
    await provider.aclose()
    assert caught.value.code == grpc.StatusCode.NOT_FOUND
    assert "The model `nonexistent` does not exist" in caught.value.message
    assert caught.value.upstream_code == "model_not_found"


# --- errors -------------------------------------------------------------------------------------------

ERROR_FILES = [
    (
        "error_400_context_length_exceeded.json",
        400,
        errors.ContextLengthExceededError,
        grpc.StatusCode.INVALID_ARGUMENT,
        "context_length_exceeded",
    ),
    (
        "error_401_invalid_api_key.json",
        401,
        errors.UpstreamAuthenticationError,
        grpc.StatusCode.UNAUTHENTICATED,
        "invalid_api_key",
    ),
    (
        "error_429_insufficient_quota.json",
        429,
        errors.QuotaExhaustedError,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "insufficient_quota",
    ),
    (
        "error_429_rate_limit_exceeded.json",
        429,
        errors.RateLimitedError,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "rate_limit_exceeded",
    ),
    (
        "error_500_server_error.json",
        500,
        errors.UpstreamServerError,
        grpc.StatusCode.UNAVAILABLE,
        "server_error",
    ),
]
covers(*(f[0] for f in ERROR_FILES))


@pytest.mark.parametrize(
    ("name", "status", "cls", "code", "upstream_code"), ERROR_FILES, ids=[f[0] for f in ERROR_FILES]
)
def test_error_bodies(
    name: str, status: int, cls: type[errors.UpstreamError], code: grpc.StatusCode, upstream_code: str
) -> None:
    error = openai.parse_error(status, {}, fixture_bytes(f"openai/{name}"))
    assert type(error) is cls
    assert error.code == code
    assert error.http_status == status
    assert error.upstream_code == upstream_code
    assert error.message.startswith("openai: ")


def test_rate_limit_delay_from_the_message_and_from_headers() -> None:
    body = fixture_bytes("openai/error_429_rate_limit_exceeded.json")
    assert openai.parse_error(429, {}, body).retry_after_seconds == pytest.approx(26.604)
    headers = {"retry-after-ms": "1500", "x-request-id": "req_abc"}
    error = openai.parse_error(429, headers, body)
    assert error.retry_after_seconds == 1.5
    assert error.upstream_request_id == "req_abc"
    assert error.retryable


def test_quota_is_not_retryable() -> None:
    error = openai.parse_error(429, {}, fixture_bytes("openai/error_429_insufficient_quota.json"))
    assert not error.retryable
    assert "exceeded your current quota" in error.message


def test_server_error_request_id_from_the_message() -> None:
    error = openai.parse_error(500, {}, fixture_bytes("openai/error_500_server_error.json"))
    assert error.upstream_request_id == "req_540c6eaab7f4556b2baa22bcba915d51"
    assert error.retryable


def test_invalid_key_message_never_shows_the_key() -> None:
    error = openai.parse_error(401, {}, fixture_bytes("openai/error_401_invalid_api_key.json"))
    assert "sk-VKMIs" not in error.message
    assert "wjh3" not in error.message
    assert "Incorrect API key provided" in error.message
    secret = openai.parse_error(
        401, {}, b'{"error":{"message":"bad key abc123secret","code":"x"}}', secret="abc123secret"
    )
    assert "abc123secret" not in secret.message


covers("error_400_unsupported_value.http", "error_404_model_not_found.http")


async def test_error_http_exchanges_over_the_provider() -> None:
    config = settings()
    for name, cls, code, text in [
        (
            "error_400_unsupported_value.http",
            errors.UpstreamInvalidRequestError,
            "unsupported_value",
            "Unsupported value",
        ),
        ("error_404_model_not_found.http", errors.UpstreamNotFoundError, "model_not_found", "gpt-5.2-proo"),
    ]:
        provider = openai.OpenAIProvider(config, mocked_transport(config, recorded(f"openai/{name}")))
        with pytest.raises(errors.UpstreamError) as caught:
            await provider.complete(simple_call())
        with pytest.raises(errors.UpstreamError) as streamed:
            async for _ in provider.stream(simple_call()):
                pass
        await provider.aclose()
        for error in (caught.value, streamed.value):
            assert type(error) is cls
            assert error.upstream_code == code
            assert text in error.message


def test_non_json_error_bodies_classify_by_status() -> None:
    assert type(openai.parse_error(502, {}, b"<html>Bad gateway</html>")) is errors.UpstreamServerError
    assert type(openai.parse_error(503, {}, b"")) is errors.OverloadedError
    assert type(openai.parse_error(401, {}, b"nope")) is errors.UpstreamAuthenticationError
    assert type(openai.parse_error(429, {"retry-after": "7"}, b"")) is errors.RateLimitedError
    assert openai.parse_error(429, {"retry-after": "7"}, b"").retry_after_seconds == 7.0


async def test_malformed_2xx_body() -> None:
    config = settings()
    provider = openai.OpenAIProvider(
        config, mocked_transport(config, answering(200, b'{"id": "chatcmpl-1", "choi'))
    )
    with pytest.raises(errors.MalformedResponseError):
        await provider.complete(simple_call())
    await provider.aclose()
    with pytest.raises(errors.MalformedResponseError):
        openai.parse_response({"id": "x", "object": "chat.completion"})
    with pytest.raises(errors.MalformedResponseError):
        openai.parse_response([1, 2])


# --- requests -----------------------------------------------------------------------------------------

covers("request_chat_stream_tools.json")


def test_request_chat_stream_tools() -> None:
    tool = ToolSpec(
        "multiply",
        "Multiply two numbers.",
        {
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
            "type": "object",
        },
    )
    request = CompletionRequest(
        model="gpt-4o-mini",
        messages=(Message(Role.USER, (TextPart("What is 1231 * 2331?"),)),),
        tools=(tool,),
    )
    call = ProviderCall(request, Sampling(), Deployment("gpt-4o-mini", "openai", "gpt-4o-mini"))
    assert openai.build_body(call, stream=True) == fixture_json("openai/request_chat_stream_tools.json")


# --- Ollama's /v1 (the ollama flavor) -----------------------------------------------------------------


def test_ollama_compat_response_reasoning() -> None:
    result = openai.parse_response(fixture_json("ollama/openai_compat_chat_response.json"), flavor="ollama")
    choice = result.choices[0]
    assert choice.text == ""
    assert choice.reasoning == "Okay, the user asked me to say hello. This is a very simple and common"
    assert choice.finish_reason is FinishReason.LENGTH
    assert (result.usage.input_tokens, result.usage.output_tokens) == (13, 20)


@pytest.mark.parametrize("split", SPLITS)
def test_ollama_compat_stream_without_usage_is_estimated(split: int | None) -> None:
    parser = openai.StreamParser("ollama", "ollama", (Message(Role.USER, (TextPart("say hello"),)),))
    result, chunks = replay(sse_body("ollama/openai_compat_chat_stream.sse"), split, parser)
    assert result.choices[0].reasoning == "Okay"
    assert result.choices[0].text == ""
    assert result.choices[0].finish_reason is FinishReason.LENGTH
    assert result.usage.estimated
    assert result.usage.output_tokens == 1  # "Okay"
    assert result.usage.input_tokens == 5  # "say hello" plus the per-message overhead of 3
    assert isinstance(chunks[-1], UsageChunk)


# --- coverage of the fixture folder -------------------------------------------------------------------


def test_every_openai_fixture_has_a_test() -> None:
    present = {p.name for p in (FIXTURES / "openai").iterdir()}
    assert present == COVERED
