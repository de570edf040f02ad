"""The Anthropic adapter against real recorded traffic (shared fixtures anthropic/*), without HTTP."""

from __future__ import annotations

import json
from collections.abc import Callable

import grpc
import httpx
import pytest

from omnirelay.config.schema import HttpProviderSettings
from omnirelay.domain import (
    CompletionRequest,
    CompletionResult,
    Deployment,
    FinishReason,
    ImagePart,
    Message,
    ProviderCall,
    Role,
    Sampling,
    StreamChunk,
    TextPart,
    TokenUsage,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    ToolChoiceMode,
    ToolSpec,
)
from omnirelay.errors import (
    ContextLengthExceededError,
    InvalidArgumentError,
    MalformedResponseError,
    OverloadedError,
    QuotaExhaustedError,
    RateLimitedError,
    StreamBrokenError,
    UpstreamAuthenticationError,
    UpstreamError,
    UpstreamInvalidRequestError,
    UpstreamNotFoundError,
    UpstreamServerError,
)
from omnirelay.providers.anthropic import (
    AnthropicProvider,
    AnthropicStreamParser,
    build_body,
    parse_error,
    parse_response,
)
from omnirelay.providers.assemble import Assembler
from omnirelay.providers.base import ChatProvider
from omnirelay.providers.http import HttpTransport
from omnirelay.providers.sse import SSEDecoder
from tests.providers.conftest import fixture_bytes, fixture_http, fixture_json

SPLITS = (0, 1, 7)  # 0 = the whole body in one chunk


def replay_chunks(raw: bytes, split: int) -> list[StreamChunk]:
    """The chunks the parser gives for a recorded body delivered in pieces of ``split`` bytes."""
    decoder = SSEDecoder()
    parser = AnthropicStreamParser("anthropic", "req_test")
    pieces = [raw] if split == 0 else [raw[i : i + split] for i in range(0, len(raw), split)]
    chunks: list[StreamChunk] = []
    for piece in pieces:
        for event in decoder.feed(piece):
            chunks.extend(parser.feed(event))
    for event in decoder.flush():
        chunks.extend(parser.feed(event))
    chunks.extend(parser.end())
    return chunks


def replay(relative: str) -> CompletionResult:
    """The assembled result of a recorded stream; every split gives the same result."""
    raw = fixture_bytes(relative)
    results = [Assembler().extend(replay_chunks(raw, split)).result() for split in SPLITS]
    assert results[1] == results[0]
    assert results[2] == results[0]
    return results[0]


def replay_error(raw: bytes) -> UpstreamError:
    caught: list[UpstreamError] = []
    for split in SPLITS:
        with pytest.raises(UpstreamError) as info:
            replay_chunks(raw, split)
        caught.append(info.value)
    assert {type(e) for e in caught} == {type(caught[0])}
    return caught[0]


# Unary answers.


def test_messages_response() -> None:
    result = parse_response(fixture_json("anthropic/messages_response.json"), upstream_request_id="req_x")
    (choice,) = result.choices
    assert choice.index == 0
    assert choice.text == '{"product_name": "Green Tea", "price": 5.50, "quantity": 2}'
    assert choice.finish_reason is FinishReason.STOP
    assert choice.tool_calls == ()
    assert choice.reasoning == ""
    assert result.usage == TokenUsage(input_tokens=249, output_tokens=26, cached_input_tokens=0)
    assert result.upstream_request_id == "req_x"


def test_messages_response_cache_usage_counts_cache_reads_and_writes_as_input() -> None:
    result = parse_response(fixture_json("anthropic/messages_response_cache_usage.json"))
    (choice,) = result.choices
    assert choice.text.startswith("Based on the refund policy for order-123, **yes, you can get a refund!**")
    assert choice.text.endswith("Would you like help with anything else regarding this refund?")
    assert choice.finish_reason is FinishReason.STOP
    # input_tokens 6 + cache_read 1069 + cache_creation 85.
    assert result.usage == TokenUsage(
        input_tokens=1160, output_tokens=110, cached_input_tokens=1069, cache_write_input_tokens=85
    )


