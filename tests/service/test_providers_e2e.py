"""Complete and StreamComplete end to end: gRPC client → omnirelay → real HTTP → the simulator."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc import aio

from omnirelay.app import App
from omnirelay.config import HttpProviderSettings, ModelSettings, Settings
from omnirelay.config.routing import DeploymentSettings
from omnirelay.sim.server import RunningSim, start
from omnirelay_client.v1 import completion_pb2, completion_pb2_grpc, stream_pb2_grpc, types_pb2
from tests.conftest import StartServer
from tests.helpers import error_info, event_kinds, request, rich_status, stream_request, text, user

SECRET = "sk-e2e-secret-never-shown"
PROVIDERS = {
    "sim-openai": ("openai", "/v1", ""),
    "sim-azure": ("azure", "", "2024-10-21"),
    "sim-anthropic": ("anthropic", "", ""),
    "sim-gemini": ("gemini", "", ""),
    "sim-ollama": ("ollama", "", ""),
}


@pytest.fixture
async def sim() -> AsyncIterator[RunningSim]:
    running = await start()
    yield running
    await running.stop()


def sim_settings(settings: Settings, sim: RunningSim) -> Settings:
    providers = dict(settings.providers)
    models = dict(settings.models)
    for name, (kind, path, version) in PROVIDERS.items():
        providers[name] = HttpProviderSettings(
            name=name, kind=kind, base_url=sim.base_url + path, api_key=SECRET, api_version=version
        )
        models[f"{name}-model"] = ModelSettings(
            name=f"{name}-model",
            family="sim",
            aliases=(),
            capabilities=("streaming", "tools"),
            context_window=128_000,
            max_output_tokens=4096,
            presets={},
            deployments=(DeploymentSettings(name, "sim-model"),),
        )
    return dataclasses.replace(settings, providers=providers, models=models)


@pytest.fixture
async def gateway(start_server: StartServer, settings: Settings, sim: RunningSim) -> tuple[App, aio.Channel]:
    return await start_server(sim_settings(settings, sim))


@pytest.mark.parametrize("provider", list(PROVIDERS))
async def test_complete_and_stream_through_each_provider(
    gateway: tuple[App, aio.Channel], sim: RunningSim, provider: str
) -> None:
    _, channel = gateway
    model = f"{provider}-model"
    unary = await completion_pb2_grpc.CompletionServiceStub(channel).Complete(
        request(model=model, max_tokens=6)
    )
    assert unary.route.resolved_model == model
    assert unary.route.provider == provider
    assert len(text(unary).split()) == 6
    assert unary.choices[0].finish_reason == types_pb2.FINISH_REASON_LENGTH
    assert unary.usage.output_tokens == 6
    assert unary.usage.input_tokens > 0
    events = [
        e
        async for e in stream_pb2_grpc.StreamCompletionServiceStub(channel).StreamComplete(
            stream_request(model=model, max_tokens=6)
        )
    ]
    assert events[0].route_started.provider == provider
    assert "".join(e.text_delta.text for e in events if e.HasField("text_delta")) == text(unary)
    usage = [e.usage for e in events if e.HasField("usage")]
    assert [u.output_tokens for u in usage] == [6]
    assert events[-1].WhichOneof("event") == "done"
    assert sim.simulator.served[-1].completed


@pytest.mark.parametrize("provider", list(PROVIDERS))
async def test_upstream_rate_limit_becomes_resource_exhausted_with_retry_info(
    gateway: tuple[App, aio.Channel], provider: str
) -> None:
    _, channel = gateway
    stub = completion_pb2_grpc.CompletionServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Complete(request(model=f"{provider}/sim-model+fault=429+retry_after=3"))
    error = caught.value
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    info = error_info(error)
    assert info.reason == "UPSTREAM_RATE_LIMITED"
    assert info.metadata["provider"] == provider
    assert info.metadata["upstream_request_id"].startswith("sim-")
    assert SECRET not in (error.details() or "")
    delays = []
    for detail in rich_status(error).details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            delays.append(retry.retry_delay.seconds)
    assert delays == [3]


@pytest.mark.parametrize("provider", list(PROVIDERS))
async def test_grpc_cancel_reaches_the_upstream(
    gateway: tuple[App, aio.Channel], sim: RunningSim, provider: str
) -> None:
    _, channel = gateway
    call = stream_pb2_grpc.StreamCompletionServiceStub(channel).StreamComplete(
        stream_request(model=f"{provider}/sim-model+itl=30+tokens=300")
    )
    deltas = 0
    async for event in call:
        if event.HasField("text_delta"):
            deltas += 1
            if deltas == 3:
                break
    call.cancel()
    for _ in range(150):
        if sim.simulator.served and sim.simulator.served[-1].disconnected:
            break
        await asyncio.sleep(0.02)
    served = sim.simulator.served[-1]
    assert served.disconnected
    assert served.pieces_sent < 300


async def test_deadline_reaches_the_upstream(gateway: tuple[App, aio.Channel], sim: RunningSim) -> None:
    _, channel = gateway
    stub = completion_pb2_grpc.CompletionServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Complete(request(model="sim-openai/sim-model+fault=hang"), timeout=0.3)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    for _ in range(100):
        if sim.simulator.served[-1].disconnected:
            break
        await asyncio.sleep(0.02)
    assert sim.simulator.served[-1].disconnected


async def test_stream_broken_mid_way_is_unavailable(gateway: tuple[App, aio.Channel]) -> None:
    _, channel = gateway
    call = stream_pb2_grpc.StreamCompletionServiceStub(channel).StreamComplete(
        stream_request(model="sim-anthropic/sim-model+fault=drop+after=2")
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await event_kinds(call)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    info = error_info(caught.value)
    # Chunks already reached the caller, so the default recovery ("error") ends the stream and
    # says how much was delivered instead of replaying anything.
    assert info.reason == "STREAM_INTERRUPTED"
    assert int(info.metadata["delivered_chunks"]) >= 2
    assert "failed after" in (caught.value.details() or "")


@pytest.mark.parametrize("provider", ["sim-openai", "sim-gemini", "sim-ollama"])
async def test_embed_through_providers(gateway: tuple[App, aio.Channel], provider: str) -> None:
    _, channel = gateway
    stub = completion_pb2_grpc.CompletionServiceStub(channel)
    response = await stub.Embed(
        completion_pb2.EmbedRequest(model=f"{provider}/sim-embed", inputs=["alpha", "beta gamma"])
    )
    assert [e.index for e in response.embeddings] == [0, 1]
    assert len(response.embeddings[0].values) > 0
    assert response.embeddings[0].values != response.embeddings[1].values


async def test_count_tokens_is_a_local_estimate_for_remote_models(gateway: tuple[App, aio.Channel]) -> None:
    _, channel = gateway
    stub = completion_pb2_grpc.CompletionServiceStub(channel)
    counted = await stub.CountTokens(
        completion_pb2.CountTokensRequest(model="sim-anthropic-model", messages=[user("one two three")])
    )
    assert counted.estimated
    assert counted.input_tokens == 6
    exact = await stub.CountTokens(
        completion_pb2.CountTokensRequest(model="local-small", messages=[user("one two three")])
    )
    assert not exact.estimated
