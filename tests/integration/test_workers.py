"""``omnirelay serve --workers N``: real processes sharing one port, supervised by their parent.

Which worker answered is read from /proc: each worker's socket inodes (/proc/PID/fd)
matched against the kernel's TCP table (/proc/PID/net/tcp, tcp6) by local port and state.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from grpc import aio

from omnirelay_client.v1 import completion_pb2_grpc, stream_pb2_grpc
from tests.helpers import event_kinds, first_kind, request, stream_request
from tests.integration.procfs import children, state_and_parent
from tests.integration.serve import Served, run_cli, start

pytestmark = pytest.mark.subprocess

ESTABLISHED = "01"
LISTEN = "0A"
FAST_STOP = {"OMNIRELAY_SERVER__SHUTDOWN_DRAIN_SECONDS": "0"}


def sockets(pid: int, port: int, state: str) -> int:
    """How many of ``pid``'s TCP sockets have local port ``port`` and ``state``."""
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    count = 0
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local, st, inode = fields[1], fields[3], fields[9]
            if int(local.rsplit(":", 1)[1], 16) == port and st == state and inode in inodes:
                count += 1
    return count


def all_gone(pids: set[int]) -> bool:
    """None of ``pids`` runs any more (a zombie left to a non-reaping init counts as gone)."""
    return all((info := state_and_parent(pid)) is None or info[0] == "Z" for pid in pids)


def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def port_of(served: Served) -> int:
    return int(served.address.rsplit(":", 1)[1])


def listening_workers(served: Served) -> set[int]:
    port = port_of(served)
    return {pid for pid in children(served.process.pid) if _safe_sockets(pid, port, LISTEN)}


def _safe_sockets(pid: int, port: int, state: str) -> int:
    try:
        return sockets(pid, port, state)
    except OSError:  # the process exited while we looked
        return 0


async def complete_on_fresh_channels(address: str, channels: int, calls: int = 1) -> list[aio.Channel]:
    """Open ``channels`` channels, each with its own connection, and make ``calls`` calls on each."""
    opened = [
        aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(channels)
    ]
    for channel in opened:
        stub = completion_pb2_grpc.CompletionServiceStub(channel)
        for _ in range(calls):
            response = await stub.Complete(request(max_tokens=3), timeout=10)
            assert response.choices
    return opened


async def test_two_workers_share_the_port_and_both_answer() -> None:
    served = start("--workers", "2", extra_env=FAST_STOP)
    try:
        port = port_of(served)
        workers = children(served.process.pid)
        assert len(workers) == 2
        # The line comes only after every worker listens.
        assert all(sockets(pid, port, LISTEN) for pid in workers)
        # 20 connections: the kernel hashes each to one worker, so all on one has odds 2**-19.
        opened = await complete_on_fresh_channels(served.address, channels=20, calls=2)
        try:
            per_worker = {pid: sockets(pid, port, ESTABLISHED) for pid in workers}
            assert all(count >= 1 for count in per_worker.values()), per_worker
            assert sum(per_worker.values()) >= 20
        finally:
            await asyncio.gather(*(channel.close() for channel in opened))
    finally:
        code = served.stop()
    assert code == 0, served.stderr
    assert served.stderr.count("omnirelay.app stopped") == 2


async def test_a_killed_worker_is_restarted_and_calls_keep_succeeding() -> None:
    served = start("--workers", "2", extra_env=FAST_STOP)
    try:
        before = children(served.process.pid)
        victim, survivor = sorted(before)
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: len(listening_workers(served) - before) == 1)
        after = listening_workers(served)
        assert survivor in after
        assert victim not in after
        assert len(after) == 2
        opened = await complete_on_fresh_channels(served.address, channels=10)
        await asyncio.gather(*(channel.close() for channel in opened))
    finally:
        code = served.stop()
    assert code == 0, served.stderr
    assert f"(pid {victim}) exited unexpectedly with signal SIGKILL" in served.stderr
    assert "restarting worker" in served.stderr


