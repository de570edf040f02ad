"""The Azure OpenAI adapter against recorded Azure traffic (../shared/fixtures/providers/azure/)."""

from __future__ import annotations

import copy
import json
from typing import Any

import grpc
import httpx
import pytest

from omnirelay import errors
from omnirelay.domain import Deployment, FinishReason, Message, Role, TextPart, UsageChunk
from omnirelay.providers import azure, openai
from tests.providers.conftest import FIXTURES, fixture_bytes, fixture_http, fixture_json
from tests.providers.test_openai_fixtures import (
    SPLITS,
    mocked_transport,
    recorded,
    replay,
    settings,
    simple_call,
)


def _completion() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(fixture_http("azure/chat_completion_http_200.http")[2])
    return data


async def test_chat_completion_over_http() -> None:
    seen: list[httpx.Request] = []
    config = settings("azure", api_key="azure-key-0123", api_version="2024-10-21")
    handler = recorded("azure/chat_completion_http_200.http", seen)
    provider = azure.AzureOpenAIProvider(config, mocked_transport(config, handler))
    result = await provider.complete(simple_call(model="gpt-4o", max_tokens=20))
    await provider.aclose()
    (choice,) = result.choices
    assert choice.text == "The capital of France is **Paris**."
    assert choice.finish_reason is FinishReason.STOP
    assert (result.usage.input_tokens, result.usage.output_tokens) == (14, 9)
    assert (result.usage.cached_input_tokens, result.usage.reasoning_tokens) == (0, 0)
    assert result.upstream_request_id == "1d93fae1-cb8e-4789-8fb6-d26577a3cb77"
    (request,) = seen
    assert request.url.path == "/openai/deployments/gpt-4o/chat/completions"
    assert request.url.params["api-version"] == "2024-10-21"
    assert request.headers["api-key"] == "azure-key-0123"
    assert "authorization" not in request.headers


def test_filtered_choice_finishes_as_content_filter() -> None:
    data = _completion()
    data["choices"][0]["content_filter_results"]["violence"] = {"filtered": True, "severity": "high"}
    result = azure.parse_response(data)
    assert result.choices[0].finish_reason is FinishReason.CONTENT_FILTER
    # The unfiltered original stays a normal stop.
    assert azure.parse_response(_completion()).choices[0].finish_reason is FinishReason.STOP


def test_filtered_prompt_annotation_is_content_filtered() -> None:
    data = copy.deepcopy(_completion())
    data["prompt_filter_results"][0]["content_filter_results"]["jailbreak"] = {
        "filtered": True,
        "detected": True,
    }
    with pytest.raises(errors.ContentFilteredError) as caught:
        azure.parse_response(data)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("split", SPLITS)
def test_stream_async_filter_passed(split: int | None) -> None:
    messages = (Message(Role.USER, (TextPart("What is color?"),)),)
    parser = azure.AzureStreamParser("azure", "", messages)
    result, chunks = replay(fixture_bytes("azure/chat_stream_async_filter_passed.sse"), split, parser)
    (choice,) = result.choices
    assert choice.text == "Color is a"
    assert choice.finish_reason is FinishReason.STOP
    # The recording carries no usage: it is estimated (3 output words; 4 prompt tokens + 3 overhead).
    assert result.usage.estimated
    assert (result.usage.input_tokens, result.usage.output_tokens) == (7, 3)
    assert isinstance(chunks[-1], UsageChunk)


def test_stream_filtered_annotation_ends_the_choice_as_content_filter() -> None:
    raw = fixture_bytes("azure/chat_stream_async_filter_passed.sse")
    frames = raw.split(b"\n\n")
    # The first annotation frame (after " a") now says violence was filtered; the later "stop" must not win.
    index = next(i for i, f in enumerate(frames) if b"content_filter_offsets" in f)
    frames[index] = frames[index].replace(
        b'"violence":{"filtered":false,"severity":"safe"}', b'"violence":{"filtered":true,"severity":"high"}'
    )
    result, _ = replay(b"\n\n".join(frames), None, azure.AzureStreamParser())
    assert result.choices[0].finish_reason is FinishReason.CONTENT_FILTER
    assert result.choices[0].text == "Color is a"


def test_error_400_content_filter() -> None:
    error = openai.parse_error(
        400,
        {"apim-request-id": "f0e1d2c3-0000-4000-8000-000000000000"},
        fixture_bytes("azure/error_400_content_filter.json"),
        provider="azure",
    )
    assert type(error) is errors.ContentFilteredError
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.upstream_code == "content_filter"
    assert error.upstream_request_id == "f0e1d2c3-0000-4000-8000-000000000000"
    assert error.message.startswith("azure: The response was filtered due to the prompt triggering")
    assert not error.retryable


def test_azure_rate_limit_delay_from_the_message() -> None:
    body = {
        "error": {
            "code": "429",
            "message": "Requests to the ChatCompletions_Create Operation under Azure OpenAI API version "
            "2024-10-21 have exceeded token rate limit of your current OpenAI S0 pricing tier. "
            "Please retry after 6 seconds.",
        }
    }
    error = openai.parse_error(429, {"x-ms-request-id": "ms-1"}, json.dumps(body).encode(), provider="azure")
    assert type(error) is errors.RateLimitedError
    assert error.retry_after_seconds == 6.0
    assert error.upstream_request_id == "ms-1"


async def test_embeddings_use_the_deployment_url() -> None:
    seen: list[httpx.Request] = []
    answer = {"data": [{"index": 0, "embedding": [1.0, 0.0]}], "usage": {"prompt_tokens": 1}}

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=answer)

    config = settings("azure", api_version="2024-10-21")
    provider = azure.AzureOpenAIProvider(config, mocked_transport(config, handle))
    result = await provider.embed(Deployment("e", "azure", "embed-small"), ["hi"], 0)
    await provider.aclose()
    assert result.vectors == ((1.0, 0.0),)
    assert seen[0].url.path == "/openai/deployments/embed-small/embeddings"
    assert seen[0].url.params["api-version"] == "2024-10-21"
    assert "dimensions" not in json.loads(seen[0].content)


def test_every_azure_fixture_has_a_test() -> None:
    present = {p.name for p in (FIXTURES / "azure").iterdir()}
    assert present == {
        "chat_completion_http_200.http",
        "chat_stream_async_filter_passed.sse",
        "error_400_content_filter.json",
    }
    assert fixture_json("azure/error_400_content_filter.json")["error"]["code"] == "content_filter"
