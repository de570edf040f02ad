"""``server.grpc_io``: which of the server's threads do gRPC's socket work, applied by ``serve``."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from omnirelay import cli, grpc_io
from omnirelay.config import ConfigError, load_settings
from tests.integration.procfs import thread_stats
from tests.integration.serve import Served, start

pytestmark = pytest.mark.subprocess

CALLS = 3000
NORMAL_HELPERS = {"OMNIRELAY_SERVER__HELPER_THREADS": "normal"}
IN_FLIGHT = 32


def test_poller_turns_the_event_engine_listener_off_and_keeps_other_experiments() -> None:
    assert grpc_io.experiments("poller", "") == "-event_engine_listener"
    assert grpc_io.experiments("event_engine", "") == "event_engine_listener"
    # Whatever the listener was set to before is replaced, in either sign; the rest is kept in order.
    assert (
        grpc_io.experiments("poller", "tcp_rcv_lowat, event_engine_listener,-free_large_allocator")
        == "tcp_rcv_lowat,-free_large_allocator,-event_engine_listener"
    )
    assert grpc_io.experiments("event_engine", "-event_engine_listener,,x") == "x,event_engine_listener"
    with pytest.raises(ValueError, match="expected one of poller, event_engine"):
        grpc_io.experiments("threads", "")


def test_apply_sets_the_environment_and_says_whether_grpc_can_still_take_it() -> None:
    environ = {"GRPC_EXPERIMENTS": "tcp_rcv_lowat"}
    # This test process loaded gRPC long ago: too late here, though child processes get it.
    assert grpc_io.apply("poller", environ) is False
    assert environ["GRPC_EXPERIMENTS"] == "tcp_rcv_lowat,-event_engine_listener"


def test_serve_says_when_grpc_was_loaded_too_early_for_the_setting(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Restored after the test: serve writes the variable for its children even when too late here.
    monkeypatch.setenv("GRPC_EXPERIMENTS", "tcp_rcv_lowat")
    served: list[str] = []

    def run_on(event_loop: str, main: Coroutine[Any, Any, int]) -> int:
        # Not serving: the setting is applied before the loop starts.
        served.append(event_loop)
        main.close()
        return 0

    monkeypatch.setattr(cli, "run_on", run_on)
    assert cli.main(["serve", "--profile", "development", "--port", "0"]) == 0
    assert served == ["uvloop"]
    assert "gRPC was loaded before server.grpc_io = 'poller' could apply" in capsys.readouterr().err
    assert os.environ["GRPC_EXPERIMENTS"] == "tcp_rcv_lowat,-event_engine_listener"


def test_the_default_is_poller_and_an_unknown_choice_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert load_settings("development").server.grpc_io == "poller"
    monkeypatch.setenv("OMNIRELAY_SERVER__GRPC_IO", "threads")
    with pytest.raises(ConfigError, match=r"grpc_io = 'threads': expected one of poller, event_engine"):
        load_settings("development")


def _cpu_ticks(pid: int) -> tuple[int, int]:
    """(ticks the process's EventEngine threads used, ticks all its threads used)."""
    engine = total = 0
    for thread in thread_stats(pid):
        ticks = thread.field(14) + thread.field(15)  # utime + stime
        total += ticks
        if thread.name.startswith("event_engine"):
            engine += ticks
    return engine, total


async def _load(address: str) -> None:
    async with aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest()
        for _ in range(CALLS // IN_FLIGHT):
            answers = await asyncio.gather(*(stub.Check(request) for _ in range(IN_FLIGHT)))
            assert all(a.status == health_pb2.HealthCheckResponse.SERVING for a in answers)


def _engine_share(extra_env: dict[str, str]) -> float:
    """The share of the server's CPU its EventEngine threads used while it answered the load.

    The helper threads keep the kernel's policy: under SCHED_BATCH the EventEngine threads' share
    (their socket work, batched) sat at the 2% the test tells apart, and this is about where the
    socket work is done, not how the threads are scheduled."""
    server: Served = start("--profile", "development", extra_env={**NORMAL_HELPERS, **extra_env})
    try:
        before = _cpu_ticks(server.process.pid)
        asyncio.run(_load(server.address))
        after = _cpu_ticks(server.process.pid)
    finally:
        assert server.stop() == 0
    engine, total = after[0] - before[0], after[1] - before[1]
    assert total > 0
    return engine / total


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux's /proc to see threads")
def test_serve_does_its_socket_work_on_the_poller_thread_unless_told_otherwise() -> None:
    # gRPC names its EventEngine workers "event_engine"; with its listener, they read and write
    # every connection of the server, so they use a visible share of its CPU under load.
    polled = _engine_share({"OMNIRELAY_SERVER__GRPC_IO": "poller"})
    engined = _engine_share({"OMNIRELAY_SERVER__GRPC_IO": "event_engine"})
    assert engined > 0.02, f"EventEngine threads used {engined:.1%} of the server's CPU"
    assert polled < engined / 4, f"poller: {polled:.1%}, event_engine: {engined:.1%}"
