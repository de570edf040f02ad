"""Where cached answers live: the in-memory store (the default) and Redis (shared by replicas).

Both satisfy ``CacheStore``. A store never makes a call fail: the cache layer
bounds every operation by ``backend_timeout_seconds`` and treats an error or a
timeout as a miss (or a skipped write), counting it in ``backend_errors``.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import redis.asyncio as redis
from aiocache.backends.redis import RedisCache
from aiocache.serializers import BaseSerializer
from google.protobuf.message import DecodeError
from redis.asyncio.connection import UnixDomainSocketConnection, parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from omnirelay.cache.entry import CachedAnswer
from omnirelay.config.cache import CacheSettings


@dataclass(frozen=True, slots=True)
class StoreStats:
    entries: int
    bytes: int
    evictions: int


class CacheStore(Protocol):
    name: str

    async def get(self, key: str) -> CachedAnswer | None:
        """The answer stored under ``key``, or None (absent or expired)."""
        ...

    async def set(self, key: str, answer: CachedAnswer, ttl_seconds: float) -> bool:
        """Store ``answer`` for ``ttl_seconds``; False when the store declined it (too large)."""
        ...

    async def clear(self, model: str | None = None) -> int:
        """Remove every answer (or only ``model``'s: keys start with ``model|``); how many went."""
        ...

    async def stats(self) -> StoreStats: ...

    async def aclose(self) -> None:
        """Release connections (at shutdown)."""
        ...


class CacheStoreError(Exception):
    """A store operation failed (the message never carries the store's URL or password)."""


def build_store(settings: CacheSettings) -> CacheStore | None:
    """The store ``settings.backend`` names; None when caching is off."""
    if settings.backend == "off":
        return None
    if settings.backend == "redis":
        return RedisStore(settings)
    return MemoryStore(settings.max_entries, settings.max_bytes)


# --- memory -------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Slot:
    answer: CachedAnswer
    expires_at: float


class MemoryStore:
    """An LRU bounded by entry count and by total serialized bytes, with a TTL per entry.

    Our own rather than aiocache's SimpleMemoryCache, which has no size bounds:
    a busy gateway would grow it without limit. Both ``get`` and ``set`` are
    O(1) (an OrderedDict kept in recency order, least recent first). Expired
    entries are dropped when touched or when they reach the old end of the LRU.
    """

    name = "memory"

    def __init__(self, max_entries: int, max_bytes: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._clock = clock
        self._slots: OrderedDict[str, _Slot] = OrderedDict()
        self._bytes = 0
        self._evictions = 0

    async def get(self, key: str) -> CachedAnswer | None:
        return self.get_now(key)

    def get_now(self, key: str) -> CachedAnswer | None:
        """``get`` without a coroutine: the memory store never waits (a hit's path saves one)."""
        slot = self._slots.get(key)
        if slot is None:
            return None
        if slot.expires_at <= self._clock():
            self._remove(key)
            return None
        self._slots.move_to_end(key)
        return slot.answer

    async def set(self, key: str, answer: CachedAnswer, ttl_seconds: float) -> bool:
        # An answer that could never fit would evict everything and then go itself.
        if answer.size > self._max_bytes or ttl_seconds <= 0:
            return False
        self._remove(key)
        self._slots[key] = _Slot(answer, self._clock() + ttl_seconds)
        self._bytes += answer.size
        self._evict()
        return True

    async def clear(self, model: str | None = None) -> int:
        self._drop_expired()
        if model is None:
            removed = len(self._slots)
            self._slots.clear()
            self._bytes = 0
            return removed
        prefix = model + "|"
        doomed = [key for key in self._slots if key.startswith(prefix)]
        for key in doomed:
            self._remove(key)
        return len(doomed)

    async def stats(self) -> StoreStats:
        # A full pass, but stats are asked for rarely and should not count dead entries.
        self._drop_expired()
        return StoreStats(entries=len(self._slots), bytes=self._bytes, evictions=self._evictions)

    async def aclose(self) -> None:
        self._slots.clear()
        self._bytes = 0

    def _evict(self) -> None:
        now = self._clock()
        while len(self._slots) > self._max_entries or self._bytes > self._max_bytes:
            _, slot = self._slots.popitem(last=False)
            self._bytes -= slot.answer.size
            # An entry that had already expired was lost to its TTL, not to the bounds.
            if slot.expires_at > now:
                self._evictions += 1

    def _remove(self, key: str) -> None:
        slot = self._slots.pop(key, None)
        if slot is not None:
            self._bytes -= slot.answer.size

    def _drop_expired(self) -> None:
        now = self._clock()
        for key in [k for k, slot in self._slots.items() if slot.expires_at <= now]:
            self._remove(key)


# --- redis --------------------------------------------------------------------------------------

# Keys per SCAN step and per UNLINK when clearing: large enough to be quick, small enough
# that no single command holds Redis up.
_SCAN_BATCH = 500
# A socket timeout below this fails healthy connections (TLS handshakes, a busy server).
_MIN_SOCKET_TIMEOUT = 0.1
_GLOB_SPECIALS = frozenset("\\*?[]")


class _AnswerSerializer(BaseSerializer):  # type: ignore[misc]  # aiocache is untyped
    """Answers as their protobuf bytes (aiocache's serializers speak JSON, str or pickle)."""

    # None: aiocache hands bytes through instead of decoding them as UTF-8.
    DEFAULT_ENCODING = None

    def dumps(self, value: CachedAnswer) -> bytes:
        return value.to_bytes()

    def loads(self, value: bytes | None) -> CachedAnswer | None:
        return None if value is None else CachedAnswer.from_bytes(value)


class _UnixSocketPool(redis.ConnectionPool):
    """A pool for unix:// URLs: aiocache 0.12 always passes a host and port, which it rejects."""

    def __init__(self, *, host: str, port: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)


def _join_key(key: str, namespace: str) -> str:
    # Our own key builder: aiocache's differs by backend (RedisCache adds a ":", BaseCache does not).
    return namespace + key


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in _GLOB_SPECIALS else c for c in text)


class RedisStore:
    """Answers in Redis, shared by every replica using the same ``redis_url`` and ``key_prefix``.

    Keys are ``<key_prefix>:<model>|<digest>``; values are ``CachedAnswer.to_bytes()``,
    expiring by Redis's own TTL (milliseconds). The bounds of the memory store do not
    apply: Redis's ``maxmemory`` policy is what limits it. Socket timeouts are a few
    times ``backend_timeout_seconds`` and failed commands are not retried, so a dead or
    unreachable server fails a call promptly instead of holding a connection.
    """

    name = "redis"

    def __init__(self, settings: CacheSettings) -> None:
        self._namespace = settings.key_prefix + ":"
        target = _parse_redis_url(settings.redis_url)
        self._password = target.pop("password", None)
        # Connect, read and whole-operation timeouts alike: the cache layer's own, shorter
        # timeout bounds a call; these make sure a dead server also frees the connection.
        timeout = max(3 * settings.backend_timeout_seconds, _MIN_SOCKET_TIMEOUT)
        pool_kwargs: dict[str, Any] = {
            "socket_timeout": timeout,
            # The cache layer treats a failure as a miss: a retry would only make it later.
            "retry": Retry(NoBackoff(), 0),
        }
        connect_timeout = target.pop("socket_connect_timeout", timeout)
        max_connections = target.pop("max_connections", None)
        host = target.pop("host", "127.0.0.1")
        port = target.pop("port", 6379)
        db = target.pop("db", 0)
        pool_kwargs.update(target)  # username, path, the TLS connection class, query options
        unix = pool_kwargs.get("connection_class") is UnixDomainSocketConnection
        self._cache = RedisCache(
            serializer=_AnswerSerializer(),
            namespace=self._namespace,
            key_builder=_join_key,
            timeout=timeout,
            endpoint=host,
            port=port,
            db=db,
            password=self._password,
            pool_max_size=max_connections,
            create_connection_timeout=connect_timeout,
            connection_pool_class=_UnixSocketPool if unix else None,
            connection_pool_kwargs=pool_kwargs,
        )
        self._client: redis.Redis = self._cache.client

    async def get(self, key: str) -> CachedAnswer | None:
        try:
            answer: CachedAnswer | None = await self._cache.get(key)
        # DecodeError: bytes under our prefix that are not an answer (another writer, another
        # version). A failure the cache layer counts and treats as a miss, like any other.
        except (RedisError, OSError, DecodeError) as exc:
            raise self._error("get", exc) from None
        return answer

    async def set(self, key: str, answer: CachedAnswer, ttl_seconds: float) -> bool:
        if ttl_seconds <= 0:
            return False
        # A float TTL makes aiocache use PSETEX (milliseconds); at least 1 ms, as 0 is an error.
        ttl = max(float(ttl_seconds), 0.001)
        try:
            await self._cache.set(key, answer, ttl=ttl)
        except (RedisError, OSError) as exc:
            raise self._error("set", exc) from None
        return True

    async def clear(self, model: str | None = None) -> int:
        # SCAN and UNLINK by prefix, never FLUSHDB or KEYS: the database may hold other data,
        # and KEYS blocks the server for the whole keyspace.
        pattern = self._pattern(model)
        removed = 0
        batch: list[bytes] = []
        try:
            async for key in self._client.scan_iter(match=pattern, count=_SCAN_BATCH):
                batch.append(key)
                if len(batch) >= _SCAN_BATCH:
                    removed += await self._client.unlink(*batch)
                    batch = []
            if batch:
                removed += await self._client.unlink(*batch)
        except (RedisError, OSError) as exc:
            raise self._error("clear", exc) from None
        return removed

    async def stats(self) -> StoreStats:
        """The keys under the prefix; bytes and evictions are 0 (Redis does not tell them per prefix).

        The count is approximate if keys come and go during the scan (SCAN may return a key twice).
        """
        entries = 0
        try:
            async for _ in self._client.scan_iter(match=self._pattern(None), count=_SCAN_BATCH):
                entries += 1
        except (RedisError, OSError) as exc:
            raise self._error("stats", exc) from None
        return StoreStats(entries=entries, bytes=0, evictions=0)

    async def aclose(self) -> None:
        # Not aiocache's close(): 0.12 calls redis's deprecated Redis.close().
        await self._client.aclose(close_connection_pool=True)

    def _pattern(self, model: str | None) -> str:
        scope = self._namespace if model is None else f"{self._namespace}{model}|"
        return _glob_escape(scope) + "*"

    def _error(self, operation: str, exc: Exception) -> CacheStoreError:
        # Redis's messages name host and port, not the password; redact it anyway in case
        # a server or library ever echoes it back.
        detail = str(exc)
        if self._password:
            detail = detail.replace(self._password, "***")
        what = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
        return CacheStoreError(f"redis cache {operation} failed: {what}")


def _parse_redis_url(url: str) -> dict[str, Any]:
    try:
        return dict(parse_url(url))
    except ValueError:
        # The URL may carry a password: the message names the setting, never its value.
        raise ValueError("cache redis_url is not a valid redis://, rediss:// or unix:// URL") from None
