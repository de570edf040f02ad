"""The Ollama native adapter against recorded and documented wire traffic (shared fixtures, ollama/).

The ``openai_compat_*`` files are Ollama's OpenAI-compatible /v1 API and belong
to the openai adapter's tests.
"""

from __future__ import annotations

import base64
import re

import grpc
import pytest

from omnirelay.domain import (
    CompletionRequest,
    CompletionResult,
    Deployment,
    FinishChunk,
    FinishReason,
    ImagePart,
    Message,
    ProviderCall,
    ResponseFormat,
    ResponseFormatType,
    Role,
    Sampling,
    StreamChunk,
    TextPart,
    ToolCall,
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
    UpstreamInvalidRequestError,
    UpstreamNotFoundError,
    UpstreamServerError,
)
from omnirelay.providers.assemble import Assembler
from omnirelay.providers.ndjson import NDJSONDecoder
from omnirelay.providers.ollama import (
    OllamaStreamParser,
    build_body,
    build_embed_body,
    parse_embeddings,
    parse_error,
    parse_generate_response,
    parse_response,
)
from tests.providers.conftest import fixture_bytes, fixture_http, fixture_json

SPLITS = [None, 1, 7]
CALL_ID = re.compile(r"^call_[0-9a-f]{16}$")


def replay(raw: bytes, size: int | None) -> tuple[CompletionResult, list[StreamChunk]]:
    """Feed a recorded NDJSON stream in pieces of ``size`` bytes (whole when None)."""
    decoder = NDJSONDecoder()
    parser = OllamaStreamParser()
    chunks: list[StreamChunk] = []
    pieces = [raw] if size is None else [raw[i : i + size] for i in range(0, len(raw), size)]
    for piece in pieces:
        for event in decoder.feed(piece):
            chunks.extend(parser.feed(event))
    for event in decoder.flush():
        chunks.extend(parser.feed(event))
    chunks.extend(parser.end())
    return Assembler().extend(chunks).result(), chunks


def call(*messages: Message, sampling: Sampling | None = None, **request: object) -> ProviderCall:
    req = CompletionRequest(model="qwen", messages=messages, **request)  # type: ignore[arg-type]
    return ProviderCall(req, sampling or Sampling(), Deployment("qwen", "ollama", "qwen3:32b"))


def user(text: str) -> Message:
    return Message(Role.USER, (TextPart(text),))


# Unary /api/chat answers.


def test_chat_response_thinking_cut_by_num_predict() -> None:
    result = parse_response(fixture_json("ollama/chat_response.json"))
    choice = result.choices[0]
    assert choice.text == ""
    assert choice.reasoning == 'Okay, the user is asking "What is 2+2?" and wants the'
    assert choice.finish_reason is FinishReason.LENGTH
    assert choice.tool_calls == ()
    assert result.usage.input_tokens == 22
    assert result.usage.output_tokens == 20
    assert result.usage.cached_input_tokens == 0
    assert result.usage.reasoning_tokens == 0


def test_chat_response_docs_without_done_reason_is_stop() -> None:
    result = parse_response(fixture_json("ollama/chat_response_docs.json"))
    choice = result.choices[0]
    assert choice.text == "Hello! How are you today?"
    assert choice.reasoning == ""
    assert choice.finish_reason is FinishReason.STOP
    assert (result.usage.input_tokens, result.usage.output_tokens) == (26, 298)


def test_chat_response_tool_call_gets_a_synthetic_id_and_json_arguments() -> None:
    result = parse_response(fixture_json("ollama/chat_response_tool_calls_docs.json"))
    choice = result.choices[0]
    assert choice.finish_reason is FinishReason.TOOL_CALLS
    assert choice.text == ""
    (tool,) = choice.tool_calls
    assert tool.name == "get_weather"
    assert tool.arguments_json == '{"city":"Tokyo"}'
    assert CALL_ID.match(tool.id)
    # Stable: the same answer parsed twice gets the same id.
    again = parse_response(fixture_json("ollama/chat_response_tool_calls_docs.json"))
    assert again.choices[0].tool_calls[0].id == tool.id
    assert (result.usage.input_tokens, result.usage.output_tokens) == (169, 18)


