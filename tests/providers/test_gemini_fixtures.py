"""The Gemini adapter against recorded Gemini API traffic (../shared/fixtures/providers/gemini)."""

from __future__ import annotations

import json

import grpc
import pytest

from omnirelay.domain import (
    CompletionRequest,
    CompletionResult,
    Deployment,
    FinishReason,
    ImagePart,
    Message,
    ProviderCall,
    ResponseFormat,
    ResponseFormatType,
    Role,
    Sampling,
    StreamChunk,
    TextDelta,
    TextPart,
    TokenUsage,
    ToolCall,
    ToolChoice,
    ToolChoiceMode,
    ToolSpec,
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
    UpstreamError,
    UpstreamInvalidRequestError,
    UpstreamNotFoundError,
    UpstreamPermissionError,
    UpstreamServerError,
)
from omnirelay.providers.assemble import Assembler
from omnirelay.providers.gemini import (
    GeminiStreamParser,
    build_body,
    build_embed_body,
    parse_error,
    parse_response,
    parse_stream_array,
    stray_error,
)
from omnirelay.providers.sse import SSEDecoder
from tests.providers.conftest import FIXTURES, fixture_bytes, fixture_http, fixture_json

DEPLOYMENT = Deployment("gemini-flash", "gemini", "gemini-2.5-flash")
SPLITS = [None, 1, 7]

# Every fixture file is checked by at least one test below; a new file must be added here.
COVERED = {
    "error_400_api_key_invalid.json",
    "error_403_permission_denied.json",
    "error_404_not_found.http",
    "error_429_resource_exhausted.json",
    "error_500_internal.json",
    "error_503_unavailable.json",
    "error_503_unavailable_stream_array.json",
    "generate_content.json",
    "generate_content_function_call.json",
    "generate_content_stop_sequence.json",
    "request_generate_content.json",
    "stream_generate_content.sse",
    "stream_generate_content_function_call.sse",
    "stream_generate_content_json_array.json",
    "stream_generate_content_thinking.sse",
}


def test_every_gemini_fixture_is_covered() -> None:
    assert {p.name for p in (FIXTURES / "gemini").iterdir()} == COVERED


def stream_chunks(raw: bytes, step: int | None) -> list[StreamChunk]:
    """Replay a recorded SSE body through the decoder and parser, delivered in pieces of ``step`` bytes."""
    decoder = SSEDecoder()
    parser = GeminiStreamParser()
    chunks: list[StreamChunk] = []
    pieces = [raw] if step is None else [raw[i : i + step] for i in range(0, len(raw), step)]
    for piece in pieces:
        for event in decoder.feed(piece):
            chunks.extend(parser.feed(event))
    for event in decoder.flush():
        chunks.extend(parser.feed(event))
    if decoder.stray:
        raise stray_error(decoder.stray, {})
    chunks.extend(parser.end())
    return chunks


def replay(raw: bytes, step: int | None) -> CompletionResult:
    return Assembler().extend(stream_chunks(raw, step)).result()


# ---------------------------------------------------------------- unary answers


def test_generate_content_text_and_thinking_usage() -> None:
    result = parse_response(fixture_json("gemini/generate_content.json"))
    (choice,) = result.choices
    assert choice.text == "Hello! How can I help you today?"
    assert choice.finish_reason is FinishReason.STOP
    assert choice.tool_calls == ()
    assert choice.reasoning == ""
    # candidatesTokenCount (9) excludes thoughtsTokenCount (34); our output includes them.
    assert result.usage == TokenUsage(
        input_tokens=9, output_tokens=43, cached_input_tokens=0, reasoning_tokens=34
    )
    assert result.upstream_request_id == "bzlXaa_EE_aHqtsPi_zw8Ao"


def test_generate_content_function_call_becomes_a_tool_call() -> None:
    result = parse_response(fixture_json("gemini/generate_content_function_call.json"))
    (choice,) = result.choices
    assert choice.tool_calls == (ToolCall("call_0", "get_user_country", "{}"),)
    assert choice.text == ""
    # Gemini says STOP after a function call; the caller must see that the call is the answer.
    assert choice.finish_reason is FinishReason.TOOL_CALLS
    assert result.usage == TokenUsage(input_tokens=33, output_tokens=5)
    assert result.upstream_request_id == "LlteaIDvD9m7nvgPz5Sb0Aw"