def test_messages_response_stop_sequence() -> None:
    result = parse_response(fixture_json("anthropic/messages_response_stop_sequence.json"))
    (choice,) = result.choices
    assert choice.text == "The beautiful city of "
    assert choice.finish_reason is FinishReason.STOP
    assert result.usage == TokenUsage(input_tokens=32, output_tokens=5)


def test_messages_response_tool_use() -> None:
    result = parse_response(fixture_json("anthropic/messages_response_tool_use.json"))
    (choice,) = result.choices
    assert choice.text == ""
    assert choice.finish_reason is FinishReason.TOOL_CALLS
    assert choice.tool_calls == (
        ToolCall(
            "toolu_01A9HHF5Ezy3oBrKmSgfASm9", "get_weather", '{"location": "San Francisco, CA", "units": "f"}'
        ),
    )
    assert result.usage == TokenUsage(input_tokens=656, output_tokens=74)


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("end_turn", FinishReason.STOP),
        ("stop_sequence", FinishReason.STOP),
        ("pause_turn", FinishReason.STOP),
        ("max_tokens", FinishReason.LENGTH),
        ("tool_use", FinishReason.TOOL_CALLS),
        ("refusal", FinishReason.REFUSAL),
        ("something_new", FinishReason.UNKNOWN),
        (None, FinishReason.UNKNOWN),
    ],
)
def test_stop_reasons(stop_reason: str | None, finish: FinishReason) -> None:
    data = fixture_json("anthropic/messages_response.json")
    data["stop_reason"] = stop_reason
    assert parse_response(data).choices[0].finish_reason is finish


def test_thinking_blocks_become_reasoning() -> None:
    data = fixture_json("anthropic/messages_response.json")
    data["content"] = [
        {"type": "thinking", "thinking": "Two pelican names.", "signature": "EuYB"},
        {"type": "redacted_thinking", "data": "opaque"},
        {"type": "text", "text": "Scoop and Beaky"},
    ]
    (choice,) = parse_response(data).choices
    assert choice.reasoning == "Two pelican names."
    assert choice.text == "Scoop and Beaky"


@pytest.mark.parametrize(
    "data",
    [
        [],
        {"content": "text instead of blocks", "stop_reason": "end_turn"},
        {"content": [{"type": "text"}], "stop_reason": "end_turn"},
        {"content": [{"type": "tool_use", "id": "toolu_1"}]},
        {"stop_reason": "end_turn"},
    ],
)
def test_malformed_answers(data: object) -> None:
    with pytest.raises(MalformedResponseError) as info:
        parse_response(data, upstream_request_id="req_bad")
    assert info.value.code is grpc.StatusCode.UNAVAILABLE
    assert info.value.upstream_request_id == "req_bad"


# Streams.


def test_messages_stream() -> None:
    result = replay("anthropic/messages_stream.sse")
    (choice,) = result.choices
    assert choice.text == "[12345,67890]"
    assert choice.finish_reason is FinishReason.STOP
    # message_delta repeats input_tokens cumulatively: taken, not added (135, not 270).
    assert result.usage == TokenUsage(input_tokens=135, output_tokens=10)


def test_messages_stream_docs_basic() -> None:
    result = replay("anthropic/messages_stream_docs_basic.sse")
    (choice,) = result.choices
    assert choice.text == "Hello!"
    assert choice.finish_reason is FinishReason.STOP
    # Input from message_start, output from message_delta (15 replaces the start's 1).
    assert result.usage == TokenUsage(input_tokens=25, output_tokens=15)


