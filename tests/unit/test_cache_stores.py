"""The in-memory cache store: hits, TTLs, LRU bounds by entries and bytes, clearing, stats."""

from __future__ import annotations

import dataclasses

import pytest
from redis.asyncio.connection import UnixDomainSocketConnection

from omnirelay.cache import entry
from omnirelay.cache.entry import CachedAnswer
from omnirelay.cache.stores import MemoryStore, RedisStore, StoreStats, build_store
from omnirelay.config.cache import CacheSettings
from omnirelay_client.v1 import completion_pb2, types_pb2


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def answer(text: str = "hello", model: str = "gpt-4o") -> CachedAnswer:
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
        usage=types_pb2.Usage(input_tokens=5, output_tokens=2),
        route=types_pb2.RouteFacts(resolved_model=model, provider="openai", deployment="openai-east"),
    )
    built = entry.from_response(response)
    assert built is not None
    return built


def key(model: str, n: int) -> str:
    return f"{model}|{n:032x}"


def store(max_entries: int = 100, max_bytes: int = 1 << 20) -> tuple[MemoryStore, FakeClock]:
    clock = FakeClock()
    return MemoryStore(max_entries, max_bytes, clock=clock), clock


async def test_get_returns_what_was_set_and_none_for_an_unknown_key() -> None:
    s, _ = store()
    a = answer("cached text")
    await s.set(key("gpt-4o", 1), a, 60)
    assert await s.get(key("gpt-4o", 1)) is a
    assert await s.get(key("gpt-4o", 2)) is None


async def test_an_expired_entry_is_a_miss_and_is_dropped() -> None:
    s, clock = store()
    a = answer()
    await s.set(key("gpt-4o", 1), a, 10)
    clock.now += 9.9
    assert await s.get(key("gpt-4o", 1)) is a
    clock.now += 0.1
    assert await s.get(key("gpt-4o", 1)) is None
    assert await s.stats() == StoreStats(entries=0, bytes=0, evictions=0)


async def test_a_non_positive_ttl_stores_nothing() -> None:
    s, _ = store()
    await s.set(key("gpt-4o", 1), answer(), 0)
    assert await s.get(key("gpt-4o", 1)) is None


async def test_resetting_a_key_replaces_its_answer_and_its_bytes() -> None:
    s, _ = store()
    first, second = answer("short"), answer("a rather longer answer")
    await s.set(key("gpt-4o", 1), first, 60)
    await s.set(key("gpt-4o", 1), second, 60)
    assert await s.get(key("gpt-4o", 1)) is second
    stats = await s.stats()
    assert (stats.entries, stats.bytes) == (1, second.size)


async def test_entry_bound_evicts_the_least_recently_used() -> None:
    s, _ = store(max_entries=2)
    await s.set(key("m", 1), answer("one"), 60)
    await s.set(key("m", 2), answer("two"), 60)
    # Reading 1 makes 2 the least recently used, though 1 was written first.
    assert await s.get(key("m", 1)) is not None
    await s.set(key("m", 3), answer("three"), 60)
    assert await s.get(key("m", 2)) is None
    assert await s.get(key("m", 1)) is not None
    assert await s.get(key("m", 3)) is not None
    assert (await s.stats()).evictions == 1


async def test_byte_bound_evicts_least_recently_used_until_it_fits() -> None:
    a, b, c = answer("a" * 100), answer("b" * 100), answer("c" * 100)
    s, _ = store(max_bytes=a.size + b.size + c.size - 1)
    await s.set(key("m", 1), a, 60)
    await s.set(key("m", 2), b, 60)
    assert await s.get(key("m", 1)) is a
    await s.set(key("m", 3), c, 60)
    assert await s.get(key("m", 2)) is None
    assert await s.get(key("m", 1)) is a
    stats = await s.stats()
    assert (stats.entries, stats.bytes, stats.evictions) == (2, a.size + c.size, 1)


async def test_a_large_answer_evicts_as_many_entries_as_it_needs() -> None:
    small = [answer(f"small {i}") for i in range(4)]
    # The text is stored twice (as events and as the response): this is over twice a small one.
    big = answer("x" * small[0].size)
    s, _ = store(max_bytes=sum(a.size for a in small))
    assert 2 * small[0].size < big.size <= sum(a.size for a in small)
    for i, a in enumerate(small):
        await s.set(key("m", i), a, 60)
    await s.set(key("m", 9), big, 60)
    stats = await s.stats()
    assert stats.bytes <= sum(a.size for a in small)
    assert stats.evictions >= 2
    assert await s.get(key("m", 9)) is big
    assert await s.get(key("m", 0)) is None


