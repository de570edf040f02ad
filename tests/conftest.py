"""Shared fixtures: real servers on port 0 and real grpc.aio channels to them."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from grpc import aio

from omnirelay.app import App, build_app
from omnirelay.config import LocalProviderSettings, Settings, load_settings
from tests.logging_state import LoggingState

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"


def with_local(settings: Settings, **changes: float | int) -> Settings:
    """Settings whose local provider has the given latency knobs."""
    local = settings.providers["local"]
    assert isinstance(local, LocalProviderSettings)
    providers = {**settings.providers, "local": dataclasses.replace(local, **changes)}  # type: ignore[arg-type]
    return dataclasses.replace(settings, providers=providers)


def with_server(settings: Settings, **changes: float | int) -> Settings:
    return dataclasses.replace(settings, server=dataclasses.replace(settings.server, **changes))  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests see only the settings they set: no OMNIRELAY_* leaking in from the shell."""
    for key in list(os.environ):
        if key.startswith("OMNIRELAY_"):
            monkeypatch.delenv(key)


def with_usage_in(settings: Settings, directory: Path) -> Settings:
    """Settings whose usage ledger and spill file live in ``directory`` (each test its own)."""
    usage = dataclasses.replace(
        settings.usage,
        sqlite_path=str(directory / "usage.db"),
        spill_path=str(directory / "usage-spill.jsonl"),
    )
    return dataclasses.replace(settings, usage=usage)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return with_usage_in(load_settings("development"), tmp_path)


StartServer = Callable[[Settings], Awaitable[tuple[App, aio.Channel]]]


@pytest.fixture
async def start_server() -> AsyncIterator[StartServer]:
    """Start an in-process server on 127.0.0.1:0 with the given settings; returns it and a channel."""
    started: list[tuple[App, aio.Channel]] = []

    async def start(s: Settings) -> tuple[App, aio.Channel]:
        # Each server's metrics listener on a free port too: tests run many servers.
        s = dataclasses.replace(s, metrics=dataclasses.replace(s.metrics, port=0))
        app = build_app(s, host="127.0.0.1", port=0)
        await app.start()
        channel = aio.insecure_channel(app.address)
        started.append((app, channel))
        return app, channel

    yield start
    for app, channel in started:
        await channel.close()
        await app.shutdown(grace=0)


@pytest.fixture
async def server(start_server: StartServer, settings: Settings) -> tuple[App, aio.Channel]:
    return await start_server(settings)


@pytest.fixture
async def channel(server: tuple[App, aio.Channel]) -> aio.Channel:
    return server[1]


@pytest.fixture
def redis_url() -> str:
    """The local Redis (127.0.0.1:6379) if it answers PING; skipped otherwise, but failed on CI."""
    import socket  # here, so this fixture stays one appended block

    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            reply = sock.recv(64)
        if not reply.startswith(b"+PONG"):
            raise ConnectionError(f"PING answered {reply[:40]!r}")
    except OSError as exc:
        reason = f"Redis is not reachable on 127.0.0.1:6379: {exc}"
        # CI provides Redis: a missing server there is a broken job, not an optional test.
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return "redis://127.0.0.1:6379/0"


@pytest.fixture
def postgres_dsn() -> str:
    """The local PostgreSQL (127.0.0.1:5432, database ``test``); skipped if absent, failed on CI."""
    import socket

    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=0.5):
            pass
    except OSError as exc:
        reason = f"PostgreSQL is not reachable on 127.0.0.1:5432: {exc}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture
def logging_state() -> Iterator[LoggingState]:
    """Everything ``logs.configure`` changes, put back as it was after the test."""
    state = LoggingState()
    yield state
    state.restore()