def test_generate_content_stop_sequence() -> None:
    result = parse_response(fixture_json("gemini/generate_content_stop_sequence.json"))
    (choice,) = result.choices
    assert choice.text == "The most iconic city in France is "
    assert choice.finish_reason is FinishReason.STOP
    assert result.usage == TokenUsage(input_tokens=25, output_tokens=8)


def test_max_tokens_without_parts_is_empty_text_and_length() -> None:
    data = {
        "candidates": [{"content": {"role": "model"}, "finishReason": "MAX_TOKENS", "index": 0}],
        "usageMetadata": {"promptTokenCount": 4, "thoughtsTokenCount": 16, "totalTokenCount": 20},
    }
    (choice,) = parse_response(data).choices
    assert choice.text == ""
    assert choice.finish_reason is FinishReason.LENGTH
    assert parse_response(data).usage == TokenUsage(input_tokens=4, output_tokens=16, reasoning_tokens=16)


def test_cached_tokens_thoughts_and_several_candidates() -> None:
    data = {
        "candidates": [
            {
                "content": {"parts": [{"text": "plan", "thought": True}, {"text": "one"}], "role": "model"},
                "finishReason": "SAFETY",
                "index": 1,
            },
            {"content": {"parts": [{"text": "zero"}], "role": "model"}, "finishReason": "STOP", "index": 0},
            {"finishReason": "MALFORMED_FUNCTION_CALL", "index": 2},
        ],
        "usageMetadata": {
            "promptTokenCount": 100,
            "cachedContentTokenCount": 60,
            "candidatesTokenCount": 7,
            "thoughtsTokenCount": 3,
        },
    }
    result = parse_response(data)
    assert [c.index for c in result.choices] == [0, 1, 2]
    assert [c.text for c in result.choices] == ["zero", "one", ""]
    assert result.choices[1].reasoning == "plan"
    assert [c.finish_reason for c in result.choices] == [
        FinishReason.STOP,
        FinishReason.CONTENT_FILTER,
        FinishReason.ERROR,
    ]
    assert result.usage == TokenUsage(
        input_tokens=100, output_tokens=10, cached_input_tokens=60, reasoning_tokens=3
    )


def test_blocked_prompt_is_content_filtered() -> None:
    data = {"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}, "responseId": "r-1"}
    with pytest.raises(ContentFilteredError) as caught:
        parse_response(data)
    assert caught.value.upstream_code == "PROHIBITED_CONTENT"
    assert caught.value.code is grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    "data", [[], "text", {"candidates": []}, {"candidates": [{"content": {"parts": 3}}]}]
)
def test_malformed_answers(data: object) -> None:
    with pytest.raises(MalformedResponseError):
        parse_response(data)


def test_logprobs_are_read_from_the_chosen_candidates() -> None:
    data = {
        "candidates": [
            {
                "content": {"parts": [{"text": "Hi there"}], "role": "model"},
                "finishReason": "STOP",
                "logprobsResult": {
                    "chosenCandidates": [
                        {"token": "Hi", "logProbability": -0.25},
                        {"token": " there", "logProbability": -1.5},
                    ]
                },
            }
        ]
    }
    logprobs = parse_response(data).choices[0].logprobs
    assert logprobs is not None
    assert [(lp.token, lp.logprob) for lp in logprobs] == [("Hi", -0.25), (" there", -1.5)]


# ---------------------------------------------------------------- streams


@pytest.mark.parametrize("step", SPLITS)
def test_stream_text(step: int | None) -> None:
    result = replay(fixture_bytes("gemini/stream_generate_content.sse"), step)
    (choice,) = result.choices
    assert choice.text == "The capital of France is Paris.\n"
    assert choice.finish_reason is FinishReason.STOP
    # The last chunk's usage wins (the prompt count changes from 15 to 13 in the recording).
    assert result.usage == TokenUsage(input_tokens=13, output_tokens=8)