def test_messages_stream_docs_thinking() -> None:
    result = replay("anthropic/messages_stream_docs_thinking.sse")
    (choice,) = result.choices
    assert choice.reasoning == (
        "Let me solve this step by step:\n\n1. First break down 27 * 453\n2. 453 = 400 + 50 + 3"
        "\n3. 27 * 400 = 10,800\n4. 27 * 50 = 1,350\n5. 27 * 3 = 81\n6. 10,800 + 1,350 + 81 = 12,231"
    )
    assert choice.text == "27 * 453 = 12,231"
    assert "EqQB" not in choice.text + choice.reasoning  # signature_delta is not content
    assert choice.finish_reason is FinishReason.STOP
    assert result.usage == TokenUsage()  # the docs example carries no usage at all


def test_messages_stream_thinking() -> None:
    result = replay("anthropic/messages_stream_thinking.sse")
    (choice,) = result.choices
    assert choice.reasoning.startswith("The person is asking for two names for a pet pelican, and they want")
    assert choice.reasoning.endswith("I'll keep my response very short as requested.")
    assert "\n\n1. Something that relates to their large beak/pouch\n2. " in choice.reasoning
    assert choice.text == "Scoop and Beaky"
    assert choice.finish_reason is FinishReason.STOP
    assert result.usage == TokenUsage(input_tokens=45, output_tokens=94)


def test_messages_stream_tool_use() -> None:
    result = replay("anthropic/messages_stream_tool_use.sse")
    (choice,) = result.choices
    assert choice.text == ""
    assert choice.finish_reason is FinishReason.TOOL_CALLS
    assert choice.tool_calls == (
        ToolCall(
            "toolu_018acGYLtfR52q9yDbWaEdQZ", "get_weather", '{"location": "San Francisco, CA", "units": "f"}'
        ),
    )
    assert result.usage == TokenUsage(input_tokens=656, output_tokens=74)


def test_messages_stream_docs_tool_use_after_text() -> None:
    result = replay("anthropic/messages_stream_docs_tool_use.sse")
    (choice,) = result.choices
    assert choice.text == "Okay, let's check the weather for San Francisco, CA:"
    assert choice.finish_reason is FinishReason.TOOL_CALLS
    assert choice.tool_calls == (
        ToolCall(
            "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
            "get_weather",
            '{"location": "San Francisco, CA", "unit": "fahrenheit"}',
        ),
    )
    assert result.usage == TokenUsage(input_tokens=472, output_tokens=89)


def test_tool_call_deltas_are_numbered_among_tool_calls_not_content_blocks() -> None:
    chunks = replay_chunks(fixture_bytes("anthropic/messages_stream_docs_tool_use.sse"), 0)
    deltas = [c for c in chunks if isinstance(c, ToolCallDelta)]
    # The tool_use block is content block 1, but the choice's first tool call.
    assert {d.index for d in deltas} == {0}
    assert (deltas[0].id, deltas[0].name) == ("toolu_01T1x1fJ34qAmk2tNTrN7Up6", "get_weather")
    assert all(d.id == "" and d.name == "" for d in deltas[1:])
    # The empty first input_json_delta is not forwarded.
    assert all(d.arguments_delta for d in deltas[1:])


def test_second_tool_call_gets_index_one() -> None:
    raw = fixture_bytes("anthropic/messages_stream_tool_use.sse").decode()
    frames = raw.split("\n\n")
    start = next(i for i, f in enumerate(frames) if "content_block_stop" in f)
    second = [
        'event: content_block_start\ndata: {"type":"content_block_start","index":1,"content_block":'
        '{"type":"tool_use","id":"toolu_2","name":"get_time","input":{}}}',
        'event: content_block_delta\ndata: {"type":"content_block_delta","index":1,"delta":'
        '{"type":"input_json_delta","partial_json":"{\\"tz\\": \\"UTC\\"}"}}',
        'event: content_block_stop\ndata: {"type":"content_block_stop","index":1}',
    ]
    body = "\n\n".join([*frames[: start + 1], *second, *frames[start + 1 :]]).encode()
    (choice,) = Assembler().extend(replay_chunks(body, 0)).result().choices
    assert [(c.id, c.name, c.arguments_json) for c in choice.tool_calls] == [
        ("toolu_018acGYLtfR52q9yDbWaEdQZ", "get_weather", '{"location": "San Francisco, CA", "units": "f"}'),
        ("toolu_2", "get_time", '{"tz": "UTC"}'),
    ]


