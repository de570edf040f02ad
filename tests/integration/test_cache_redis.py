"""The Redis cache store against a real Redis: round trips, TTLs, sharing, clearing, failures."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as redis

from omnirelay.cache import entry
from omnirelay.cache.entry import CachedAnswer
from omnirelay.cache.stores import CacheStoreError, RedisStore, StoreStats
from omnirelay.config.cache import CacheSettings
from omnirelay_client.v1 import completion_pb2, types_pb2

MakeStore = Callable[..., RedisStore]


def answer(text: str = "hello from redis", model: str = "gpt-4o") -> CachedAnswer:
    response = completion_pb2.CompleteResponse(
        choices=[
            types_pb2.Choice(
                index=0,
                finish_reason=types_pb2.FINISH_REASON_STOP,
                message=types_pb2.Message(
                    role=types_pb2.ROLE_ASSISTANT, content=[types_pb2.ContentPart(text=text)]
                ),
            )
        ],
        usage=types_pb2.Usage(input_tokens=7, output_tokens=3, cost_micros=12),
        route=types_pb2.RouteFacts(resolved_model=model, provider="openai", deployment="openai-east"),
    )
    built = entry.from_response(response)
    assert built is not None
    return built


def key(model: str, n: int) -> str:
    return f"{model}|{n:032x}"


@pytest.fixture
async def make_store(redis_url: str, prefix: str) -> AsyncIterator[MakeStore]:
    stores: list[RedisStore] = []

    def make(key_prefix: str = prefix, url: str = redis_url) -> RedisStore:
        store = RedisStore(CacheSettings(backend="redis", redis_url=url, key_prefix=key_prefix))
        stores.append(store)
        return store

    yield make
    for store in stores:
        await store.aclose()


async def test_an_answer_round_trips_with_events_and_response(
    make_store: MakeStore, raw: redis.Redis, prefix: str
) -> None:
    store = make_store()
    original = answer()
    await store.set(key("gpt-4o", 1), original, 60)
    got = await store.get(key("gpt-4o", 1))
    assert got is not None
    assert got.events == original.events
    assert got.response == original.response
    assert (got.model, got.provider, got.deployment) == ("gpt-4o", "openai", "openai-east")
    assert got.size == original.size
    # Stored under the prefix, as the answer's bytes, with Redis's own TTL.
    stored_key = f"{prefix}:{key('gpt-4o', 1)}"
    assert await raw.get(stored_key) == original.to_bytes()
    assert 59_000 < await raw.pttl(stored_key) <= 60_000
    assert await store.get(key("gpt-4o", 2)) is None


async def test_a_sub_second_ttl_expires(make_store: MakeStore, raw: redis.Redis, prefix: str) -> None:
    store = make_store()
    await store.set(key("gpt-4o", 1), answer(), 0.25)
    assert 0 < await raw.pttl(f"{prefix}:{key('gpt-4o', 1)}") <= 250
    assert await store.get(key("gpt-4o", 1)) is not None
    deadline = time.monotonic() + 2.0
    while await store.get(key("gpt-4o", 1)) is not None:
        assert time.monotonic() < deadline, "the entry outlived its 0.25 s TTL by far"
        await asyncio.sleep(0.05)


async def test_two_stores_share_entries(make_store: MakeStore) -> None:
    writer, reader = make_store(), make_store()
    await writer.set(key("gpt-4o", 1), answer("shared"), 60)
    got = await reader.get(key("gpt-4o", 1))
    assert got is not None
    assert got.response.choices[0].message.content[0].text == "shared"
    assert await reader.clear("gpt-4o") == 1
    assert await writer.get(key("gpt-4o", 1)) is None


async def test_clear_by_model_touches_only_that_models_keys_under_the_prefix(
    make_store: MakeStore, raw: redis.Redis, prefix: str
) -> None:
    store = make_store()
    await store.set(key("gpt-4o", 1), answer(), 60)
    await store.set(key("gpt-4o", 2), answer(), 60)
    await store.set(key("gpt-4o-mini", 1), answer(model="gpt-4o-mini"), 60)
    # Another prefix that merely starts like ours: not ours to clear.
    foreign = f"{prefix}-other:{key('gpt-4o', 1)}"
    await raw.set(foreign, b"someone else's")
    # A model name with glob characters matches literally, not as a pattern.
    assert await store.clear("gpt?4o") == 0
    assert await store.clear("gpt-4o") == 2
    assert await store.get(key("gpt-4o", 1)) is None
    assert await store.get(key("gpt-4o-mini", 1)) is not None
    assert await raw.get(foreign) == b"someone else's"


async def test_clear_all_removes_every_key_under_the_prefix_and_nothing_else(
    make_store: MakeStore, raw: redis.Redis, prefix: str
) -> None:
    store = make_store()
    for n in range(3):
        await store.set(key("gpt-4o", n), answer(), 60)
    await store.set(key("claude", 1), answer(model="claude"), 60)
    foreign = f"{prefix}-other:{key('gpt-4o', 1)}"
    await raw.set(foreign, b"someone else's")
    assert await store.clear() == 4
    assert await store.stats() == StoreStats(entries=0, bytes=0, evictions=0)
    assert await raw.get(foreign) == b"someone else's"


async def test_a_prefix_with_glob_characters_is_matched_literally(
    make_store: MakeStore, raw: redis.Redis, prefix: str
) -> None:
    store = make_store(key_prefix=f"{prefix}[ab]*")
    await store.set(key("gpt-4o", 1), answer(), 60)
    # Would match the prefix if it were read as a pattern.
    lookalike = f"{prefix}a-whatever:{key('gpt-4o', 1)}"
    await raw.set(lookalike, b"not the store's")
    assert await store.clear() == 1
    assert await raw.get(lookalike) == b"not the store's"


async def test_stats_count_the_keys_under_the_prefix(
    make_store: MakeStore, raw: redis.Redis, prefix: str
) -> None:
    store = make_store()
    assert await store.stats() == StoreStats(entries=0, bytes=0, evictions=0)
    for n in range(5):
        await store.set(key("gpt-4o", n), answer(), 60)
    await raw.set(f"{prefix}-other:x", b"not counted")
    assert await store.stats() == StoreStats(entries=5, bytes=0, evictions=0)


async def test_bytes_that_are_not_an_answer_fail_the_get(
    make_store: MakeStore, raw: redis.Redis, prefix: str
) -> None:
    store = make_store()
    await raw.set(f"{prefix}:{key('gpt-4o', 1)}", b"\xff\xff not protobuf")
    with pytest.raises(CacheStoreError, match="get failed"):
        await store.get(key("gpt-4o", 1))


async def test_an_unreachable_redis_fails_promptly_without_the_password(make_store: MakeStore) -> None:
    store = make_store(url="redis://:hunter2@127.0.0.1:1/0")
    operations = {
        "get": lambda: store.get(key("gpt-4o", 1)),
        "set": lambda: store.set(key("gpt-4o", 1), answer(), 60),
        "clear": lambda: store.clear("gpt-4o"),
        "stats": store.stats,
    }
    for name, operation in operations.items():
        started = time.monotonic()
        with pytest.raises(CacheStoreError) as caught:
            await operation()
        assert time.monotonic() - started < 2.0, name
        assert f"{name} failed" in str(caught.value)
        assert "hunter2" not in str(caught.value)
        assert "hunter2" not in repr(caught.value)


async def test_a_redis_that_never_answers_fails_promptly(make_store: MakeStore) -> None:
    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # accepts, reads, never replies
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    store = make_store(url=f"redis://:hunter2@127.0.0.1:{port}/0")
    try:
        started = time.monotonic()
        with pytest.raises(CacheStoreError) as caught:
            await store.get(key("gpt-4o", 1))
        assert time.monotonic() - started < 2.0
        assert "hunter2" not in str(caught.value)
    finally:
        # The store's connection first: the server waits for its connections to end.
        await store.aclose()
        server.close()
        await server.wait_closed()