@pytest.mark.parametrize("step", SPLITS)
def test_stream_function_call(step: int | None) -> None:
    result = replay(fixture_bytes("gemini/stream_generate_content_function_call.sse"), step)
    (choice,) = result.choices
    assert choice.tool_calls == (ToolCall("call_0", "get_capital", '{"country":"France"}'),)
    assert choice.finish_reason is FinishReason.TOOL_CALLS
    assert choice.text == ""
    assert result.usage == TokenUsage(input_tokens=52, output_tokens=5)


@pytest.mark.parametrize("step", SPLITS)
def test_stream_thinking(step: int | None) -> None:
    raw = fixture_bytes("gemini/stream_generate_content_thinking.sse")
    chunks = stream_chunks(raw, step)
    deltas = [c for c in chunks if isinstance(c, TextDelta)]
    # Thought summaries come first, as reasoning only; then the answer, as text only.
    assert deltas[0].reasoning.startswith("**Clarifying User Goals**")
    assert deltas[0].text == ""
    assert deltas[4].text.startswith("This is a great question!")
    assert deltas[4].reasoning == ""
    result = Assembler().extend(chunks).result()
    (choice,) = result.choices
    assert choice.reasoning.startswith("**Clarifying User Goals**\n\nI'm currently focused")
    assert choice.reasoning.endswith("regardless of specific circumstances or locations.\n\n\n")
    assert choice.text.startswith("This is a great question! Safely crossing the street")
    assert choice.text.endswith("Always assume a driver might not see you.")
    assert choice.finish_reason is FinishReason.STOP
    assert result.usage == TokenUsage(input_tokens=34, output_tokens=469 + 787, reasoning_tokens=787)


def test_stream_without_finish_is_broken() -> None:
    raw = fixture_bytes("gemini/stream_generate_content.sse")
    cut = raw[: raw.index(b"data:", raw.index(b"capital of France"))]
    with pytest.raises(StreamBrokenError):
        stream_chunks(cut, None)


@pytest.mark.parametrize("step", SPLITS)
def test_error_body_after_sse_frames_is_mapped(step: int | None) -> None:
    frames = fixture_bytes("gemini/stream_generate_content.sse")
    cut = frames[: frames.index(b"data:", frames.index(b"capital of France"))]
    raw = cut + fixture_bytes("gemini/error_503_unavailable.json")
    with pytest.raises(OverloadedError) as caught:
        stream_chunks(raw, step)
    assert caught.value.http_status == 503
    assert "overloaded" in caught.value.message


def test_malformed_stream_frame() -> None:
    with pytest.raises(MalformedResponseError):
        stream_chunks(b'data: {"candidates": [{"content"\r\n\r\n', None)


def test_json_array_stream() -> None:
    chunks = parse_stream_array(fixture_bytes("gemini/stream_generate_content_json_array.json"))
    result = Assembler().extend(chunks).result()
    (choice,) = result.choices
    assert choice.text == "Percy\n"
    assert choice.finish_reason is FinishReason.STOP
    assert result.usage == TokenUsage(input_tokens=9, output_tokens=2)


def test_json_array_stream_error() -> None:
    raw = fixture_bytes("gemini/error_503_unavailable_stream_array.json")
    with pytest.raises(OverloadedError) as caught:
        parse_stream_array(raw)
    assert caught.value.http_status == 503
    # The same array framing as the body of a failed HTTP answer.
    error = parse_error(503, {}, raw)
    assert isinstance(error, OverloadedError)
    assert error.message == "gemini: The model is overloaded. Please try again later."