def test_stream_error_event_docs() -> None:
    error = replay_error(fixture_bytes("anthropic/messages_stream_error_event_docs.sse"))
    assert isinstance(error, OverloadedError)
    assert error.code is grpc.StatusCode.UNAVAILABLE
    assert error.retryable
    assert error.upstream_code == "overloaded_error"
    assert error.upstream_request_id == "req_test"
    assert "Overloaded" in error.message


def test_stream_error_event_observed_payload_after_text() -> None:
    payload = fixture_bytes("anthropic/stream_error_event_payload_observed.json").strip()
    raw = fixture_bytes("anthropic/messages_stream.sse")
    cut = raw.index(b"event: content_block_stop")
    error = replay_error(raw[:cut] + b"event: error\ndata: " + payload + b"\n\n")
    assert isinstance(error, OverloadedError)
    assert error.upstream_code == "overloaded_error"


def test_stream_without_message_stop_is_broken() -> None:
    raw = fixture_bytes("anthropic/messages_stream.sse")
    cut = raw.index(b"event: message_stop")
    error = replay_error(raw[:cut])
    assert isinstance(error, StreamBrokenError)
    assert error.code is grpc.StatusCode.UNAVAILABLE
    assert error.retryable


def test_stream_frame_that_is_not_json_is_malformed() -> None:
    raw = fixture_bytes("anthropic/messages_stream.sse")
    cut = raw.index(b"event: content_block_stop")
    error = replay_error(raw[:cut] + b'event: content_block_delta\ndata: {"type":"content_bl\n\n')
    assert isinstance(error, MalformedResponseError)


def test_stream_chunks_end_with_one_finish_then_one_usage() -> None:
    chunks = replay_chunks(fixture_bytes("anthropic/messages_stream_thinking.sse"), 7)
    tail = chunks[-2:]
    assert [type(c).__name__ for c in tail] == ["FinishChunk", "UsageChunk"]
    assert sum(type(c).__name__ == "FinishChunk" for c in chunks) == 1
    assert sum(type(c).__name__ == "UsageChunk" for c in chunks) == 1


# Errors.


def test_error_400_invalid_request() -> None:
    status, headers, body = fixture_http("anthropic/error_400_invalid_request.http")
    error = parse_error(status, headers, body)
    assert type(error) is UpstreamInvalidRequestError
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert error.http_status == 400
    assert error.upstream_code == "invalid_request_error"
    # The recorder kept no request-id header; the body's request_id stands in.
    assert error.upstream_request_id == "req_011CYHyk9NPsBYeGbC9LuDNK"
    assert "unexpected `tool_use_id` found in `tool_result` blocks" in error.message
    assert not error.retryable


def test_error_401_authentication() -> None:
    error = parse_error(401, {}, fixture_bytes("anthropic/error_401_authentication_error.json"))
    assert type(error) is UpstreamAuthenticationError
    assert error.code is grpc.StatusCode.UNAUTHENTICATED
    assert error.message == "anthropic: invalid x-api-key"
    assert error.upstream_request_id == ""


def test_error_404_not_found() -> None:
    status, headers, body = fixture_http("anthropic/error_404_not_found.http")
    error = parse_error(status, headers, body, provider="claude")
    assert type(error) is UpstreamNotFoundError
    assert error.code is grpc.StatusCode.NOT_FOUND
    assert error.message == "claude: model: claude-sonet-4-5"
    assert error.provider == "claude"
    assert error.upstream_request_id == "req_011CdufXo8Y2LVfY2veyuQWG"


def test_error_429_rate_limit() -> None:
    status, headers, body = fixture_http("anthropic/error_429_rate_limit.http")
    error = parse_error(status, headers, body)
    assert type(error) is RateLimitedError
    assert error.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.retryable
    assert error.upstream_request_id == "req_011CYK5mje9HkutJtmfPzzNC"
    assert error.retry_after_seconds is None  # the recorder dropped retry-after
    assert "rate limit of 20,000,000 prompt bytes per hour" in error.message