def test_a_tool_call_id_sent_by_a_newer_server_is_kept() -> None:
    data = fixture_json("ollama/chat_response_tool_calls_docs.json")
    data["message"]["tool_calls"][0]["id"] = "call_upstream_1"
    assert parse_response(data).choices[0].tool_calls[0].id == "call_upstream_1"


def test_cached_prompt_without_counts_is_zero_not_a_crash() -> None:
    data = fixture_json("ollama/chat_response_docs.json")
    del data["prompt_eval_count"]
    del data["eval_count"]
    result = parse_response(data)
    assert result.choices[0].text == "Hello! How are you today?"
    assert (result.usage.input_tokens, result.usage.output_tokens) == (0, 0)


@pytest.mark.parametrize("reason", ["load", "unload", "stop"])
def test_other_done_reasons_are_stop(reason: str) -> None:
    data = fixture_json("ollama/chat_response_docs.json")
    data["done_reason"] = reason
    assert parse_response(data).choices[0].finish_reason is FinishReason.STOP


@pytest.mark.parametrize("data", [[], "text", {"model": "x", "done": True}, {"message": {}, "done": False}])
def test_malformed_answers_are_malformed_response_errors(data: object) -> None:
    with pytest.raises(MalformedResponseError):
        parse_response(data)


# Streams.


@pytest.mark.parametrize("size", SPLITS)
def test_chat_stream(size: int | None) -> None:
    result, chunks = replay(fixture_bytes("ollama/chat_stream.ndjson"), size)
    choice = result.choices[0]
    assert choice.text == "The"
    assert choice.finish_reason is FinishReason.STOP
    assert (result.usage.input_tokens, result.usage.output_tokens) == (26, 282)
    assert sum(isinstance(c, FinishChunk) for c in chunks) == 1
    assert isinstance(chunks[-1], UsageChunk)


@pytest.mark.parametrize("size", SPLITS)
def test_chat_stream_tool_call_arrives_whole(size: int | None) -> None:
    result, _ = replay(fixture_bytes("ollama/chat_stream_tool_calls.ndjson"), size)
    choice = result.choices[0]
    assert choice.finish_reason is FinishReason.TOOL_CALLS
    (tool,) = choice.tool_calls
    assert tool.name == "get_weather"
    assert tool.arguments_json == '{"city":"Tokyo"}'
    # The unary docs answer holds the same call: streamed or not, it gets the same id.
    unary = parse_response(fixture_json("ollama/chat_response_tool_calls_docs.json"))
    assert tool.id == unary.choices[0].tool_calls[0].id
    assert CALL_ID.match(tool.id)
    assert (result.usage.input_tokens, result.usage.output_tokens) == (169, 15)


@pytest.mark.parametrize("size", SPLITS)
def test_generate_stream_without_final_stats(size: int | None) -> None:
    result, chunks = replay(fixture_bytes("ollama/generate_stream.ndjson"), size)
    assert result.choices[0].text == "That's a fantastic question!"
    assert result.choices[0].finish_reason is FinishReason.STOP
    # No counts on the wire: no usage report, so the gateway estimates instead of billing zero.
    assert not any(isinstance(c, UsageChunk) for c in chunks)


@pytest.mark.parametrize("size", SPLITS)
def test_generate_stream_with_final_stats(size: int | None) -> None:
    result, _ = replay(fixture_bytes("ollama/generate_stream_with_final_stats.ndjson"), size)
    assert result.choices[0].text == "The"
    assert result.choices[0].finish_reason is FinishReason.STOP
    assert (result.usage.input_tokens, result.usage.output_tokens) == (26, 259)


def test_generate_response() -> None:
    result = parse_generate_response(fixture_json("ollama/generate_response.json"))
    assert result.choices[0].text == "Hello! How can I help you today?"
    assert result.choices[0].finish_reason is FinishReason.STOP
    assert (result.usage.input_tokens, result.usage.output_tokens) == (11, 18)


def test_stream_without_done_is_broken() -> None:
    first_line = fixture_bytes("ollama/chat_stream.ndjson").split(b"\n")[0] + b"\n"
    with pytest.raises(StreamBrokenError):
        replay(first_line, None)


