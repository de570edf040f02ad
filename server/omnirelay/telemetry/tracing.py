"""OpenTelemetry traces: the gRPC server span, a span per call, a client span per upstream attempt.

The tree for one call (GenAI semantic conventions)::

    omnirelay.v1.CompletionService/Complete        SERVER  (opentelemetry-instrumentation-grpc)
      chat {requested model}                       INTERNAL routing: usage, cost, cache, retries,
        │                                                   fallback; events retry, breaker_rejected,
        │                                                   fallback
        chat {upstream model}                      CLIENT  one per attempt: provider, server.address,
                                                            response, usage or error.type

The caller's ``traceparent`` is the parent (the instrumentation extracts it),
and each attempt's own context is sent upstream as ``traceparent`` (see
``providers.http.carry_trace``). Spans are batched and exported over OTLP on a
background thread. With tracing disabled none of this is built: no interceptor,
no span, and the router's only cost is one context-variable read per call.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from grpc import aio
from opentelemetry.instrumentation.grpc._aio_server import OpenTelemetryAioServerInterceptor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

from omnirelay.config.telemetry import TracingSettings
from omnirelay.telemetry.spans import SpanSource, Upstream

_SCOPE = "omnirelay"


class Tracing:
    """The tracer provider, its batch exporter, and the server interceptor that starts each trace."""

    def __init__(
        self,
        settings: TracingSettings,
        upstreams: Mapping[str, Upstream],
        redact: Callable[[str], str],
        exporter: SpanExporter | None = None,
    ) -> None:
        self.settings = settings
        self.provider = TracerProvider(
            resource=Resource.create({"service.name": settings.service_name}),
            sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)),
        )
        chosen = exporter if exporter is not None else _exporter(settings)
        if chosen is not None:
            self.provider.add_span_processor(
                BatchSpanProcessor(
                    chosen,
                    max_queue_size=settings.max_queue_size,
                    schedule_delay_millis=settings.schedule_delay_seconds * 1000,
                    max_export_batch_size=settings.max_export_batch_size,
                    export_timeout_millis=settings.export_timeout_seconds * 1000,
                )
            )
        self.spans = SpanSource(self.provider.get_tracer(_SCOPE), upstreams, settings.content, redact)

    def interceptor(self) -> aio.ServerInterceptor:
        return _server_interceptor(self.provider)

    def force_flush(self, timeout_seconds: float = 5.0) -> bool:
        return self.provider.force_flush(int(timeout_seconds * 1000))

    def shutdown(self) -> None:
        """Export what is queued (bounded by the export timeout), then stop the exporter."""
        self.provider.shutdown()


def _exporter(settings: TracingSettings) -> SpanExporter | None:
    headers = dict(settings.headers)
    timeout = settings.export_timeout_seconds
    if settings.exporter == "otlp_grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        endpoint = settings.endpoint
        return OTLPSpanExporter(
            endpoint=endpoint, insecure=not endpoint.startswith("https://"), headers=headers, timeout=timeout
        )
    if settings.exporter == "otlp_http":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpSpanExporter,
        )

        endpoint = settings.endpoint.rstrip("/")
        if not endpoint.endswith("/v1/traces"):
            endpoint += "/v1/traces"
        return HttpSpanExporter(endpoint=endpoint, headers=headers, timeout=timeout)
    return None


class _ServerInterceptor(OpenTelemetryAioServerInterceptor):
    """opentelemetry-instrumentation-grpc's asyncio interceptor, taught omnirelay's stream handlers.

    The library iterates a server-streaming behavior with ``async for``; omnirelay's
    stream handlers write with ``context.write`` (one await, no generator hop per
    message), so such a behavior gets the library's awaiting wrapper: the same span,
    the same status handling.
    """

    def _intercept_aio_server_stream(self, behavior: Any, handler_call_details: Any) -> Any:
        if inspect.isasyncgenfunction(behavior):
            return super()._intercept_aio_server_stream(behavior, handler_call_details)  # type: ignore[no-untyped-call]
        return self._intercept_aio_server_unary(behavior, handler_call_details)  # type: ignore[no-untyped-call]


def _server_interceptor(provider: TracerProvider) -> aio.ServerInterceptor:
    tracer = provider.get_tracer(
        "opentelemetry.instrumentation.grpc", schema_url="https://opentelemetry.io/schemas/1.11.0"
    )
    interceptor: aio.ServerInterceptor = _ServerInterceptor(tracer)  # type: ignore[no-untyped-call]
    return interceptor