def test_error_429_retry_after_and_request_id_headers() -> None:
    status, headers, body = fixture_http("anthropic/error_429_rate_limit.http")
    headers = {**headers, "retry-after": "17", "request-id": "req_from_header"}
    error = parse_error(status, headers, body)
    assert error.retry_after_seconds == 17.0
    assert error.upstream_request_id == "req_from_header"


def test_error_500_api_error() -> None:
    error = parse_error(500, {}, fixture_bytes("anthropic/error_500_api_error.json"))
    assert type(error) is UpstreamServerError
    assert error.code is grpc.StatusCode.UNAVAILABLE
    assert error.upstream_request_id == ""  # "request_id": null
    assert error.upstream_code == "api_error"


def test_error_529_overloaded() -> None:
    payload = fixture_bytes("anthropic/stream_error_event_payload_observed.json")
    error = parse_error(529, {"retry-after": "3", "request-id": "req_529"}, payload)
    assert type(error) is OverloadedError
    assert error.code is grpc.StatusCode.UNAVAILABLE
    assert error.retry_after_seconds == 3.0
    assert error.upstream_request_id == "req_529"
    assert error.http_status == 529


@pytest.mark.parametrize(
    ("status", "kind", "message", "cls"),
    [
        (
            400,
            "invalid_request_error",
            "prompt is too long: 208310 tokens > 200000 maximum",
            ContextLengthExceededError,
        ),
        (
            400,
            "invalid_request_error",
            "input length and `max_tokens` exceed context limit: 188240 + 21333 > 200000, decrease input",
            ContextLengthExceededError,
        ),
        (
            400,
            "invalid_request_error",
            "Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing.",
            QuotaExhaustedError,
        ),
        (402, "billing_error", "billing problem", QuotaExhaustedError),
        (403, "permission_error", "no access", UpstreamError),
    ],
)
def test_error_refinements(status: int, kind: str, message: str, cls: type[UpstreamError]) -> None:
    body = json.dumps({"type": "error", "error": {"type": kind, "message": message}}).encode()
    error = parse_error(status, {}, body)
    assert isinstance(error, cls)
    assert error.upstream_code == kind


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (502, UpstreamServerError),
        (529, OverloadedError),
        (401, UpstreamAuthenticationError),
        (418, UpstreamError),
    ],
)
def test_error_bodies_that_are_not_json_classify_by_status(status: int, cls: type[UpstreamError]) -> None:
    error = parse_error(status, {}, b"<html><body>Bad Gateway</body></html>")
    assert isinstance(error, cls)
    assert error.message == f"anthropic: HTTP {status}"


def test_error_message_never_shows_the_key() -> None:
    body = b'{"type":"error","error":{"type":"authentication_error","message":"bad key sk-ant-secret1"}}'
    error = parse_error(401, {}, body, secret="sk-ant-secret1")
    assert "sk-ant-secret1" not in error.message
    assert error.message == "anthropic: bad key ***"


# Requests.


def _call(
    request: CompletionRequest, sampling: Sampling | None = None, model: str = "claude-3-7-sonnet-latest"
) -> ProviderCall:
    return ProviderCall(request, sampling or request.sampling, Deployment("claude", "anthropic", model))


def test_request_fixture_shape() -> None:
    expected = fixture_json("anthropic/request_messages_stream_thinking.json")
    request = CompletionRequest(
        model="claude",
        messages=(Message(Role.USER, (TextPart("Two names for a pet pelican, be brief"),)),),
        sampling=Sampling(temperature=1.0, max_tokens=8192),
    )
    body = build_body(_call(request), stream=True)
    # "thinking" has no field in the request contract; everything else matches the recorded body.
    assert body == {k: v for k, v in expected.items() if k != "thinking"}


