"""A provider's connection pool split into lanes, over real HTTP to the simulator.

httpcore's pool costs O(n^2) in its size whenever a request starts or ends, so ``HttpTransport``
keeps its connections in lanes of at most ``LANE_CONNECTIONS``, one httpx client each. A request
takes the lane with the most free connections (the first on ties), and gives it back however the
request ends.
"""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any

import pytest

from omnirelay.config.schema import HttpProviderSettings
from omnirelay.errors import UpstreamConnectionError, UpstreamTimeoutError
from omnirelay.providers.http import LANE_CONNECTIONS, HttpTransport, lane_sizes, split
from omnirelay.sim.server import RunningSim

STREAMED = {
    # The simulator waits 300 ms before its first token: the streams stay open while others start.
    "model": "sim-model+ttft=300+tokens=2",
    "messages": [{"role": "user", "content": "hold the line"}],
    "stream": True,
}


def settings(base_url: str, **overrides: Any) -> HttpProviderSettings:
    values: dict[str, Any] = {
        "name": "sim",
        "kind": "openai",
        "base_url": base_url,
        "api_key": "sk-lanes-test",
        "total_timeout": 30.0,
    }
    values.update(overrides)
    return HttpProviderSettings(**values)


def in_flight(transport: HttpTransport) -> list[int]:
    return [busy for busy, _ in transport.lanes()]


def test_lane_sizes_hold_the_whole_pool_in_lanes_of_at_most_the_lane_size() -> None:
    sizes = lane_sizes(1_110, LANE_CONNECTIONS)
    assert sum(sizes) == 1_110
    assert len(sizes) == 70
    assert max(sizes) == LANE_CONNECTIONS
    assert min(sizes) == LANE_CONNECTIONS - 1
    assert lane_sizes(100, 16) == (15, 15, 14, 14, 14, 14, 14)
    assert lane_sizes(16, 16) == (16,)
    assert lane_sizes(5, 16) == (5,)


def test_split_evens_out_with_the_larger_shares_first() -> None:
    assert split(7, 3) == (3, 2, 2)
    assert split(0, 3) == (0, 0, 0)
    assert split(2, 4) == (1, 1, 0, 0)


def test_the_transport_lanes_follow_the_settings() -> None:
    url = "http://127.0.0.1:9/v1"
    assert [size for _, size in HttpTransport(settings(url)).lanes()] == [15, 15, 14, 14, 14, 14, 14]
    assert [size for _, size in HttpTransport(settings(url, max_connections=10)).lanes()] == [10]
    # HTTP/2 multiplexes requests over a few connections: one lane.
    assert len(HttpTransport(settings(url, http2=True, max_connections=500)).lanes()) == 1


async def test_concurrent_streams_spread_over_the_lanes_and_give_them_back(sim: RunningSim) -> None:
    transport = HttpTransport(settings(sim.base_url + "/v1", max_connections=40))
    assert [size for _, size in transport.lanes()] == [14, 13, 13]
    streams = 30
    inside = 0
    all_in = asyncio.Event()
    release = asyncio.Event()

    async def one() -> None:
        nonlocal inside
        async with transport.stream("/chat/completions", STREAMED) as response:
            assert response.status_code == 200
            inside += 1
            if inside == streams:
                all_in.set()
            await release.wait()

    tasks = [asyncio.create_task(one()) for _ in range(streams)]
    try:
        await asyncio.wait_for(all_in.wait(), timeout=20)
        # Each stream took the lane with the most free connections, so the free ones stay even:
        # 10 left over lanes of 14, 13 and 13 are 3, 3 and 4.
        assert in_flight(transport) == [11, 10, 9]
        assert [size - busy for busy, size in transport.lanes()] == [3, 3, 4]
        release.set()
        await asyncio.gather(*tasks)
        assert in_flight(transport) == [0, 0, 0]
    finally:
        release.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await transport.aclose()


async def test_one_call_at_a_time_keeps_to_the_first_lane(sim: RunningSim) -> None:
    transport = HttpTransport(settings(sim.base_url + "/v1", max_connections=40))
    try:
        for _ in range(3):
            async with transport.stream("/chat/completions", STREAMED) as response:
                assert in_flight(transport) == [1, 0, 0]
                await response.aread()
            assert in_flight(transport) == [0, 0, 0]
        answer = await transport.post("/chat/completions", {**STREAMED, "stream": False})
        assert answer.status == 200
        assert in_flight(transport) == [0, 0, 0]
    finally:
        await transport.aclose()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def open_stream(transport: HttpTransport) -> None:
    async with transport.stream("/chat/completions", STREAMED):
        pass


async def test_a_failed_request_gives_its_lane_back() -> None:
    transport = HttpTransport(settings(f"http://127.0.0.1:{closed_port()}/v1", max_connections=40))
    try:
        with pytest.raises(UpstreamConnectionError):
            await transport.post("/chat/completions", STREAMED)
        assert in_flight(transport) == [0, 0, 0]
        with pytest.raises(UpstreamConnectionError):
            await open_stream(transport)
        assert in_flight(transport) == [0, 0, 0]
    finally:
        await transport.aclose()


async def test_a_timed_out_request_gives_its_lane_back(sim: RunningSim) -> None:
    # The simulator answers after 2 s; the provider allows 0.2 s for the whole exchange.
    transport = HttpTransport(settings(sim.base_url + "/v1", max_connections=40, total_timeout=0.2))
    slow = {**STREAMED, "model": "sim-model+ttft=2000+tokens=2"}
    try:
        with pytest.raises(UpstreamTimeoutError):
            await transport.post("/chat/completions", {**slow, "stream": False})
        assert in_flight(transport) == [0, 0, 0]
        with pytest.raises(UpstreamTimeoutError):
            await read_stream(transport, slow)
        assert in_flight(transport) == [0, 0, 0]
    finally:
        await transport.aclose()


async def read_stream(transport: HttpTransport, body: dict[str, Any]) -> None:
    async with transport.stream("/chat/completions", body) as response:
        async for _ in transport.chunks(response):
            pass


async def test_a_stream_left_early_gives_its_lane_back(sim: RunningSim) -> None:
    transport = HttpTransport(settings(sim.base_url + "/v1", max_connections=40))
    entered = asyncio.Event()

    async def reader() -> None:
        async with transport.stream("/chat/completions", STREAMED):
            entered.set()
            await asyncio.sleep(30)

    task = asyncio.create_task(reader())
    try:
        await asyncio.wait_for(entered.wait(), timeout=10)
        assert in_flight(transport) == [1, 0, 0]
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert in_flight(transport) == [0, 0, 0]
    finally:
        await transport.aclose()


def resident_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096 / 1e6


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux's /proc to read RSS")
async def test_many_lanes_share_one_tls_context() -> None:
    # Each httpx client with a TLS context of its own loads the CA bundle again (about 1 MB): 70
    # lanes would cost 70 MB. Shared, the 70 clients cost a few.
    before = resident_mb()
    transport = HttpTransport(settings("https://127.0.0.1:9/v1", max_connections=1_110))
    try:
        assert len(transport.lanes()) == 70
        assert resident_mb() - before < 20
    finally:
        await transport.aclose()
