"""Health (overall and per service), reflection, and graceful shutdown over a real channel."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from omnirelay.app import SERVICE_NAMES, App
from omnirelay.config import Settings
from omnirelay_client.v1 import completion_pb2_grpc, stream_pb2_grpc
from tests.conftest import StartServer, with_local, with_server
from tests.helpers import drain, event_kinds, first_kind, request, stream_request

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def test_health_is_serving_overall_and_per_service(channel: aio.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    for name in ("", *SERVICE_NAMES):
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=name))
        assert reply.status == SERVING, name
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Check(health_pb2.HealthCheckRequest(service="omnirelay.v1.Nope"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_reflection_lists_every_service_and_health(channel: aio.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    query = reflection_pb2.ServerReflectionRequest(list_services="")
    responses = [r async for r in stub.ServerReflectionInfo(iter([query]))]
    names = {s.name for s in responses[0].list_services_response.service}
    assert set(SERVICE_NAMES) | {"grpc.health.v1.Health"} <= names
    assert set(SERVICE_NAMES) == {
        "omnirelay.v1.CompletionService",
        "omnirelay.v1.StreamCompletionService",
        "omnirelay.v1.BenchmarkService",
        "omnirelay.v1.UsageService",
        "omnirelay.v1.CacheService",
    }
    by_symbol = reflection_pb2.ServerReflectionRequest(
        file_containing_symbol="omnirelay.v1.CompletionService"
    )
    files = [r async for r in stub.ServerReflectionInfo(iter([by_symbol]))]
    assert files[0].file_descriptor_response.file_descriptor_proto


async def test_graceful_shutdown_drains_then_refuses_and_lets_streams_finish(
    start_server: StartServer, settings: Settings
) -> None:
    slow = with_local(settings, tokens_per_second=50.0)
    app, channel = await start_server(
        with_server(slow, shutdown_drain_seconds=0.4, shutdown_grace_seconds=5.0)
    )
    health = health_pb2_grpc.HealthStub(channel)
    watch = health.Watch(health_pb2.HealthCheckRequest(service=""))
    assert (await watch.read()).status == SERVING

    # 30 tokens at 50/s: about 0.6 s, so it is in flight through drain and stop.
    stream = stream_pb2_grpc.StreamCompletionServiceStub(channel).StreamComplete(
        stream_request(max_tokens=30)
    )
    assert await first_kind(stream) == "route_started"

    shutdown = asyncio.create_task(app.shutdown())
    assert (await watch.read()).status == NOT_SERVING
    # During the drain the server still answers, and says it is going away.
    reply = await health.Check(health_pb2.HealthCheckRequest(service="omnirelay.v1.CompletionService"))
    assert reply.status == NOT_SERVING
    await asyncio.sleep(0.5)  # past the drain: the listener is closed to new calls
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await completion_pb2_grpc.CompletionServiceStub(channel).Complete(request(max_tokens=1), timeout=2)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE

    kinds = await event_kinds(stream)
    assert kinds.count("text_delta") == 30
    assert kinds[-1] == "done"
    await asyncio.wait_for(shutdown, 5)
    # The probe's Watch was ended cleanly, not left to hold the shutdown for the grace period.
    assert await watch.read() is aio.EOF
    assert await watch.code() == grpc.StatusCode.OK


async def test_grace_period_cancels_streams_that_run_over(
    start_server: StartServer, settings: Settings
) -> None:
    slow = with_local(settings, tokens_per_second=20.0)
    app, channel = await start_server(with_server(slow, shutdown_grace_seconds=0.3))
    stream = stream_pb2_grpc.StreamCompletionServiceStub(channel).StreamComplete(
        stream_request(max_tokens=1000)
    )
    await stream.read()
    await app.shutdown()
    with pytest.raises(grpc.aio.AioRpcError):
        await drain(stream)
    local = app.providers.get("local")
    await asyncio.sleep(0.05)
    assert getattr(local, "active_streams") == 0  # noqa: B009 (Protocol type hides the counter)


async def test_shutdown_is_idempotent(server: tuple[App, aio.Channel]) -> None:
    app, _ = server
    await app.shutdown(grace=0)
    await app.shutdown(grace=0)
    assert app._stopped.is_set()