def test_request_defaults_max_tokens_and_omits_unset_fields() -> None:
    request = CompletionRequest(model="claude", messages=(Message(Role.USER, (TextPart("Hi"),)),))
    body = build_body(_call(request, model="claude-haiku-4-5"), stream=False)
    assert body == {
        "model": "claude-haiku-4-5",
        "max_tokens": 4096,
        "messages": [{"role": "user", "content": "Hi"}],
    }


def test_request_full_mapping() -> None:
    png = b"\x89PNG\r\n\x1a\nrest"
    request = CompletionRequest(
        model="claude",
        messages=(
            Message(Role.SYSTEM, (TextPart("Be terse."),)),
            Message(Role.SYSTEM, (TextPart("Use metric units."),)),
            Message(
                Role.USER,
                (
                    TextPart("Weather here and there?"),
                    ImagePart(data=png),
                    ImagePart(url="https://example.com/a.jpg"),
                    ImagePart(url="data:image/webp;base64,UklGRg=="),
                ),
            ),
            Message(
                Role.ASSISTANT,
                (TextPart("Checking."),),
                tool_calls=(
                    ToolCall("toolu_a", "get_weather", '{"city": "Paris"}'),
                    ToolCall("toolu_b", "get_weather", ""),
                ),
            ),
            Message(Role.TOOL, (TextPart("18 C"),), tool_call_id="toolu_a"),
            Message(Role.TOOL, (TextPart("21 C"),), tool_call_id="toolu_b"),
            Message(Role.USER, (TextPart("Thanks"),)),
        ),
        tools=(
            ToolSpec(
                "get_weather",
                "Current weather",
                {"type": "object", "properties": {"city": {"type": "string"}}},
            ),
            ToolSpec("noop"),
        ),
        tool_choice=ToolChoice(ToolChoiceMode.FUNCTION, "get_weather"),
        sampling=Sampling(temperature=0.2, top_p=0.9, top_k=40, max_tokens=100, stop=("END", "STOP")),
    )
    body = build_body(_call(request), stream=False)
    assert body == {
        "model": "claude-3-7-sonnet-latest",
        "max_tokens": 100,
        "system": "Be terse.\n\nUse metric units.",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Weather here and there?"},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgpyZXN0"},
                    },
                    {"type": "image", "source": {"type": "url", "url": "https://example.com/a.jpg"}},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/webp", "data": "UklGRg=="},
                    },
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "toolu_a", "name": "get_weather", "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "toolu_b", "name": "get_weather", "input": {}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_a", "content": "18 C"},
                    {"type": "tool_result", "tool_use_id": "toolu_b", "content": "21 C"},
                ],
            },
            {"role": "user", "content": "Thanks"},
        ],
        "stop_sequences": ["END", "STOP"],
        "temperature": 0.2,
        "top_p": 0.9,
        "top_k": 40,
        "tools": [
            {
                "name": "get_weather",
                "description": "Current weather",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
            {"name": "noop", "input_schema": {"type": "object", "properties": {}}},
        ],
        "tool_choice": {"type": "tool", "name": "get_weather"},
    }


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        (ToolChoiceMode.DEFAULT, None),
        (ToolChoiceMode.AUTO, {"type": "auto"}),
        (ToolChoiceMode.NONE, {"type": "none"}),
        (ToolChoiceMode.REQUIRED, {"type": "any"}),
    ],
)
def test_tool_choice_modes(mode: ToolChoiceMode, expected: dict[str, str] | None) -> None:
    request = CompletionRequest(
        model="claude",
        messages=(Message(Role.USER, (TextPart("Hi"),)),),
        tools=(ToolSpec("noop"),),
        tool_choice=ToolChoice(mode),
    )
    assert build_body(_call(request), stream=False).get("tool_choice") == expected


def test_tool_arguments_that_are_not_an_object_are_refused() -> None:
    request = CompletionRequest(
        model="claude",
        messages=(
            Message(Role.USER, (TextPart("Hi"),)),
            Message(Role.ASSISTANT, tool_calls=(ToolCall("toolu_a", "f", "[1, 2]"),)),
        ),
    )
    with pytest.raises(InvalidArgumentError) as info:
        build_body(_call(request), stream=False)
    assert info.value.violations[0].field == "messages[1].tool_calls[0].arguments_json"


