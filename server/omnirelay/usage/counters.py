"""Spend counters: integers (micro-USD) per budget and period, in this process or shared in Redis.

The budget book only needs a handful of atomic operations, so that is the whole
contract: read many, add (returning the new value), set-if-absent (seeding from
the ledger at start-up) and a first-time-only flag (alert dedupe). Every key
carries a time to live chosen by the caller, so counters of past periods go
away on their own.

``MemoryCounters`` serves one process. ``RedisCounters`` is what several
replicas share: spend added on one is seen by all, and ``once`` is true on
exactly one of them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Protocol

import redis.asyncio as redis
from redis.exceptions import RedisError


class SpendCounters(Protocol):
    async def get_many(self, keys: Sequence[str]) -> list[int]:
        """The value of each key, in order; 0 for a key that does not exist (or expired)."""
        ...

    async def add(self, key: str, micros: int, ttl_seconds: float | None) -> int:
        """Add ``micros`` (may be negative) atomically and return the new value.

        The key then expires ``ttl_seconds`` from now (None: never).
        """
        ...

    async def seed(self, key: str, micros: int, ttl_seconds: float | None) -> None:
        """Set the key to ``micros`` only if it does not exist yet."""
        ...

    async def once(self, key: str, ttl_seconds: float | None) -> bool:
        """True the first time ``key`` is asked for, False every other time, across all users of the store."""
        ...

    async def aclose(self) -> None: ...


class CountersUnavailableError(Exception):
    """The counter store could not be reached or refused a command."""


class MemoryCounters:
    """Counters in dicts, for one process. Nothing here awaits, so every operation is atomic."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._values: dict[str, int] = {}
        self._flags: set[str] = set()
        # Expiry times for both kinds of key; a key without one lives until the process ends.
        self._expires: dict[str, float] = {}
        self._next_sweep = 0.0

    async def get_many(self, keys: Sequence[str]) -> list[int]:
        self._sweep()
        return [self._values.get(key, 0) if self._alive(key) else 0 for key in keys]

    async def add(self, key: str, micros: int, ttl_seconds: float | None) -> int:
        self._sweep()
        value = (self._values.get(key, 0) if self._alive(key) else 0) + micros
        self._values[key] = value
        self._expire(key, ttl_seconds)
        return value

    async def seed(self, key: str, micros: int, ttl_seconds: float | None) -> None:
        if key in self._values and self._alive(key):
            return
        self._values[key] = micros
        self._expire(key, ttl_seconds)

    async def once(self, key: str, ttl_seconds: float | None) -> bool:
        flag = "\0flag:" + key  # flags and values never share a key
        if flag in self._flags and self._alive(flag):
            return False
        self._flags.add(flag)
        self._expire(flag, ttl_seconds)
        return True

    async def aclose(self) -> None:
        self._values.clear()
        self._flags.clear()
        self._expires.clear()

    def _alive(self, key: str) -> bool:
        deadline = self._expires.get(key)
        if deadline is None or deadline > self._clock():
            return True
        self._drop(key)
        return False

    def _expire(self, key: str, ttl_seconds: float | None) -> None:
        # Like Redis's script below: no TTL leaves whatever expiry the key has.
        if ttl_seconds is not None:
            self._expires[key] = self._clock() + ttl_seconds

    def _drop(self, key: str) -> None:
        self._values.pop(key, None)
        self._flags.discard(key)
        self._expires.pop(key, None)

    def _sweep(self) -> None:
        # Keys of past periods are never read again; sweep them now and then so a
        # long-running process does not keep one set per day forever.
        now = self._clock()
        if now < self._next_sweep:
            return
        self._next_sweep = now + _SWEEP_INTERVAL_SECONDS
        for key in [k for k, deadline in self._expires.items() if deadline <= now]:
            self._drop(key)


_SWEEP_INTERVAL_SECONDS = 60.0

# INCRBY and PEXPIRE as one step: a counter must never be left without its expiry.
_ADD_SCRIPT = """
local value = redis.call('INCRBY', KEYS[1], ARGV[1])
if tonumber(ARGV[2]) > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return value
"""


class RedisCounters:
    """Counters in Redis under ``prefix``; every replica with the same URL and prefix shares them.

    Keys are ``<prefix>spend:<key>`` (plain integers, ``GET`` shows them) and
    ``<prefix>once:<key>``. ``add`` runs INCRBY and PEXPIRE in one Lua script;
    ``seed`` and ``once`` are ``SET NX``; ``get_many`` is one MGET. Failures raise
    ``CountersUnavailableError`` with the password, if any, kept out.
    """

    def __init__(self, url: str, prefix: str = "omnirelay:budget:", *, timeout_seconds: float = 2.0) -> None:
        self._prefix = prefix
        try:
            self._client: redis.Redis = redis.Redis.from_url(
                url, socket_timeout=timeout_seconds, socket_connect_timeout=timeout_seconds
            )
        except ValueError:
            # The URL may carry a password: name the setting, never the value.
            raise ValueError(
                "budget counters redis URL is not a valid redis://, rediss:// or unix:// URL"
            ) from None
        self._password = self._client.connection_pool.connection_kwargs.get("password") or ""
        self._add = self._client.register_script(_ADD_SCRIPT)

    async def get_many(self, keys: Sequence[str]) -> list[int]:
        if not keys:
            return []
        try:
            values = await self._client.mget([self._spend(key) for key in keys])
        except (RedisError, OSError) as exc:
            raise self._error("read", exc) from None
        return [int(value) if value is not None else 0 for value in values]

    async def add(self, key: str, micros: int, ttl_seconds: float | None) -> int:
        try:
            value = await self._add(keys=[self._spend(key)], args=[micros, _millis(ttl_seconds)])
        except (RedisError, OSError) as exc:
            raise self._error("add", exc) from None
        return int(value)

    async def seed(self, key: str, micros: int, ttl_seconds: float | None) -> None:
        try:
            await self._client.set(self._spend(key), micros, nx=True, px=_millis(ttl_seconds) or None)
        except (RedisError, OSError) as exc:
            raise self._error("seed", exc) from None

    async def once(self, key: str, ttl_seconds: float | None) -> bool:
        try:
            created = await self._client.set(
                f"{self._prefix}once:{key}", b"1", nx=True, px=_millis(ttl_seconds) or None
            )
        except (RedisError, OSError) as exc:
            raise self._error("once", exc) from None
        return bool(created)

    async def aclose(self) -> None:
        await self._client.aclose(close_connection_pool=True)

    def _spend(self, key: str) -> str:
        # Spend and once-flags in separate namespaces, whatever the budget ids look like.
        return f"{self._prefix}spend:{key}"

    def _error(self, operation: str, exc: Exception) -> CountersUnavailableError:
        # Redis names host and port in its messages, not the password; redact it anyway
        # in case a server or library ever echoes it back.
        detail = str(exc)
        if self._password:
            detail = detail.replace(str(self._password), "***")
        what = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
        return CountersUnavailableError(f"budget counters {operation} failed: {what}")


def _millis(ttl_seconds: float | None) -> int:
    """A TTL in whole milliseconds for Redis; 0 means none. At least 1: PEXPIRE 0 would delete the key."""
    if ttl_seconds is None:
        return 0
    return max(int(ttl_seconds * 1000), 1)