def test_repeated_crashes_make_the_parent_give_up_with_exit_1() -> None:
    served = start("--workers", "2", extra_env=FAST_STOP)
    try:
        seen: set[int] = set()
        children_before_exit: set[int] = set()
        kills = 0
        deadline = time.monotonic() + 45
        while served.process.poll() is None and time.monotonic() < deadline:
            children_before_exit |= children(served.process.pid)
            fresh = listening_workers(served) - seen
            if fresh:
                pid = min(fresh)
                seen.add(pid)
                os.kill(pid, signal.SIGKILL)
                kills += 1
            time.sleep(0.05)
        code = served.stop(sig=None)
    finally:
        if served.process.poll() is None:
            served.stop(sig=signal.SIGKILL)
    assert code == 1, served.stderr
    assert kills == 5
    assert "giving up: 5 worker crashes within 30s" in served.stderr
    assert all_gone(seen | children_before_exit)


async def test_sigterm_stops_every_worker_gracefully_and_exits_0() -> None:
    served = start(
        "--workers",
        "2",
        extra_env={
            "OMNIRELAY_PROVIDERS__LOCAL__TOKENS_PER_SECOND": "50",
            "OMNIRELAY_SERVER__SHUTDOWN_DRAIN_SECONDS": "0.3",
        },
    )
    workers = children(served.process.pid)
    try:
        async with aio.insecure_channel(served.address) as channel:
            stream = stream_pb2_grpc.StreamCompletionServiceStub(channel).StreamComplete(
                stream_request(max_tokens=25)
            )
            assert await first_kind(stream) == "route_started"
            served.process.terminate()
            kinds = await event_kinds(stream)
            assert kinds.count("text_delta") == 25
            assert kinds[-1] == "done"
        code = await asyncio.to_thread(served.stop, 20, None)
    finally:
        if served.process.poll() is None:
            served.stop()
    assert code == 0, served.stderr
    assert served.stderr.count("health NOT_SERVING") == 2
    assert served.stderr.count("omnirelay.app stopped") == 2
    assert all_gone(workers)


def test_workers_stop_when_the_parent_is_killed() -> None:
    served = start("--workers", "2", extra_env=FAST_STOP)
    workers = children(served.process.pid)
    assert len(workers) == 2
    served.process.kill()
    served.process.wait()
    wait_for(lambda: all_gone(workers))
    served.stop(sig=None)
    assert served.stderr.count("supervisor went away; shutting down") == 2


def test_bad_config_or_workers_exit_2_before_listening() -> None:
    bad = run_cli(
        "serve",
        "--port",
        "0",
        "--workers",
        "2",
        extra_env={"OMNIRELAY_SERVER__SHUTDOWN_GRACE_SECONDS": "forever"},
    )
    assert bad.returncode == 2
    assert "server.shutdown_grace_seconds = 'forever': expected a number from 0 to 3600" in bad.stderr
    assert "serving on" not in bad.stdout
    zero = run_cli("serve", "--port", "0", "--workers", "0")
    assert zero.returncode == 2
    assert "config error: --workers = 0: expected an integer of at least 1" in zero.stderr


def test_only_workers_share_a_port() -> None:
    single = start(extra_env=FAST_STOP)
    try:
        port = str(port_of(single))
        refused = run_cli("serve", "--host", "127.0.0.1", "--port", port, "--workers", "2")
        assert refused.returncode == 1
        assert "cannot listen on 127.0.0.1:" in refused.stderr
        assert "serving on" not in refused.stdout
    finally:
        assert single.stop() == 0
    workers = start("--workers", "2", extra_env=FAST_STOP)
    try:
        port = str(port_of(workers))
        refused = run_cli("serve", "--host", "127.0.0.1", "--port", port)
        assert refused.returncode == 1
        assert "cannot listen on 127.0.0.1:" in refused.stderr
    finally:
        assert workers.stop() == 0
