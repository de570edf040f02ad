"""httpx load generator for the provider simulator's OpenAI API: the baseline omnirelay relays.

The same workers, window and figures as `bench.loadgen`, over HTTP: each worker keeps one Chat
Completions call in flight, sending the body omnirelay's OpenAI adapter sends
(`bench.workload.openai_body`). A worker does what a client must: a unary answer is read and
decoded as JSON, and a stream's SSE events are split into lines and each decoded, as the gateway's
protobuf messages are by grpc. Run through `python -m bench.loadgen --protocol http`.

The client is made as cheap as httpx allows, so that the figures are the simulator's rather than
the client's (see `_clients` and `_skip_sniffio_probe`); omnirelay's own httpx pool is measured
as it is.
"""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import json
import sys
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any, Final

import httpx

from bench.cpu import CpuWindow
from bench.loadcore import Errors, LoadConfig, LoadResult, Probe, Recorder, check_tokens, drain, result
from bench.workload import SIM_API_KEY, openai_body

PATH: Final = "/chat/completions"
HEADERS: Final = {"authorization": f"Bearer {SIM_API_KEY}", "content-type": "application/json"}
# One kept-alive connection per client (see _clients).
LIMITS: Final = httpx.Limits(max_connections=1, max_keepalive_connections=1)
# Far above any call's duration: a call that hangs is caught by the drain timeout instead.
TIMEOUT_S: Final = 60.0
DONE: Final = "[DONE]"


def _skip_sniffio_probe() -> None:
    """Make httpcore's `import sniffio` fail at once when sniffio is not installed.

    httpcore 1.0 imports sniffio (which recent anyio no longer installs) each time it sets up a
    lock or an event, several times per request, and an import that fails is not cached: each one
    searches sys.path again. On the benchmark machine that was a quarter of the client's CPU. A None
    in sys.modules makes the import raise ImportError straight away; httpcore then assumes asyncio,
    as it does after the slow failure.
    """
    if "sniffio" not in sys.modules and importlib.util.find_spec("sniffio") is None:
        sys.modules["sniffio"] = None  # type: ignore[assignment]


def _clients(count: int, base_url: str) -> list[httpx.AsyncClient]:
    """One client, with one kept-alive connection, per worker.

    A shared pool costs more per request the more connections it holds (httpcore 1.0 walks all of
    them, and checks each socket, whenever a request starts or ends): at c=64 one pool delivered a
    third of the calls per second that a client per worker does. Every call still goes through
    httpx's whole request path. The clients share one TLS context, which is slow to build (and
    unused over plain HTTP).
    """
    tls = httpx.create_ssl_context()
    return [
        httpx.AsyncClient(base_url=base_url, headers=HEADERS, limits=LIMITS, timeout=TIMEOUT_S, verify=tls)
        for _ in range(count)
    ]


async def _close(clients: Sequence[httpx.AsyncClient]) -> None:
    await asyncio.gather(*(client.aclose() for client in clients))


