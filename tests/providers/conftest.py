"""Provider tests: the shared fixtures directory, and a real simulator on 127.0.0.1."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from omnirelay.sim.server import RunningSim, start

# CI clones the repository with shared/ beside it, as on developer machines.
FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "providers"


def fixture_bytes(relative: str) -> bytes:
    path = FIXTURES / relative
    assert path.is_file(), f"missing shared fixture {path}"
    return path.read_bytes()


def fixture_json(relative: str) -> Any:
    return json.loads(fixture_bytes(relative))


def fixture_http(relative: str) -> tuple[int, dict[str, str], bytes]:
    """A recorded `.http` file: status, headers (lower-cased; last one wins), body."""
    raw = fixture_bytes(relative)
    head, _, body = raw.partition(b"\n\n")
    lines = head.decode().split("\n")
    status = int(lines[0].split()[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


@pytest.fixture
async def sim() -> AsyncIterator[RunningSim]:
    running = await start()
    yield running
    await running.stop()