def test_json_array_cut_short_is_malformed() -> None:
    raw = fixture_bytes("gemini/stream_generate_content_json_array.json")
    with pytest.raises(MalformedResponseError):
        parse_stream_array(raw[:-3])


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("name", "status", "cls", "grpc_code", "upstream_code"),
    [
        (
            "error_400_api_key_invalid.json",
            400,
            UpstreamAuthenticationError,
            grpc.StatusCode.UNAUTHENTICATED,
            "API_KEY_INVALID",
        ),
        (
            "error_403_permission_denied.json",
            403,
            UpstreamPermissionError,
            grpc.StatusCode.PERMISSION_DENIED,
            "PERMISSION_DENIED",
        ),
        (
            "error_429_resource_exhausted.json",
            429,
            RateLimitedError,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "RESOURCE_EXHAUSTED",
        ),
        ("error_500_internal.json", 500, UpstreamServerError, grpc.StatusCode.UNAVAILABLE, "INTERNAL"),
        ("error_503_unavailable.json", 503, OverloadedError, grpc.StatusCode.UNAVAILABLE, "UNAVAILABLE"),
    ],
)
def test_error_bodies(
    name: str, status: int, cls: type[UpstreamError], grpc_code: grpc.StatusCode, upstream_code: str
) -> None:
    error = parse_error(status, {}, fixture_bytes(f"gemini/{name}"))
    assert type(error) is cls
    assert error.code is grpc_code
    assert error.http_status == status
    assert error.upstream_code == upstream_code
    assert error.provider == "gemini"


def test_api_key_invalid_message() -> None:
    error = parse_error(400, {}, fixture_bytes("gemini/error_400_api_key_invalid.json"))
    assert error.message == "gemini: API key not valid. Please pass a valid API key."
    assert error.retry_after_seconds is None


def test_rate_limit_reads_retry_info() -> None:
    error = parse_error(429, {}, fixture_bytes("gemini/error_429_resource_exhausted.json"))
    # The quota is per minute: the message talks about billing, but waiting 15 s is the remedy.
    assert isinstance(error, RateLimitedError)
    assert error.retryable
    assert error.retry_after_seconds == 15.0


def test_retry_after_header_wins_over_retry_info() -> None:
    error = parse_error(429, {"retry-after": "3"}, fixture_bytes("gemini/error_429_resource_exhausted.json"))
    assert error.retry_after_seconds == 3.0


@pytest.mark.parametrize(
    ("quota_id", "quota_value"),
    [
        ("GenerateRequestsPerDayPerProjectPerModel-FreeTier", "250"),
        ("GenerateContentInputTokensPerModel", "0"),
    ],
)
def test_daily_or_zero_quota_is_exhausted(quota_id: str, quota_value: str) -> None:
    body = fixture_json("gemini/error_429_resource_exhausted.json")
    violation = body["error"]["details"][0]["violations"][0]
    violation["quotaId"] = quota_id
    violation["quotaValue"] = quota_value
    error = parse_error(429, {}, json.dumps(body).encode())
    assert isinstance(error, QuotaExhaustedError)
    assert not error.retryable
    assert error.code is grpc.StatusCode.RESOURCE_EXHAUSTED


def test_not_found_with_headers() -> None:
    status, headers, body = fixture_http("gemini/error_404_not_found.http")
    error = parse_error(status, headers, body)
    assert isinstance(error, UpstreamNotFoundError)
    assert error.code is grpc.StatusCode.NOT_FOUND
    assert error.http_status == 404
    assert "models/gemini-3.6-flahs is not found" in error.message
    # The recording carries no request id header.
    assert error.upstream_request_id == ""


def test_request_id_header_is_kept() -> None:
    error = parse_error(500, {"x-request-id": "req-77"}, fixture_bytes("gemini/error_500_internal.json"))
    assert error.upstream_request_id == "req-77"


def test_context_length_exceeded() -> None:
    body = {
        "error": {
            "code": 400,
            "message": "The input token count (1200000) exceeds the maximum number of tokens allowed "
            "(1048576).",
            "status": "INVALID_ARGUMENT",
        }
    }
    error = parse_error(400, {}, json.dumps(body).encode())
    assert isinstance(error, ContextLengthExceededError)
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT


def test_other_invalid_argument() -> None:
    body = {
        "error": {
            "code": 400,
            "message": "* contents: contents is not specified",
            "status": "INVALID_ARGUMENT",
        }
    }
    assert type(parse_error(400, {}, json.dumps(body).encode())) is UpstreamInvalidRequestError


