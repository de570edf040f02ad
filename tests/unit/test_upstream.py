"""Shared upstream helpers: retry delays, request ids, classification, stream assembly."""

from __future__ import annotations

import email.utils
import time

import grpc
import pytest

from omnirelay import errors
from omnirelay.domain import (
    FinishChunk,
    FinishReason,
    StreamChunk,
    TextDelta,
    TokenUsage,
    ToolCallDelta,
    UsageChunk,
)
from omnirelay.providers.assemble import Assembler
from omnirelay.providers.upstream import ErrorBody, classify, request_id, retry_after


def test_retry_after_ms_wins_then_seconds_then_http_date() -> None:
    assert retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert retry_after({"retry-after": "26"}) == 26.0
    future = email.utils.formatdate(time.time() + 30, usegmt=True)
    delay = retry_after({"retry-after": future})
    assert delay is not None
    assert 25 <= delay <= 31
    assert retry_after({"retry-after": "soon"}) is None
    assert retry_after({}) is None


def test_request_id_headers() -> None:
    assert request_id({"x-request-id": "req_1"}) == "req_1"
    assert request_id({"request-id": "req_anthropic"}) == "req_anthropic"
    assert request_id({"apim-request-id": "azure-1"}) == "azure-1"
    assert request_id({}) == ""


@pytest.mark.parametrize(
    ("status", "body", "cls", "code"),
    [
        (
            400,
            ErrorBody("too long", "context_length_exceeded"),
            errors.ContextLengthExceededError,
            "INVALID_ARGUMENT",
        ),
        (429, ErrorBody("pay up", "insufficient_quota"), errors.QuotaExhaustedError, "RESOURCE_EXHAUSTED"),
        (429, ErrorBody("slow down", "rate_limit_exceeded"), errors.RateLimitedError, "RESOURCE_EXHAUSTED"),
        (529, ErrorBody("busy", type="overloaded_error"), errors.OverloadedError, "UNAVAILABLE"),
        (401, ErrorBody("bad key"), errors.UpstreamAuthenticationError, "UNAUTHENTICATED"),
        (403, ErrorBody("no"), errors.UpstreamPermissionError, "PERMISSION_DENIED"),
        (404, ErrorBody("which model?"), errors.UpstreamNotFoundError, "NOT_FOUND"),
        (400, ErrorBody("bad"), errors.UpstreamInvalidRequestError, "INVALID_ARGUMENT"),
        (500, ErrorBody("oops"), errors.UpstreamServerError, "UNAVAILABLE"),
        (503, ErrorBody("later"), errors.OverloadedError, "UNAVAILABLE"),
        (504, ErrorBody("slow"), errors.UpstreamTimeoutError, "DEADLINE_EXCEEDED"),
        (400, ErrorBody("filtered", "content_filter"), errors.ContentFilteredError, "INVALID_ARGUMENT"),
    ],
)
def test_classify(status: int, body: ErrorBody, cls: type[errors.UpstreamError], code: str) -> None:
    error = classify("acme", status, body, {"retry-after": "3", "x-request-id": "up-9"})
    assert type(error) is cls
    assert error.code == getattr(grpc.StatusCode, code)
    assert error.upstream_request_id == "up-9"
    assert error.retry_after_seconds == 3.0
    assert error.message.startswith("acme: ")
    assert error.metadata["provider"] == "acme"
    assert error.metadata["http_status"] == str(status)


def test_retry_delay_from_body_when_no_header() -> None:
    error = classify("gemini", 429, ErrorBody("wait", "RESOURCE_EXHAUSTED", retry_after_seconds=26.0))
    assert error.retry_after_seconds == 26.0


def test_assembler_joins_text_and_tool_argument_fragments() -> None:
    chunks: list[StreamChunk] = [
        TextDelta(0, "Hel"),
        TextDelta(1, "other"),
        TextDelta(0, "lo", reasoning="thinking"),
        ToolCallDelta(0, 0, id="call_1", name="lookup", arguments_delta='{"ci'),
        ToolCallDelta(0, 0, arguments_delta='ty": "Paris"}'),
        ToolCallDelta(0, 1, id="call_2", name="time"),
        FinishChunk(0, FinishReason.TOOL_CALLS),
        FinishChunk(1, FinishReason.STOP),
        UsageChunk(TokenUsage(10, 5)),
    ]
    result = Assembler().extend(chunks).result()
    first, second = result.choices
    assert first.text == "Hello"
    assert first.reasoning == "thinking"
    assert [(c.id, c.name, c.arguments_json) for c in first.tool_calls] == [
        ("call_1", "lookup", '{"city": "Paris"}'),
        ("call_2", "time", "{}"),
    ]
    assert first.finish_reason is FinishReason.TOOL_CALLS
    assert (second.text, second.finish_reason) == ("other", FinishReason.STOP)
    assert result.usage == TokenUsage(10, 5)


def test_classify_masks_the_configured_key_and_key_shaped_text() -> None:
    body = ErrorBody(
        "Incorrect API key provided: sk-proj-abc123SECRET. "
        "Also sk-VKMIs****wjh3 and AIzaSyD-abcdefghijklmnopqrstu"
    )
    error = classify("acme", 401, body, secret="abc123SECRET")
    assert "abc123SECRET" not in error.message
    assert "VKMIs" not in error.message
    assert "AIzaSy" not in error.message
    assert "Incorrect API key provided" in error.message


def test_overloaded_503_and_not_implemented_501() -> None:
    assert type(classify("acme", 503, ErrorBody("busy", "server_error"))) is errors.OverloadedError
    assert type(classify("acme", 500, ErrorBody("oops", "server_error"))) is errors.UpstreamServerError
    not_implemented = classify("acme", 501, ErrorBody("no"))
    assert type(not_implemented) is errors.UpstreamInvalidRequestError
    assert not not_implemented.retryable
