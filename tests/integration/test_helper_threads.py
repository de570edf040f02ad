"""``serve`` puts every thread but the event loop's under SCHED_BATCH, unless told otherwise."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from omnirelay import helper_threads
from tests.integration.procfs import children, thread_stats
from tests.integration.serve import env, start

pytestmark = [
    pytest.mark.subprocess,
    pytest.mark.skipif(not helper_threads.supported(), reason="needs Linux's SCHED_BATCH and /proc"),
]


def _policies(pid: int) -> dict[int, int]:
    """Each thread's scheduling policy, by thread id."""
    return {thread.tid: thread.field(41) for thread in thread_stats(pid)}


def test_serve_batches_its_helper_threads_and_keeps_the_event_loop_normal() -> None:
    server = start("--profile", "development")
    try:
        policies = _policies(server.process.pid)
    finally:
        assert server.stop() == 0
    # The event loop runs on the main thread, whose id is the process's.
    loop = policies.pop(server.process.pid)
    assert loop == os.SCHED_OTHER
    # gRPC's poller, EventEngine and timer threads at least.
    assert len(policies) >= 3
    assert set(policies.values()) == {os.SCHED_BATCH}, policies
    assert f"helper threads yield to the event loop: {len(policies)} under SCHED_BATCH" in server.stderr


def test_normal_leaves_every_thread_as_it_was() -> None:
    server = start("--profile", "development", extra_env={"OMNIRELAY_SERVER__HELPER_THREADS": "normal"})
    try:
        policies = _policies(server.process.pid)
    finally:
        assert server.stop() == 0
    assert len(policies) >= 4
    assert set(policies.values()) == {os.SCHED_OTHER}, policies
    assert "SCHED_BATCH" not in server.stderr


def _echo_policies(extra_env: dict[str, str]) -> tuple[int, dict[int, int]]:
    """The bench's echo server, serving: its process id and its threads' policies."""
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.echo_server", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
        env={**env(), **extra_env},
    )
    try:
        assert process.stdout is not None
        assert "echo serving on" in process.stdout.readline()
        return process.pid, _policies(process.pid)
    finally:
        process.terminate()
        process.communicate(timeout=10)


def test_the_bench_echo_server_takes_its_own_setting_and_keeps_the_defaults_without_it() -> None:
    pid, policies = _echo_policies({"BENCH_HELPER_THREADS": "batch"})
    assert policies.pop(pid) == os.SCHED_OTHER
    assert len(policies) >= 3
    assert set(policies.values()) == {os.SCHED_BATCH}, policies
    pid, policies = _echo_policies({})
    assert set(policies.values()) == {os.SCHED_OTHER}, policies
    # omnirelay's own setting, exported for a bench run, is not the baselines'.
    pid, policies = _echo_policies({"OMNIRELAY_SERVER__HELPER_THREADS": "batch"})
    assert set(policies.values()) == {os.SCHED_OTHER}, policies


def test_every_worker_of_serve_workers_batches_its_own_helpers() -> None:
    server = start("--profile", "development", "--workers", "2")
    try:
        # The serving line comes once every worker is ready, so each has set its threads by now.
        workers = children(server.process.pid)
        policies = {pid: _policies(pid) for pid in workers}
    finally:
        assert server.stop() == 0
    assert len(workers) == 2
    for pid, threads in policies.items():
        assert threads.pop(pid) == os.SCHED_OTHER
        assert len(threads) >= 3
        assert set(threads.values()) == {os.SCHED_BATCH}, (pid, threads)