@pytest.mark.parametrize(
    ("status", "cls"), [(502, UpstreamServerError), (503, OverloadedError), (429, RateLimitedError)]
)
def test_non_json_error_bodies_classify_by_status(status: int, cls: type[UpstreamError]) -> None:
    error = parse_error(status, {}, b"<html>Bad Gateway</html>")
    assert type(error) is cls
    assert error.http_status == status


def test_unknown_google_status_classifies_by_http_status() -> None:
    body = {"error": {"code": 409, "message": "conflict", "status": "ABORTED"}}
    error = parse_error(409, {}, json.dumps(body).encode())
    assert type(error) is UpstreamInvalidRequestError
    assert error.upstream_code == "ABORTED"


# ---------------------------------------------------------------- requests


def call(messages: tuple[Message, ...], sampling: Sampling | None = None, **request: object) -> ProviderCall:
    completion = CompletionRequest("gemini-flash", messages, **request)  # type: ignore[arg-type]
    return ProviderCall(completion, sampling or Sampling(), DEPLOYMENT)


def test_request_matches_the_recorded_shape() -> None:
    recorded = fixture_json("gemini/request_generate_content.json")
    messages = (
        Message(Role.SYSTEM, (TextPart("You are a chatbot."),)),
        Message(Role.USER, (TextPart("Hello!"),)),
    )
    body = build_body(call(messages), stream=False)
    assert body["contents"] == recorded["contents"]
    assert body["systemInstruction"]["parts"] == recorded["systemInstruction"]["parts"]
    # Nothing set, nothing sent (the recording's responseModalities is the client's own default).
    assert "generationConfig" not in body
    assert build_body(call(messages), stream=True) == body


def test_generation_config_maps_every_sampling_field() -> None:
    sampling = Sampling(
        temperature=0.3,
        top_p=0.9,
        top_k=40,
        max_tokens=128,
        stop=("END", "STOP"),
        seed=7,
        n=2,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        response_format=ResponseFormat(ResponseFormatType.JSON_SCHEMA, "answer", {"type": "object"}),
        logprobs=True,
        top_logprobs=3,
    )
    body = build_body(call((Message(Role.USER, (TextPart("hi"),)),), sampling), stream=False)
    assert body["generationConfig"] == {
        "maxOutputTokens": 128,
        "temperature": 0.3,
        "topP": 0.9,
        "topK": 40,
        "seed": 7,
        "candidateCount": 2,
        "presencePenalty": 0.5,
        "frequencyPenalty": -0.5,
        "stopSequences": ["END", "STOP"],
        "responseMimeType": "application/json",
        "responseJsonSchema": {"type": "object"},
        "responseLogprobs": True,
        "logprobs": 3,
    }


def test_json_object_mode() -> None:
    sampling = Sampling(response_format=ResponseFormat(ResponseFormatType.JSON_OBJECT))
    body = build_body(call((Message(Role.USER, (TextPart("hi"),)),), sampling), stream=False)
    assert body["generationConfig"] == {"responseMimeType": "application/json"}


