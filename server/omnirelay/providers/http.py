"""Pooled HTTP to one upstream endpoint: one httpx client per provider, made at start, closed at stop.

Every request is bounded by the provider's total timeout; the caller's gRPC
deadline bounds it too, from outside (the gateway cancels the task, and
cancellation closes the HTTP exchange, so the upstream sees the caller leave).
Transport failures become UpstreamError subclasses here and nowhere else.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import httpx

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


class HttpTransport:
    def __init__(self, settings: HttpProviderSettings, client: httpx.AsyncClient | None = None) -> None:
        self.provider = settings.name
        self.total_timeout = settings.total_timeout
        self._client = client or httpx.AsyncClient(
            base_url=settings.base_url,
            http2=settings.http2,
            timeout=httpx.Timeout(
                connect=settings.connect_timeout,
                read=settings.read_timeout,
                write=settings.read_timeout,
                pool=settings.connect_timeout,
            ),
            limits=httpx.Limits(
                max_connections=settings.max_connections,
                max_keepalive_connections=settings.max_keepalive_connections,
            ),
            headers=dict(settings.headers),
        )

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
        try:
            async with asyncio.timeout(self.total_timeout):
                response = await self._client.request(
                    method, path, content=content, headers=headers, params=params
                )
                return UpstreamResponse(response.status_code, response.headers, response.content)
        except TimeoutError:
            raise self._timeout() from None
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from None

    @asynccontextmanager
    async def stream(
        self,
        path: str,
        body: Mapping[str, Any],
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> AsyncIterator[httpx.Response]:
        """An open streamed response; leaving the block closes it (and, mid-body, the connection)."""
        request = self._client.build_request(
            "POST", path, content=_dumps(body), headers=_json(headers), params=params
        )
        # total_timeout bounds the whole exchange, headers and every byte of the body.
        deadline = asyncio.get_running_loop().time() + self.total_timeout
        try:
            async with asyncio.timeout_at(deadline):
                response = await self._client.send(request, stream=True)
        except TimeoutError:
            raise self._timeout() from None
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from None
        response.extensions["omnirelay_deadline"] = deadline
        try:
            yield response
        finally:
            await response.aclose()

    async def chunks(self, response: httpx.Response) -> AsyncIterator[bytes]:
        """The body as it arrives, with transport failures translated."""
        # No asyncio.timeout across the yield (its cancel would land in the consumer's code):
        # a stalled body is cut by read_timeout, a trickling one by this check per chunk.
        deadline: float = response.extensions.get("omnirelay_deadline", float("inf"))
        clock = asyncio.get_running_loop().time
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
        await self._client.aclose()

    def _timeout(self) -> UpstreamTimeoutError:
        return UpstreamTimeoutError(f"{self.provider} did not answer in time", provider=self.provider)

    def _transport_error(self, exc: httpx.HTTPError) -> UpstreamError:
        if isinstance(exc, httpx.TimeoutException):
            return self._timeout()
        # The exception text names host and port only; request URLs and headers (keys) stay out.
        return UpstreamConnectionError(
            f"connection to {self.provider} failed: {type(exc).__name__}", provider=self.provider
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
