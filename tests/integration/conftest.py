"""Fixtures for the Redis-backed cache tests: a key prefix of the test's own, and a raw client."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as redis


@pytest.fixture
def prefix() -> str:
    return f"omnirelay-test:{uuid.uuid4().hex}"


@pytest.fixture
async def raw(redis_url: str, prefix: str) -> AsyncIterator[redis.Redis]:
    """A plain client to look under the store; removes every key the test left under its prefix."""
    client = redis.Redis.from_url(redis_url)
    yield client
    keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()