async def test_an_answer_larger_than_max_bytes_is_not_stored_and_evicts_nothing() -> None:
    kept = answer("kept")
    huge = answer("x" * 2000)
    s, _ = store(max_bytes=huge.size - 1)
    await s.set(key("m", 1), kept, 60)
    await s.set(key("m", 2), huge, 60)
    assert await s.get(key("m", 2)) is None
    assert await s.get(key("m", 1)) is kept
    assert (await s.stats()).evictions == 0


async def test_an_expired_entry_pushed_out_by_the_bounds_is_not_an_eviction() -> None:
    s, clock = store(max_entries=1)
    await s.set(key("m", 1), answer("short-lived"), 1)
    clock.now += 2
    await s.set(key("m", 2), answer("fresh"), 60)
    assert (await s.stats()).evictions == 0


async def test_clear_by_model_removes_only_that_models_keys() -> None:
    s, _ = store()
    await s.set(key("gpt-4o", 1), answer(), 60)
    await s.set(key("gpt-4o", 2), answer(), 60)
    await s.set(key("gpt-4o-mini", 1), answer(model="gpt-4o-mini"), 60)
    await s.set(key("claude", 1), answer(model="claude"), 60)
    assert await s.clear("gpt-4o") == 2
    assert await s.get(key("gpt-4o", 1)) is None
    assert await s.get(key("gpt-4o-mini", 1)) is not None
    assert await s.get(key("claude", 1)) is not None
    assert await s.clear("nobody") == 0


async def test_clear_all_removes_everything_and_resets_bytes() -> None:
    s, _ = store()
    await s.set(key("gpt-4o", 1), answer(), 60)
    await s.set(key("claude", 1), answer(model="claude"), 60)
    assert await s.clear() == 2
    stats = await s.stats()
    assert (stats.entries, stats.bytes) == (0, 0)


async def test_clear_does_not_count_expired_entries() -> None:
    s, clock = store()
    await s.set(key("gpt-4o", 1), answer(), 1)
    await s.set(key("gpt-4o", 2), answer(), 60)
    clock.now += 5
    assert await s.clear("gpt-4o") == 1


async def test_stats_count_live_entries_and_their_bytes() -> None:
    s, clock = store()
    a, b = answer("one"), answer("two two")
    await s.set(key("m", 1), a, 60)
    await s.set(key("m", 2), b, 5)
    stats = await s.stats()
    assert (stats.entries, stats.bytes, stats.evictions) == (2, a.size + b.size, 0)
    clock.now += 10
    stats = await s.stats()
    assert (stats.entries, stats.bytes) == (1, a.size)


async def test_size_is_the_serialized_size() -> None:
    a = answer("some text")
    assert a.size == len(a.to_bytes())


async def test_build_store_follows_the_backend_setting() -> None:
    memory = build_store(CacheSettings(backend="memory", max_entries=7))
    assert isinstance(memory, MemoryStore)
    assert memory.name == "memory"
    assert build_store(CacheSettings(backend="off")) is None
    redis = build_store(dataclasses.replace(CacheSettings(), backend="redis"))
    assert isinstance(redis, RedisStore)
    assert redis.name == "redis"
    await redis.aclose()


async def test_redis_store_takes_unix_socket_urls() -> None:
    # Built only: connections are made on first use. The pool must aim at the socket and the db.
    redis = RedisStore(CacheSettings(backend="redis", redis_url="unix:///run/redis.sock?db=2"))
    pool = redis._client.connection_pool
    assert pool.connection_class is UnixDomainSocketConnection
    assert pool.connection_kwargs["path"] == "/run/redis.sock"
    assert pool.connection_kwargs["db"] == 2
    assert "host" not in pool.connection_kwargs
    await redis.aclose()


def test_an_invalid_redis_url_is_reported_without_the_url() -> None:
    with pytest.raises(ValueError, match="redis_url") as caught:
        RedisStore(CacheSettings(backend="redis", redis_url="http://:hunter2@example.com/0"))
    assert "hunter2" not in str(caught.value)
