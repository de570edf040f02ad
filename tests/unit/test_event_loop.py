"""The server's event loop: uvloop by default, asyncio's own when settings ask for it."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from omnirelay.cli import run_on
from omnirelay.config import ConfigError, load_settings


async def _loop_kind() -> int:
    loop = asyncio.get_running_loop()
    return 1 if isinstance(loop, uvloop.Loop) else 0


def test_serve_runs_on_uvloop_by_default() -> None:
    settings = load_settings("development")
    assert settings.server.event_loop == "uvloop"
    assert run_on(settings.server.event_loop, _loop_kind()) == 1


def test_asyncio_is_chosen_by_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMNIRELAY_SERVER__EVENT_LOOP", "asyncio")
    settings = load_settings("development")
    assert run_on(settings.server.event_loop, _loop_kind()) == 0


def test_an_unknown_event_loop_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMNIRELAY_SERVER__EVENT_LOOP", "trio")
    with pytest.raises(ConfigError, match=r"event_loop = 'trio': expected one of uvloop, asyncio"):
        load_settings("development")
