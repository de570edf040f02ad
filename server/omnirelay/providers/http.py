"""Pooled HTTP to one upstream endpoint: httpx clients per provider, made at start, closed at stop.

Every request is bounded by the provider's total timeout; the caller's gRPC
deadline bounds it too, from outside (the gateway cancels the task, and
cancellation closes the HTTP exchange, so the upstream sees the caller leave).
Transport failures become UpstreamError subclasses here and nowhere else.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import httpx

from omnirelay import loops
from omnirelay.config.schema import HttpProviderSettings
from omnirelay.errors import UpstreamConnectionError, UpstreamError, UpstreamTimeoutError

# W3C trace context for the upstream request of the call being served: the attempt span's when
# tracing is on, else the caller's own traceparent passed through; None when there is neither.
_trace_headers: ContextVar[Mapping[str, str] | None] = ContextVar("omnirelay_upstream_trace", default=None)


def carry_trace(headers: Mapping[str, str]) -> None:
    """Send ``headers`` (traceparent, tracestate) with this call's upstream requests from now on."""
    _trace_headers.set(headers)


@dataclass(frozen=True, slots=True)
class UpstreamResponse:
    """A whole (non-streamed) answer."""

    status: int
    headers: httpx.Headers
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


# httpcore 1.0 tidies its pool whenever a request starts or ends, and for every idle connection
# counts the whole pool again: O(n^2) in the pool's size. With 1,000 connections to one upstream
# (the bench's 1,000 streams through the simulator) that was half of the event loop's time. So a pool
# is split into lanes of at most this many connections, one httpx client each.
LANE_CONNECTIONS = 16