def test_mid_stream_error_line_is_a_server_error() -> None:
    parser = OllamaStreamParser()
    first = NDJSONDecoder().feed(fixture_bytes("ollama/chat_stream.ndjson"))[0]
    assert parser.feed(first)
    with pytest.raises(UpstreamServerError) as caught:
        parser.feed(fixture_json("ollama/error_generic_docs.json"))
    assert "the model failed to generate a response" in caught.value.message
    assert caught.value.code is grpc.StatusCode.UNAVAILABLE


def test_mid_stream_error_naming_the_context_is_context_length() -> None:
    parser = OllamaStreamParser()
    with pytest.raises(ContextLengthExceededError):
        parser.feed({"error": "the input length exceeds the context length"})


# Errors.


def test_error_404_model_not_found() -> None:
    status, headers, body = fixture_http("ollama/error_404_model_not_found.http")
    error = parse_error(status, headers, body)
    assert isinstance(error, UpstreamNotFoundError)
    assert error.code is grpc.StatusCode.NOT_FOUND
    assert error.message == "ollama: model 'nonexistent-model-12345' not found"
    assert error.http_status == 404
    assert error.retry_after_seconds is None
    assert error.upstream_request_id == ""


def test_error_400_think_unsupported() -> None:
    status, headers, body = fixture_http("ollama/error_400_think_unsupported.http")
    error = parse_error(status, headers, body)
    assert type(error) is UpstreamInvalidRequestError
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert error.message == 'ollama: think value "low" is not supported for this model'
    assert error.http_status == 400


def test_error_generic_docs_as_a_500() -> None:
    error = parse_error(500, {}, fixture_bytes("ollama/error_generic_docs.json"))
    assert type(error) is UpstreamServerError
    assert error.code is grpc.StatusCode.UNAVAILABLE
    assert error.retryable
    assert error.message == "ollama: the model failed to generate a response"


@pytest.mark.parametrize(
    ("status", "text", "expected"),
    [
        (400, "the input length exceeds the context length", ContextLengthExceededError),
        (429, "quota exceeded", QuotaExhaustedError),
        (400, "content filtered: the request was blocked by a safety policy", ContentFilteredError),
        (503, "server busy, please try again.  maximum pending requests exceeded", OverloadedError),
        (401, "unauthorized", UpstreamAuthenticationError),
        (501, "this model does not support embeddings", UpstreamInvalidRequestError),
    ],
)
def test_error_text_refines_the_status(status: int, text: str, expected: type[Exception]) -> None:
    body = ('{"error": "' + text + '"}').encode()
    assert type(parse_error(status, {}, body)) is expected


def test_rate_limit_reads_retry_after_and_request_id() -> None:
    error = parse_error(429, {"retry-after": "7", "x-request-id": "req-42"}, b'{"error":"too many requests"}')
    assert isinstance(error, RateLimitedError)
    assert error.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.retry_after_seconds == 7.0
    assert error.upstream_request_id == "req-42"


def test_non_json_error_body_classifies_by_status() -> None:
    error = parse_error(404, {}, b"404 page not found")
    assert isinstance(error, UpstreamNotFoundError)
    assert error.message == "ollama: 404 page not found"
    assert type(parse_error(502, {}, b"<html>bad gateway</html>")) is UpstreamServerError


def test_secret_in_an_error_body_is_scrubbed() -> None:
    error = parse_error(401, {}, b'{"error":"invalid key sk-test-secret"}', secret="sk-test-secret")
    assert "sk-test-secret" not in error.message
    assert error.message == "ollama: invalid key ***"


# Requests.


def test_request_chat_fixture() -> None:
    expected = fixture_json("ollama/request_chat.json")
    body = build_body(call(user("What is 2+2? Reply in one word."), sampling=Sampling(max_tokens=20)), False)
    assert body == expected


def test_sampling_goes_under_options() -> None:
    sampling = Sampling(
        temperature=0.2,
        top_p=0.9,
        top_k=40,
        max_tokens=64,
        stop=("END", "STOP"),
        seed=7,
        presence_penalty=0.5,
        frequency_penalty=0.25,
    )
    body = build_body(call(user("hi"), sampling=sampling), True)
    assert body["stream"] is True
    assert body["options"] == {
        "num_predict": 64,
        "temperature": 0.2,
        "top_p": 0.9,
        "top_k": 40,
        "seed": 7,
        "presence_penalty": 0.5,
        "frequency_penalty": 0.25,
        "stop": ["END", "STOP"],
    }
    assert "format" not in body
    assert "tools" not in body


