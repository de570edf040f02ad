"""The Redis cache backend behind real servers: replicas share answers; a dead Redis never fails a call."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import redis.asyncio as redis
from grpc import aio

from omnirelay.app import App
from omnirelay.config import Settings
from omnirelay.sim.server import RunningSim, start
from omnirelay_client.v1 import (
    cache_pb2,
    cache_pb2_grpc,
    completion_pb2,
    completion_pb2_grpc,
    stream_pb2,
    stream_pb2_grpc,
    types_pb2,
)
from tests.conftest import StartServer
from tests.helpers import text, user
from tests.routing_helpers import model, routed, sim_provider

PROMPT = "tell me about the harbor relays"
CALL_TIMEOUT = 10.0
UNREACHABLE = "redis://127.0.0.1:1/0"


@pytest.fixture
async def sim() -> AsyncIterator[RunningSim]:
    running = await start()
    yield running
    await running.stop()


def redis_settings(settings: Settings, sim: RunningSim, url: str, prefix: str, **cache: Any) -> Settings:
    configured = routed(
        settings,
        [sim_provider("sim", sim)],
        [model("cached", ("sim", "answerer"), aliases=("cached-alias",))],
    )
    backend = dataclasses.replace(
        configured.cache, backend="redis", redis_url=url, key_prefix=prefix, **cache
    )
    return dataclasses.replace(configured, cache=backend)


def ask(prompt: str = PROMPT) -> completion_pb2.CompleteRequest:
    return completion_pb2.CompleteRequest(
        model="cached", messages=[user(prompt)], sampling=types_pb2.SamplingParams(temperature=0.0)
    )


async def complete(
    channel: aio.Channel, request: completion_pb2.CompleteRequest
) -> completion_pb2.CompleteResponse:
    response: completion_pb2.CompleteResponse = await completion_pb2_grpc.CompletionServiceStub(
        channel
    ).Complete(request, timeout=CALL_TIMEOUT)
    return response


async def stream(channel: aio.Channel, request: completion_pb2.CompleteRequest) -> list[Any]:
    call = stream_pb2_grpc.StreamCompletionServiceStub(channel).StreamComplete(
        stream_pb2.StreamCompleteRequest(request=request), timeout=CALL_TIMEOUT
    )
    return [e async for e in call]


async def stats(channel: aio.Channel) -> cache_pb2.GetCacheStatsResponse:
    response: cache_pb2.GetCacheStatsResponse = await cache_pb2_grpc.CacheServiceStub(channel).GetCacheStats(
        cache_pb2.GetCacheStatsRequest(), timeout=CALL_TIMEOUT
    )
    return response


async def stored(app: App, count: int) -> None:
    """Wait (bounded) until ``app`` has written ``count`` answers: a write may follow the reply."""
    assert app.cache is not None
    deadline = time.monotonic() + 5.0
    while app.cache.counters.stored < count:
        assert time.monotonic() < deadline, f"{app.cache.counters.stored} answers stored, not {count}"
        await asyncio.sleep(0.01)


async def test_two_servers_share_answers_through_redis(
    start_server: StartServer,
    settings: Settings,
    sim: RunningSim,
    redis_url: str,
    prefix: str,
    raw: redis.Redis,
) -> None:
    # A generous store timeout: this test is about sharing, not about a slow first connection.
    shared = redis_settings(settings, sim, redis_url, prefix, backend_timeout_seconds=2.0)
    app_a, channel_a = await start_server(shared)
    app_b, channel_b = await start_server(shared)
    assert app_a.address != app_b.address

    first = await complete(channel_a, ask())
    assert first.route.cache == types_pb2.CACHE_OUTCOME_MISS
    assert len(sim.simulator.served) == 1
    await stored(app_a, 1)
    keys = [k.decode() async for k in raw.scan_iter(match=f"{prefix}:*")]
    assert len(keys) == 1
    assert keys[0].startswith(f"{prefix}:cached|")
    ttl_ms = await raw.pttl(keys[0])
    assert 0 < ttl_ms <= 3600 * 1000

    # Instance B has never seen the request: it answers from Redis, without an upstream call.
    hit = await complete(channel_b, ask())
    assert hit.route.cache == types_pb2.CACHE_OUTCOME_HIT
    assert text(hit) == text(first)
    assert hit.usage.output_tokens == first.usage.output_tokens
    assert hit.route.provider == "sim"
    assert len(sim.simulator.served) == 1
    streamed = await stream(channel_b, ask())
    assert streamed[-1].done.route.cache == types_pb2.CACHE_OUTCOME_HIT
    assert "".join(e.text_delta.text for e in streamed if e.HasField("text_delta")) == text(first)
    assert len(sim.simulator.served) == 1

    stats_a, stats_b = await stats(channel_a), await stats(channel_b)
    assert stats_a.backend == stats_b.backend == "redis"
    assert (stats_a.misses, stats_a.stored, stats_a.hits) == (1, 1, 0)
    assert (stats_b.misses, stats_b.stored, stats_b.hits) == (0, 0, 2)
    assert stats_a.entries == stats_b.entries == 1
    assert stats_a.backend_errors == stats_b.backend_errors == 0

    # A stream stored by B is a hit on A.
    await stream(channel_b, ask("a streamed question"))
    await stored(app_b, 1)
    assert len(sim.simulator.served) == 2
    from_a = await complete(channel_a, ask("a streamed question"))
    assert from_a.route.cache == types_pb2.CACHE_OUTCOME_HIT
    assert len(sim.simulator.served) == 2

    # Clearing through one replica clears for both.
    cleared = await cache_pb2_grpc.CacheServiceStub(channel_b).ClearCache(
        cache_pb2.ClearCacheRequest(model="cached-alias"), timeout=CALL_TIMEOUT
    )
    assert cleared.removed == 2
    assert (await complete(channel_a, ask())).route.cache == types_pb2.CACHE_OUTCOME_MISS
    assert len(sim.simulator.served) == 3


async def test_an_unreachable_redis_passes_calls_through_and_counts_backend_errors(
    start_server: StartServer, settings: Settings, sim: RunningSim, prefix: str
) -> None:
    app, channel = await start_server(redis_settings(settings, sim, UNREACHABLE, prefix))
    assert app.cache is not None
    answers = []
    for n in (1, 2):
        started = time.monotonic()
        answer = await complete(channel, ask())
        elapsed = time.monotonic() - started
        assert elapsed < 1.0, f"call {n} took {elapsed:.2f}s with Redis down"
        assert answer.choices[0].finish_reason == types_pb2.FINISH_REASON_STOP
        assert answer.route.cache == types_pb2.CACHE_OUTCOME_MISS
        assert len(sim.simulator.served) == n
        answers.append(text(answer))
    assert answers[0] == answers[1] != ""
    started = time.monotonic()
    streamed = await stream(channel, ask())
    assert time.monotonic() - started < 1.0
    assert "".join(e.text_delta.text for e in streamed if e.HasField("text_delta")) == answers[0]
    assert len(sim.simulator.served) == 3
    # Every lookup failed; the writes that followed are failures too (counted as they finish).
    assert app.cache.counters.backend_errors >= 3
    assert app.cache.counters.hits == 0


async def test_get_cache_stats_answers_with_redis_unreachable(
    start_server: StartServer, settings: Settings, sim: RunningSim, prefix: str
) -> None:
    app, channel = await start_server(redis_settings(settings, sim, UNREACHABLE, prefix))
    await complete(channel, ask())
    assert app.cache is not None
    assert app.cache.counters.backend_errors >= 1
    try:
        reported = await stats(channel)
    except aio.AioRpcError as exc:
        pytest.fail(
            f"GetCacheStats failed with Redis unreachable ({exc.code().name}: {exc.details()}); "
            "it should still report the counters, backend_errors among them"
        )
    assert reported.backend == "redis"
    assert reported.misses == 1
    assert reported.backend_errors == app.cache.counters.backend_errors >= 1
    assert reported.hits == 0


async def test_clear_cache_with_redis_unreachable_is_an_error_not_a_hang(
    start_server: StartServer, settings: Settings, sim: RunningSim, prefix: str
) -> None:
    _, channel = await start_server(redis_settings(settings, sim, UNREACHABLE, prefix))
    started = time.monotonic()
    with pytest.raises(aio.AioRpcError) as failed:
        await cache_pb2_grpc.CacheServiceStub(channel).ClearCache(cache_pb2.ClearCacheRequest(), timeout=5.0)
    assert failed.value.code() != grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 2.0