def _http_error(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"


def _status_error(response: httpx.Response, body: bytes) -> str:
    return f"HTTP {response.status_code}: {body[:200].decode(errors='replace')}"


async def _data(lines: AsyncIterator[str]) -> AsyncIterator[str]:
    """The payloads of an SSE stream's data lines (the simulator sends one line per event)."""
    async for line in lines:
        if line.startswith("data:"):
            yield line[5:].strip()


def _has_text(payload: str) -> bool:
    if payload == DONE:
        return False
    chunk: Any = json.loads(payload)
    choices = chunk.get("choices")
    return bool(choices and choices[0].get("delta", {}).get("content"))


async def _unary_worker(
    client: httpx.AsyncClient, body: bytes, start_ns: int, end_ns: int, rec: Recorder, errors: Errors
) -> None:
    post = client.post
    clock = time.perf_counter_ns
    while True:
        t0 = clock()
        if t0 >= end_ns:
            return
        try:
            response = await post(PATH, content=body)
            if response.status_code != 200:
                errors.add(_status_error(response, response.content))
                continue
            response.json()
        except (httpx.HTTPError, ValueError) as exc:
            errors.add(_http_error(exc))
            continue
        rec.unary_done(t0, clock(), start_ns, end_ns)


async def _stream_worker(
    client: httpx.AsyncClient,
    body: bytes,
    start_ns: int,
    end_ns: int,
    expected: int,
    rec: Recorder,
    errors: Errors,
) -> None:
    clock = time.perf_counter_ns
    loads = json.loads
    while True:
        t0 = clock()
        if t0 >= end_ns:
            return
        try:
            async with client.stream("POST", PATH, content=body) as response:
                if response.status_code != 200:
                    errors.add(_status_error(response, await response.aread()))
                    continue
                events = _data(response.aiter_lines())
                # As in the gRPC worker: the events up to the first text are read apart.
                payload = await events.__anext__()
                first = clock()
                received = 1
                while not _has_text(payload):
                    payload = await events.__anext__()
                    received += 1
                token = clock()
                async for payload in events:
                    received += 1
                    if payload != DONE:
                        loads(payload)
        except (httpx.HTTPError, ValueError) as exc:
            errors.add(_http_error(exc))
            continue
        except StopAsyncIteration:
            errors.add("stream ended without a text delta")
            continue
        t1 = clock()
        if received != expected or payload != DONE:
            errors.add(f"stream of {received} events ending {payload[:40]!r}, expected {expected} to [DONE]")
            continue
        rec.stream_done(t0, first, token, t1, received, start_ns, end_ns)


async def _probe(client: httpx.AsyncClient, mode: str) -> Probe:
    """One call outside the measurement: the answer's events (1 when unary) and HTTP body bytes."""
    response = await client.post(PATH, content=openai_body(mode))
    if response.status_code != 200:
        return Probe(0, 0, _status_error(response, response.content))
    if mode == "unary":
        usage = response.json().get("usage") or {}
        return Probe(1, len(response.content), check_tokens(mode, int(usage.get("completion_tokens", 0))))
    payloads = [line[5:].strip() for line in response.text.splitlines() if line.startswith("data:")]
    deltas = sum(_has_text(payload) for payload in payloads)
    problem = check_tokens(mode, deltas)
    if not problem and (not payloads or payloads[-1] != DONE):
        problem = "the stream does not end with [DONE]"
    return Probe(len(payloads), len(response.content), problem)


async def run_load(config: LoadConfig) -> LoadResult:
    _skip_sniffio_probe()
    errors = Errors()
    recorders = [Recorder() for _ in range(config.concurrency)]
    body = openai_body(config.mode)
    clients = _clients(config.concurrency, config.target)
    try:
        try:
            probe = await _probe(clients[0], config.mode)
        except (httpx.HTTPError, ValueError) as exc:
            probe = Probe(0, 0, _http_error(exc))
        if probe.problem:
            errors.add(f"probe: {probe.problem}")
        expected = config.stream_events or probe.messages
        # Set-up objects live to the end: moving them out of the collector's sight shortens its passes.
        gc.freeze()
        start_ns = time.perf_counter_ns() + int(config.warmup_s * 1e9)
        end_ns = start_ns + int(config.duration_s * 1e9)
        tasks = []
        for client, rec in zip(clients, recorders, strict=True):
            if config.mode == "unary":
                work = _unary_worker(client, body, start_ns, end_ns, rec, errors)
            else:
                work = _stream_worker(client, body, start_ns, end_ns, expected, rec, errors)
            tasks.append(asyncio.create_task(work))
        cpu = await CpuWindow(config.server_pid, config.upstream_pid).run(start_ns, end_ns)
        await drain(tasks, errors)
    finally:
        await _close(clients)
    return result(config, recorders, errors, cpu, probe)