def lane_sizes(total: int, lane: int) -> tuple[int, ...]:
    """``total`` connections over as few lanes of at most ``lane`` as hold them, evened out."""
    return split(total, max(1, -(-total // lane)))


def split(total: int, parts: int) -> tuple[int, ...]:
    """``total`` over ``parts`` as evenly as whole numbers allow, the larger shares first."""
    base, extra = divmod(total, parts)
    return tuple(base + 1 if i < extra else base for i in range(parts))


class HttpTransport:
    """One upstream's pooled HTTP. A request takes the lane with the most connections not in use
    (the first on ties, so light traffic keeps reusing the first lane's connections)."""

    def __init__(self, settings: HttpProviderSettings, client: httpx.AsyncClient | None = None) -> None:
        self.provider = settings.name
        self.total_timeout = settings.total_timeout
        if client is not None:
            self._clients: tuple[httpx.AsyncClient, ...] = (client,)
            sizes: tuple[int, ...] = (settings.max_connections,)
        else:
            # HTTP/2 multiplexes a lane's requests over a few connections: one lane is enough.
            sizes = lane_sizes(
                settings.max_connections, settings.max_connections if settings.http2 else LANE_CONNECTIONS
            )
            keepalive = split(settings.max_keepalive_connections, len(sizes))
            # One TLS context for all lanes: each client making its own loads the CA bundle again,
            # about 1 MB and 50 ms apiece.
            tls = httpx.create_ssl_context()
            self._clients = tuple(_client(settings, n, k, tls) for n, k in zip(sizes, keepalive, strict=True))
        self._sizes = sizes
        # Per lane: connections not taken by a request in flight (below 0: requests queue there).
        self._free = list(sizes)

    def lanes(self) -> tuple[tuple[int, int], ...]:
        """(requests in flight, connections) per lane."""
        return tuple((size - free, size) for size, free in zip(self._sizes, self._free, strict=True))

    def _take(self) -> int:
        free = self._free
        lane = 0 if len(free) == 1 else max(range(len(free)), key=free.__getitem__)
        free[lane] -= 1
        return lane

    async def post(
        self,
        path: str,
        body: Mapping[str, Any],
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> UpstreamResponse:
        return await self._whole("POST", path, _dumps(body), _json(headers), params)

    async def get(
        self, path: str, headers: Mapping[str, str] | None = None, params: Mapping[str, str] | None = None
    ) -> UpstreamResponse:
        """A bodiless GET (model listings), bounded and translated like ``post``."""
        return await self._whole("GET", path, None, _plain(headers), params)

    async def _whole(
        self,
        method: str,
        path: str,
        content: bytes | None,
        headers: Mapping[str, str],
        params: Mapping[str, str] | None,
    ) -> UpstreamResponse:
        lane = self._take()
        try:
            async with asyncio.timeout(self.total_timeout):
                response = await self._clients[lane].request(
                    method, path, content=content, headers=headers, params=params
                )
                return UpstreamResponse(response.status_code, response.headers, response.content)
        except TimeoutError:
            raise self._timeout() from None
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from None
        finally:
            self._free[lane] += 1

    @asynccontextmanager
    async def stream(
        self,
        path: str,
        body: Mapping[str, Any],
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> AsyncIterator[httpx.Response]:
        """An open streamed response; leaving the block closes it (and, mid-body, the connection)."""
        lane = self._take()
        try:
            client = self._clients[lane]
            request = client.build_request(
                "POST", path, content=_dumps(body), headers=_json(headers), params=params
            )
            # total_timeout bounds the whole exchange, headers and every byte of the body.
            deadline = loops.running_loop().time() + self.total_timeout
            try:
                async with asyncio.timeout_at(deadline):
                    response = await client.send(request, stream=True)
            except TimeoutError:
                raise self._timeout() from None
            except httpx.HTTPError as exc:
                raise self._transport_error(exc) from None
            response.extensions["omnirelay_deadline"] = deadline
            try:
                yield response
            finally:
                await response.aclose()
        finally:
            self._free[lane] += 1

    async def chunks(self, response: httpx.Response) -> AsyncIterator[bytes]:
        """The body as it arrives, with transport failures translated."""
        # No asyncio.timeout across the yield (its cancel would land in the consumer's code):
        # a stalled body is cut by read_timeout, a trickling one by this check per chunk.
        deadline: float = response.extensions.get("omnirelay_deadline", float("inf"))
        clock = loops.running_loop().time
        try:
            async for chunk in response.aiter_raw():
                if clock() > deadline:
                    raise self._timeout()
                yield chunk
        except httpx.TimeoutException:
            raise self._timeout() from None
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from None

    async def aclose(self) -> None:
        for client in self._clients:
            await client.aclose()

    def _timeout(self) -> UpstreamTimeoutError:
        return UpstreamTimeoutError(f"{self.provider} did not answer in time", provider=self.provider)

    def _transport_error(self, exc: httpx.HTTPError) -> UpstreamError:
        if isinstance(exc, httpx.TimeoutException):
            return self._timeout()
        # The exception text names host and port only; request URLs and headers (keys) stay out.
        return UpstreamConnectionError(
            f"connection to {self.provider} failed: {type(exc).__name__}", provider=self.provider
        )


def _client(
    settings: HttpProviderSettings, connections: int, keepalive: int, tls: ssl.SSLContext
) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=settings.base_url,
        verify=tls,
        http2=settings.http2,
        timeout=httpx.Timeout(
            connect=settings.connect_timeout,
            read=settings.read_timeout,
            write=settings.read_timeout,
            pool=settings.connect_timeout,
        ),
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=keepalive),
        headers=dict(settings.headers),
    )


def _dumps(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def _json(headers: Mapping[str, str] | None) -> dict[str, str]:
    trace = _trace_headers.get()
    if trace is None:
        return {"content-type": "application/json", **(headers or {})}
    return {"content-type": "application/json", **(headers or {}), **trace}


def _plain(headers: Mapping[str, str] | None) -> dict[str, str]:
    trace = _trace_headers.get()
    return {**(headers or {}), **trace} if trace is not None else dict(headers or {})


class HttpAdapter:
    """What every HTTP provider class shares: its settings, its pooled transport, its name."""

    def __init__(self, settings: HttpProviderSettings, transport: HttpTransport) -> None:
        self._settings = settings
        self._transport = transport

    @property
    def name(self) -> str:
        return self._settings.name

    @property
    def strict_parameters(self) -> bool:
        return self._settings.strict_parameters

    async def aclose(self) -> None:
        await self._transport.aclose()
