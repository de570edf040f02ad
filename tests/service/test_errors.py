"""Bad input gets a precise status with google.rpc details, and the client turns it into typed errors."""

from __future__ import annotations

import math

import grpc
import pytest
from grpc import aio

from omnirelay.app import App
from omnirelay_client import AsyncClient, InvalidArgumentError, NotFoundError, UnimplementedError
from omnirelay_client.v1 import (
    benchmark_pb2,
    benchmark_pb2_grpc,
    completion_pb2,
    completion_pb2_grpc,
    stream_pb2_grpc,
    types_pb2,
)
from tests.helpers import error_info, field_violations, request, stream_request, user


async def _complete_error(channel: aio.Channel, req: completion_pb2.CompleteRequest) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await completion_pb2_grpc.CompletionServiceStub(channel).Complete(req)
    return caught.value


@pytest.mark.parametrize(
    ("req", "field", "fragment"),
    [
        (completion_pb2.CompleteRequest(model="local-small"), "messages", "at least one message"),
        (request(temperature=2.5), "sampling.temperature", "must be in [0, 2], got 2.5"),
        (request(temperature=-0.1), "sampling.temperature", "must be in [0, 2]"),
        (request(temperature=math.nan), "sampling.temperature", "must be in [0, 2]"),
        (request(max_tokens=-5), "sampling.max_tokens", "must be >= 1, got -5"),
        (request(max_tokens=0), "sampling.max_tokens", "must be >= 1, got 0"),
        (request(top_p=0.0), "sampling.top_p", "must be in (0, 1]"),
        (request(n=17), "sampling.n", "must be from 1 to 16, got 17"),
        (request(stop=["a", "b", "c", "d", "e"]), "sampling.stop", "at most 4"),
        (request(presence_penalty=3.0), "sampling.presence_penalty", "must be in [-2, 2]"),
        (
            completion_pb2.CompleteRequest(
                messages=[types_pb2.Message(content=[types_pb2.ContentPart(text="x")])]
            ),
            "messages[0].role",
            "is required",
        ),
        (
            completion_pb2.CompleteRequest(messages=[types_pb2.Message(role=types_pb2.ROLE_USER)]),
            "messages[0].content",
            "at least one part",
        ),
        (
            completion_pb2.CompleteRequest(
                messages=[
                    types_pb2.Message(role=types_pb2.ROLE_TOOL, content=[types_pb2.ContentPart(text="42")])
                ]
            ),
            "messages[0].tool_call_id",
            "is required",
        ),
        (
            completion_pb2.CompleteRequest(
                messages=[user("x")],
                tool_choice=types_pb2.ToolChoice(mode=types_pb2.ToolChoice.MODE_REQUIRED),
            ),
            "tool_choice.mode",
            "at least one tool",
        ),
        (
            completion_pb2.CompleteRequest(messages=[user("x")], tools=[types_pb2.Tool(name="bad name!")]),
            "tools[0].name",
            "letters, digits",
        ),
        (
            completion_pb2.CompleteRequest(messages=[user("x")], preset="nope"),
            "preset",
            "unknown preset 'nope'",
        ),
    ],
)
async def test_bad_input_is_invalid_argument_naming_the_field(
    channel: aio.Channel, req: completion_pb2.CompleteRequest, field: str, fragment: str
) -> None:
    error = await _complete_error(channel, req)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = field_violations(error)
    assert field in violations, violations
    assert fragment in violations[field]
    assert field in (error.details() or "")
    assert error_info(error).reason == "INVALID_ARGUMENT"
    assert error_info(error).domain == "omnirelay.dev"


async def test_all_violations_are_reported_at_once(channel: aio.Channel) -> None:
    error = await _complete_error(channel, request(temperature=9.0, max_tokens=-1, n=0))
    assert set(field_violations(error)) == {"sampling.temperature", "sampling.max_tokens", "sampling.n"}


async def test_stream_violations_are_prefixed_with_request(channel: aio.Channel) -> None:
    call = stream_pb2_grpc.StreamCompletionServiceStub(channel).StreamComplete(
        stream_request(temperature=3.0)
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in call:
            pass
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "request.sampling.temperature" in field_violations(caught.value)


async def test_unknown_model_is_not_found_with_close_matches(channel: aio.Channel) -> None:
    error = await _complete_error(channel, request(model="local-smal"))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "unknown model 'local-smal'" in (error.details() or "")
    assert "'local-small'" in (error.details() or "")
    info = error_info(error)
    assert info.reason == "MODEL_NOT_FOUND"
    assert info.metadata["model"] == "local-smal"
    assert info.metadata["suggestions"].split(",")[0] == "local-small"
    assert len(info.metadata["request_id"]) == 32


async def test_unknown_provider_prefix_is_not_found(channel: aio.Channel) -> None:
    error = await _complete_error(channel, request(model="openai/gpt-4o"))
    assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_strict_parameters_refuse_what_the_provider_cannot_do(channel: aio.Channel) -> None:
    req = request(
        model="local/small",
        response_format=types_pb2.ResponseFormat(type=types_pb2.ResponseFormat.TYPE_JSON_OBJECT),
    )
    req.routing.strict_parameters = True
    error = await _complete_error(channel, req)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not supported by provider 'local'" in field_violations(error)["sampling.response_format"]


async def test_request_id_comes_back_in_error_metadata(channel: aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await completion_pb2_grpc.CompletionServiceStub(channel).Complete(
            request(model="zzz"), metadata=(("x-request-id", "trace-me"),)
        )
    assert dict(caught.value.trailing_metadata() or ())["x-request-id"] == "trace-me"
    assert error_info(caught.value).metadata["request_id"] == "trace-me"


async def test_pending_services_say_unimplemented_clearly(channel: aio.Channel) -> None:
    call = benchmark_pb2_grpc.BenchmarkServiceStub(channel).RunBenchmark(benchmark_pb2.RunBenchmarkRequest())
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in call:
            pass
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_client_raises_typed_errors_from_rich_details(server: tuple[App, aio.Channel]) -> None:
    app, _ = server
    async with AsyncClient(app.address) as client:
        with pytest.raises(InvalidArgumentError) as bad:
            await client.complete(request(temperature=5.0))
        assert bad.value.field_violations[0].field == "sampling.temperature"
        assert bad.value.reason == "INVALID_ARGUMENT"
        assert bad.value.request_id
        with pytest.raises(NotFoundError) as missing:
            await client.complete("hi", model="gpt-nope")
        assert missing.value.reason == "MODEL_NOT_FOUND"
        with pytest.raises(NotFoundError):
            async for _ in client.stream("hi", model="gpt-nope"):
                pass
        with pytest.raises(UnimplementedError):
            await _pending_via(app.address)


async def _pending_via(address: str) -> None:
    from omnirelay_client.errors import from_rpc_error

    async with aio.insecure_channel(address) as channel:
        try:
            await benchmark_pb2_grpc.BenchmarkServiceStub(channel).EstimateCost(
                benchmark_pb2.EstimateCostRequest()
            )
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
