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
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from grpc import aio
from opentelemetry.instrumentation.grpc._aio_server import OpenTelemetryAioServerInterceptor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

from omnirelay.config.telemetry import TracingSettings
from omnirelay.telemetry.spans import SpanSource, Upstream

_SCOPE = "omnirelay"
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ExportTally:
    """What became of the sampled spans so far (at shutdown: in the end)."""

    ended: int
    exported: int
    # The collector refused them or did not answer within the export timeout.
    failed: int
    # Still queued when the shutdown's bound ran out.
    unsent: int

    @property
    def dropped(self) -> int:
        """Spans the full queue turned away while the collector lagged."""
        return self.ended - self.exported - self.failed - self.unsent


class _CountingExporter(SpanExporter):
    """Counts what the wrapped exporter delivered, so a shutdown can say what it could not."""

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner
        self.exported = 0
        self.failed = 0
        self.unsent = 0
        self.closed = False
        self._stopped = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self.closed:
            self.unsent += len(spans)
            return SpanExportResult.FAILURE
        result = self.inner.export(spans)
        if result is SpanExportResult.SUCCESS:
            self.exported += len(spans)
        else:
            self.failed += len(spans)
        return result

    def shutdown(self) -> None:
        # Called twice when the bound ran out (once to end the export in flight, once by the
        # processor); the OTLP exporters warn on the second call.
        if not self._stopped:
            self._stopped = True
            self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


class _CountingProcessor(BatchSpanProcessor):
    def __init__(self, exporter: _CountingExporter, **options: Any) -> None:
        super().__init__(exporter, **options)
        self.counting = exporter
        self.ended = 0

    def on_end(self, span: ReadableSpan) -> None:
        # One add per span: the only cost of being able to say at shutdown what was lost.
        if span.context is not None and span.context.trace_flags.sampled:
            self.ended += 1
        super().on_end(span)


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
        self._batches: _CountingProcessor | None = None
        if chosen is not None:
            self._batches = _CountingProcessor(
                _CountingExporter(chosen),
                max_queue_size=settings.max_queue_size,
                schedule_delay_millis=settings.schedule_delay_seconds * 1000,
                max_export_batch_size=settings.max_export_batch_size,
                export_timeout_millis=settings.export_timeout_seconds * 1000,
            )
            self.provider.add_span_processor(self._batches)
        self.spans = SpanSource(self.provider.get_tracer(_SCOPE), upstreams, settings.content, redact)

    def interceptor(self) -> aio.ServerInterceptor:
        return _server_interceptor(self.provider)

    def force_flush(self, timeout_seconds: float = 5.0) -> bool:
        return self.provider.force_flush(int(timeout_seconds * 1000))

    def tally(self) -> ExportTally:
        """The spans so far: ended (sampled), exported, failed to export, not sent at shutdown."""
        batches = self._batches
        if batches is None:
            return ExportTally(0, 0, 0, 0)
        c = batches.counting
        return ExportTally(batches.ended, c.exported, c.failed, c.unsent)

    def shutdown(self) -> ExportTally:
        """Export what is queued, within one export timeout in all, then stop the exporter.

        The SDK's own shutdown exports batch after batch, each waiting out the export timeout
        when the collector is unreachable; a gateway stopping for a deploy must not wait that
        long. Past the bound the rest is counted as not sent, and the line says so.
        """
        batches = self._batches
        if batches is None:
            self.provider.shutdown()
            return self.tally()
        bound = self.settings.export_timeout_seconds
        stopping = threading.Thread(target=self.provider.shutdown, name="omnirelay-tracing-stop", daemon=True)
        stopping.start()
        stopping.join(bound)
        if stopping.is_alive():
            counting = batches.counting
            counting.closed = True
            # Ends the export in flight (its retry wait) so the queue drains into "not sent".
            counting.shutdown()
            stopping.join(bound)
        tally = self.tally()
        if tally.exported < tally.ended:
            log.warning(
                "tracing stopped: %d of %d spans exported; %d failed, %d not sent within %.3g s, "
                "%d dropped by the full queue (collector %s)",
                tally.exported,
                tally.ended,
                tally.failed,
                tally.unsent,
                bound,
                tally.dropped,
                self.settings.endpoint,
            )
        return tally


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