def test_unsupported_parameters_are_declared() -> None:
    provider = AnthropicProvider(
        HttpProviderSettings(name="claude", kind="anthropic", base_url="https://api.anthropic.com"),
        HttpTransport(
            HttpProviderSettings(name="claude", kind="anthropic", base_url="https://api.anthropic.com")
        ),
    )
    assert isinstance(provider, ChatProvider)
    assert provider.unsupported_parameters == frozenset(
        {"seed", "n", "presence_penalty", "frequency_penalty", "response_format", "logprobs", "top_logprobs"}
    )
    assert {"temperature", "top_p", "top_k", "max_tokens", "stop"}.isdisjoint(provider.unsupported_parameters)


def _mock_provider(
    handler: Callable[[httpx.Request], httpx.Response], api_version: str = ""
) -> tuple[AnthropicProvider, HttpTransport]:
    config = HttpProviderSettings(
        name="claude",
        kind="anthropic",
        base_url="https://api.anthropic.com",
        api_key="sk-ant-test",
        api_version=api_version,
    )
    client = httpx.AsyncClient(base_url=config.base_url, transport=httpx.MockTransport(handler))
    transport = HttpTransport(config, client=client)
    return AnthropicProvider(config, transport), transport


@pytest.mark.parametrize(("version", "sent"), [("", "2023-06-01"), ("2024-01-01", "2024-01-01")])
async def test_wire_request_headers_and_path(version: str, sent: str) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            200, content=fixture_bytes("anthropic/messages_response.json"), headers={"request-id": "req_mock"}
        )

    provider, _ = _mock_provider(handler, api_version=version)
    request = CompletionRequest(model="claude", messages=(Message(Role.USER, (TextPart("Hi"),)),))
    result = await provider.complete(_call(request, model="claude-sonnet-4-5"))
    await provider.aclose()
    (wire,) = seen
    assert wire.method == "POST"
    assert str(wire.url) == "https://api.anthropic.com/v1/messages"
    assert wire.headers["x-api-key"] == "sk-ant-test"
    assert wire.headers["anthropic-version"] == sent
    assert wire.headers["content-type"] == "application/json"
    assert "authorization" not in wire.headers
    assert json.loads(wire.content)["model"] == "claude-sonnet-4-5"
    assert result.upstream_request_id == "req_mock"
    assert result.choices[0].text.startswith('{"product_name"')


async def test_wire_stream_replays_fixture() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert json.loads(request.content)["stream"] is True
        return httpx.Response(
            200,
            # A stream, not preloaded content: the adapter reads the body as it arrives.
            stream=httpx.ByteStream(fixture_bytes("anthropic/messages_stream_tool_use.sse")),
            headers={"content-type": "text/event-stream; charset=utf-8"},
        )

    provider, _ = _mock_provider(handler)
    request = CompletionRequest(model="claude", messages=(Message(Role.USER, (TextPart("Weather?"),)),))
    chunks = [c async for c in provider.stream(_call(request))]
    await provider.aclose()
    (choice,) = Assembler().extend(chunks).result().choices
    assert choice.tool_calls[0].arguments_json == '{"location": "San Francisco, CA", "units": "f"}'


async def test_wire_stream_error_status() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        status, _, body = fixture_http("anthropic/error_429_rate_limit.http")
        return httpx.Response(status, content=body, headers={"retry-after": "4", "request-id": "req_h"})

    provider, _ = _mock_provider(handler)
    request = CompletionRequest(model="claude", messages=(Message(Role.USER, (TextPart("Hi"),)),))
    with pytest.raises(RateLimitedError) as info:
        async for _ in provider.stream(_call(request)):
            pass
    await provider.aclose()
    assert info.value.retry_after_seconds == 4.0
    assert info.value.upstream_request_id == "req_h"