def test_json_mode_and_json_schema() -> None:
    json_object = Sampling(response_format=ResponseFormat(ResponseFormatType.JSON_OBJECT))
    assert build_body(call(user("hi"), sampling=json_object), False)["format"] == "json"
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    with_schema = Sampling(response_format=ResponseFormat(ResponseFormatType.JSON_SCHEMA, "a", schema))
    assert build_body(call(user("hi"), sampling=with_schema), False)["format"] == schema
    text = Sampling(response_format=ResponseFormat(ResponseFormatType.TEXT))
    assert "format" not in build_body(call(user("hi"), sampling=text), False)


def test_conversation_with_images_tool_calls_and_tool_results() -> None:
    png = b"\x89PNG\r\n\x1a\n"
    messages = (
        Message(Role.SYSTEM, (TextPart("be brief"),)),
        Message(Role.USER, (TextPart("what is this?"), ImagePart(data=png, media_type="image/png"))),
        Message(Role.USER, (ImagePart(url="data:image/png;base64,QUJD"),)),
        Message(Role.ASSISTANT, (), tool_calls=(ToolCall("call_1", "get_weather", '{"city": "Tokyo"}'),)),
        Message(Role.TOOL, (TextPart("sunny"),), tool_call_id="call_1"),
    )
    body = build_body(call(*messages), False)
    assert body["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "what is this?", "images": [base64.b64encode(png).decode()]},
        {"role": "user", "content": "", "images": ["QUJD"]},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Tokyo"}}}],
        },
        {"role": "tool", "content": "sunny", "tool_name": "get_weather"},
    ]


def test_image_url_is_refused_not_dropped() -> None:
    message = Message(Role.USER, (TextPart("look"), ImagePart(url="https://example.com/cat.png")))
    with pytest.raises(InvalidArgumentError) as caught:
        build_body(call(message), False)
    assert caught.value.violations[0].field == "messages[0].content[1].image.url"


def test_tool_call_arguments_must_be_an_object() -> None:
    message = Message(Role.ASSISTANT, (), tool_calls=(ToolCall("c", "f", "[1, 2]"),))
    with pytest.raises(InvalidArgumentError):
        build_body(call(user("hi"), message), False)


TOOLS = (
    ToolSpec(
        "get_weather", "Weather for a city", {"type": "object", "properties": {"city": {"type": "string"}}}
    ),
    ToolSpec("get_time", "Local time"),
)


def test_tools_and_best_effort_tool_choice() -> None:
    body = build_body(call(user("hi"), tools=TOOLS), False)
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather for a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        },
        {
            "type": "function",
            "function": {
                "name": "get_time",
                "description": "Local time",
                "parameters": {"type": "object", "properties": {}},
            },
        },
    ]
    required = build_body(
        call(user("hi"), tools=TOOLS, tool_choice=ToolChoice(ToolChoiceMode.REQUIRED)), False
    )
    assert [t["function"]["name"] for t in required["tools"]] == ["get_weather", "get_time"]
    named = ToolChoice(ToolChoiceMode.FUNCTION, "get_time")
    only = build_body(call(user("hi"), tools=TOOLS, tool_choice=named), False)
    assert [t["function"]["name"] for t in only["tools"]] == ["get_time"]
    none = build_body(call(user("hi"), tools=TOOLS, tool_choice=ToolChoice(ToolChoiceMode.NONE)), False)
    assert "tools" not in none
    assert "tool_choice" not in required


def test_embeddings_body_and_answer() -> None:
    assert build_embed_body("nomic-embed-text", ["a", "b"], 0) == {
        "model": "nomic-embed-text",
        "input": ["a", "b"],
    }
    assert build_embed_body("m", ["a"], 256)["dimensions"] == 256
    result = parse_embeddings({"model": "m", "embeddings": [[0.5, -1], [0, 0.25]], "prompt_eval_count": 4}, 2)
    assert result.vectors == ((0.5, -1.0), (0.0, 0.25))
    assert result.usage.input_tokens == 4
    with pytest.raises(MalformedResponseError):
        parse_embeddings({"model": "m", "embeddings": [[0.5]]}, 2)
