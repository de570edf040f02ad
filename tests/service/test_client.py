"""The ergonomic Python clients against a real server."""

from __future__ import annotations

import asyncio

import pytest
from grpc import aio

from omnirelay.app import App
from omnirelay.config import Settings
from omnirelay_client import (
    AsyncClient,
    CallOptions,
    Client,
    DeadlineExceededError,
    Sampling,
    system,
    text_of,
    user,
)
from tests.conftest import StartServer, with_local


async def test_async_client_complete_stream_embed_models(server: tuple[App, aio.Channel]) -> None:
    app, _ = server
    async with AsyncClient(app.address, api_key="sk-test") as client:
        response = await client.complete(
            [system("be brief"), user("hi")], model="fast", sampling=Sampling(max_tokens=4, seed=3)
        )
        assert response.route.resolved_model == "local-small"
        assert response.usage.output_tokens == 4
        events = [
            e
            async for e in client.stream(
                [system("be brief"), user("hi")], model="fast", sampling=Sampling(max_tokens=4, seed=3)
            )
        ]
        streamed = "".join(e.text_delta.text for e in events if e.HasField("text_delta"))
        assert streamed == text_of(response)
        embedded = await client.embed(["x"], model="fast")
        assert len(embedded.embeddings[0].values) == 64
        counted = await client.count_tokens("one two", model="fast")
        assert counted.input_tokens == 5
        assert {m.name for m in await client.list_models()} == {"local-small", "local-large"}
        tagged = await client.complete("hi", options=CallOptions(request_id="mine-1"))
        assert tagged.route.request_id == "mine-1"


async def test_async_client_deadline(start_server: StartServer, settings: Settings) -> None:
    app, _ = await start_server(with_local(settings, ttft_ms=1000.0))
    async with AsyncClient(app.address, timeout=0.1) as client:
        with pytest.raises(DeadlineExceededError):
            await client.complete("hi")


async def test_sync_client_in_a_thread(server: tuple[App, aio.Channel]) -> None:
    app, _ = server

    def use() -> tuple[str, str, int]:
        with Client(app.address) as client:
            unary = client.complete("hello", sampling=Sampling(max_tokens=3))
            streamed = "".join(
                e.text_delta.text
                for e in client.stream("hello", sampling=Sampling(max_tokens=3))
                if e.HasField("text_delta")
            )
            return text_of(unary), streamed, len(client.list_models())

    unary, streamed, models = await asyncio.to_thread(use)
    assert unary == streamed
    assert len(unary.split()) == 3
    assert models == 2
