"""How the services are put on the server: every method served, only the request path's registered
with gRPC's core (whose pending accepts every call pays for), over a real channel."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from grpc import aio
from grpc_health.v1 import health_pb2

from omnirelay.app import REQUEST_PATH, App
from omnirelay.services.registry import register
from omnirelay_client.v1 import benchmark_pb2, cache_pb2, completion_pb2, stream_pb2, types_pb2, usage_pb2

SERVICES: tuple[ServiceDescriptor, ...] = (
    *(
        service
        for module in (completion_pb2, stream_pb2, cache_pb2, benchmark_pb2, usage_pb2)
        for service in module.DESCRIPTOR.services_by_name.values()
    ),
    health_pb2.DESCRIPTOR.services_by_name["Health"],
)
# What gRPC answers for a method no handler serves.
NOT_FOUND_DETAILS = "Method not found!"


def _pending_accepts(kind: str) -> int:
    """grpc.aio's server tasks waiting for the core's next call: one per registered method
    (``_request_registered_call``) and one for all other methods (``_request_call``)."""
    return sum(
        1
        for task in asyncio.all_tasks()
        if getattr(task.get_coro(), "__qualname__", "") == f"AioServer.{kind}"
    )


def _raw(data: bytes) -> bytes:
    return data


async def _call_empty(
    channel: aio.Channel, service: ServiceDescriptor, method: MethodDescriptor
) -> grpc.aio.AioRpcError | None:
    """Call ``method`` with an empty request: the error it ended with, or None (a stream: after one
    message)."""
    path = f"/{service.full_name}/{method.name}"
    empty = b""  # an empty message of any type, serialized
    try:
        if method.server_streaming and method.client_streaming:
            call: Any = channel.stream_stream(path, _raw, _raw)(iter([empty]))
        elif method.server_streaming:
            call = channel.unary_stream(path, _raw, _raw)(empty, timeout=5)
        else:
            await channel.unary_unary(path, _raw, _raw)(empty, timeout=5)
            return None
        async for _ in call:
            break
        call.cancel()
    except grpc.aio.AioRpcError as exc:
        return exc
    return None


async def test_only_the_request_paths_methods_are_registered_with_grpcs_core(
    server: tuple[App, aio.Channel],
) -> None:
    # Reflection registers its one method itself.
    assert _pending_accepts("_request_registered_call") == sum(len(m) for m in REQUEST_PATH.values()) + 1
    assert _pending_accepts("_request_call") == 1
    # Each name in REQUEST_PATH is a method of that service (a typo would register nothing).
    names = {s.name: {m.name for m in s.methods} for s in SERVICES}
    for service, methods in REQUEST_PATH.items():
        assert set(methods) <= names[service], service


@pytest.mark.parametrize(
    ("service", "method"), [(s, m) for s in SERVICES for m in s.methods], ids=lambda v: getattr(v, "name", "")
)
async def test_every_method_of_every_service_reaches_its_handler(
    channel: aio.Channel, service: ServiceDescriptor, method: MethodDescriptor
) -> None:
    error = await _call_empty(channel, service, method)
    # Answered by omnirelay (or not an error at all): not gRPC's "no such method".
    assert error is None or error.details() != NOT_FOUND_DETAILS, (error.code(), error.details())


async def test_a_method_no_service_has_gets_grpcs_not_found(channel: aio.Channel) -> None:
    """The check above can fail: this is what an unserved method looks like."""
    path = "/omnirelay.v1.CompletionService/Nope"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await channel.unary_unary(path, _raw, _raw)(b"", timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert caught.value.details() == NOT_FOUND_DETAILS


class _Models:
    """A CompletionService servicer answering two methods, one of them registered."""

    def __init__(self) -> None:
        self.Complete = self._complete
        self.ListModels = self._list
        self.Embed = self.CountTokens = self._never

    async def _complete(
        self, request: completion_pb2.CompleteRequest, context: Any
    ) -> completion_pb2.CompleteResponse:
        return completion_pb2.CompleteResponse(
            route=types_pb2.RouteFacts(requested_model=f"echo {request.model}")
        )

    async def _list(
        self, request: completion_pb2.ListModelsRequest, context: Any
    ) -> completion_pb2.ListModelsResponse:
        return completion_pb2.ListModelsResponse(models=[types_pb2.ModelInfo(name="m1")])

    async def _never(self, request: Any, context: Any) -> Any:
        raise AssertionError("not called")


async def test_register_serves_hot_and_cold_methods_and_registers_only_the_hot() -> None:
    service = completion_pb2.DESCRIPTOR.services_by_name["CompletionService"]
    server = aio.server()
    before = _pending_accepts("_request_registered_call")
    register(server, _Models(), service, hot=("Complete",))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            complete = channel.unary_unary(
                f"/{service.full_name}/Complete",
                completion_pb2.CompleteRequest.SerializeToString,
                completion_pb2.CompleteResponse.FromString,
            )
            listing = channel.unary_unary(
                f"/{service.full_name}/ListModels",
                completion_pb2.ListModelsRequest.SerializeToString,
                completion_pb2.ListModelsResponse.FromString,
            )
            assert (
                await complete(completion_pb2.CompleteRequest(model="x"), timeout=5)
            ).route.requested_model == "echo x"
            assert [
                m.name for m in (await listing(completion_pb2.ListModelsRequest(), timeout=5)).models
            ] == ["m1"]
        assert _pending_accepts("_request_registered_call") - before == 1
    finally:
        await server.stop(None)


async def test_register_refuses_a_hot_method_the_service_does_not_have() -> None:
    service = completion_pb2.DESCRIPTOR.services_by_name["CompletionService"]
    with pytest.raises(ValueError, match="CompletionService has no method Compleet"):
        register(aio.server(), _Models(), service, hot=("Complete", "Compleet"))