def test_tools_tool_choice_and_a_tool_round_trip() -> None:
    schema = {"type": "object", "properties": {"country": {"type": "string"}}, "required": ["country"]}
    messages = (
        Message(Role.USER, (TextPart("capital of France?"),)),
        Message(
            Role.ASSISTANT,
            tool_calls=(
                ToolCall("call_0", "get_capital", '{"country": "France"}'),
                ToolCall("call_1", "get_time", "{}"),
            ),
        ),
        Message(Role.TOOL, (TextPart('{"capital": "Paris"}'),), tool_call_id="call_0"),
        Message(Role.TOOL, (TextPart("12:00"),), tool_call_id="call_1"),
    )
    tools = (ToolSpec("get_capital", "Capital of a country", schema), ToolSpec("get_time"))
    choice = ToolChoice(ToolChoiceMode.FUNCTION, "get_capital")
    body = build_body(call(messages, tools=tools, tool_choice=choice), stream=False)
    assert body["contents"] == [
        {"role": "user", "parts": [{"text": "capital of France?"}]},
        {
            "role": "model",
            "parts": [
                {"functionCall": {"name": "get_capital", "args": {"country": "France"}}},
                {"functionCall": {"name": "get_time", "args": {}}},
            ],
        },
        # Both answers in one turn, each named after the call it answers.
        {
            "role": "user",
            "parts": [
                {"functionResponse": {"name": "get_capital", "response": {"capital": "Paris"}}},
                {"functionResponse": {"name": "get_time", "response": {"result": "12:00"}}},
            ],
        },
    ]
    assert body["tools"] == [
        {
            "functionDeclarations": [
                {
                    "name": "get_capital",
                    "description": "Capital of a country",
                    "parametersJsonSchema": schema,
                },
                {"name": "get_time"},
            ]
        }
    ]
    assert body["toolConfig"] == {
        "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_capital"]}
    }


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        (ToolChoiceMode.AUTO, {"functionCallingConfig": {"mode": "AUTO"}}),
        (ToolChoiceMode.NONE, {"functionCallingConfig": {"mode": "NONE"}}),
        (ToolChoiceMode.REQUIRED, {"functionCallingConfig": {"mode": "ANY"}}),
        (ToolChoiceMode.DEFAULT, None),
    ],
)
def test_tool_choice_modes(mode: ToolChoiceMode, expected: object) -> None:
    messages = (Message(Role.USER, (TextPart("hi"),)),)
    body = build_body(call(messages, tools=(ToolSpec("f"),), tool_choice=ToolChoice(mode)), stream=False)
    assert body.get("toolConfig") == expected


def test_tool_result_without_a_matching_call_is_refused() -> None:
    messages = (Message(Role.TOOL, (TextPart("42"),), tool_call_id="call_9"),)
    with pytest.raises(InvalidArgumentError):
        build_body(call(messages), stream=False)


def test_images() -> None:
    parts = (
        TextPart("what is this?"),
        ImagePart(data=b"\x89PNG", media_type="image/png"),
        ImagePart(url="data:image/jpeg;base64,/9j/4AAQ"),
        ImagePart(url="https://example.com/cat.webp"),
        ImagePart(url="gs://bucket/dog", media_type="image/gif"),
        ImagePart(url="data:image/svg+xml,%3Csvg%2F%3E"),
    )
    body = build_body(call((Message(Role.USER, parts),)), stream=False)
    assert body["contents"][0]["parts"] == [
        {"text": "what is this?"},
        {"inlineData": {"mimeType": "image/png", "data": "iVBORw=="}},
        {"inlineData": {"mimeType": "image/jpeg", "data": "/9j/4AAQ"}},
        {"fileData": {"fileUri": "https://example.com/cat.webp", "mimeType": "image/webp"}},
        {"fileData": {"fileUri": "gs://bucket/dog", "mimeType": "image/gif"}},
        {"inlineData": {"mimeType": "image/svg+xml", "data": "PHN2Zy8+"}},
    ]


def test_assistant_text_is_a_model_turn() -> None:
    messages = (
        Message(Role.USER, (TextPart("hi"),)),
        Message(Role.ASSISTANT, (TextPart("hello"),)),
        Message(Role.ASSISTANT),
        Message(Role.USER, (TextPart("bye"),)),
    )
    body = build_body(call(messages), stream=False)
    # The empty assistant turn is left out: Gemini refuses a turn without parts.
    assert [c["role"] for c in body["contents"]] == ["user", "model", "user"]
    assert body["contents"][1] == {"role": "model", "parts": [{"text": "hello"}]}
    assert "systemInstruction" not in body


def test_embed_body() -> None:
    assert build_embed_body("text-embedding-004", ["a", "b"], 256) == {
        "requests": [
            {
                "model": "models/text-embedding-004",
                "content": {"parts": [{"text": "a"}]},
                "outputDimensionality": 256,
            },
            {
                "model": "models/text-embedding-004",
                "content": {"parts": [{"text": "b"}]},
                "outputDimensionality": 256,
            },
        ]
    }
