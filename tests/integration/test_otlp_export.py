"""Real OTLP export: omnirelay's batch exporter sends spans to a collector running in the test.

Two collectors, one per protocol: OTLP/gRPC (the TraceService) and OTLP/HTTP (POST
/v1/traces with a protobuf body). Each runs on threads of its own, as an external collector
would: the exporter's thread talks to it while the server's event loop keeps serving.
"""

from __future__ import annotations

import dataclasses
import gzip
import threading
from collections.abc import Iterator
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2

from omnirelay.app import build_app
from omnirelay.config import Settings
from omnirelay.config.telemetry import TracingSettings
from omnirelay_client.v1 import completion_pb2_grpc, stream_pb2_grpc
from tests.helpers import request, stream_request

INGEST_TOKEN = "otlp-ingest-token-kept-secret"


class Collected:
    """What a collector received: export requests and the headers they came with."""

    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self.headers: list[dict[str, str]] = []
        self.lock = threading.Lock()

    def add(self, body: trace_service_pb2.ExportTraceServiceRequest, headers: dict[str, str]) -> None:
        with self.lock:
            self.requests.append(body)
            self.headers.append(headers)

    def spans(self) -> list[tuple[dict[str, Any], Any]]:
        """(resource attributes, span) for every span received."""
        out: list[tuple[dict[str, Any], Any]] = []
        with self.lock:
            for req in self.requests:
                for rs in req.resource_spans:
                    resource = {a.key: value(a.value) for a in rs.resource.attributes}
                    for ss in rs.scope_spans:
                        out.extend((resource, span) for span in ss.spans)
        return out


def value(v: common_pb2.AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return tuple(value(x) for x in v.array_value.values)
    return getattr(v, kind) if kind else None


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, collected: Collected) -> None:
        self.collected = collected

    def Export(  # noqa: N802 (the generated servicer's name)
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self.collected.add(request, {k: str(v) for k, v in context.invocation_metadata()})
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
def grpc_collector() -> Iterator[tuple[str, Collected]]:
    collected = Collected()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(  # type: ignore[no-untyped-call]
        _TraceService(collected), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"http://127.0.0.1:{port}", collected
    server.stop(grace=None)


@pytest.fixture
def http_collector() -> Iterator[tuple[str, Collected]]:
    collected = Collected()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            if self.headers.get("content-encoding") == "gzip":
                body = gzip.decompress(body)
            if self.path != "/v1/traces":
                self.send_response(404)
                self.end_headers()
                return
            parsed = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
            collected.add(parsed, {k.lower(): v for k, v in self.headers.items()})
            reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", collected
    server.shutdown()
    server.server_close()
    thread.join(5)


def exporting(settings: Settings, exporter: str, endpoint: str) -> Settings:
    tracing = TracingSettings(
        enabled=True,
        exporter=exporter,
        endpoint=endpoint,
        headers=(("x-ingest-token", INGEST_TOKEN),),
        service_name="omnirelay-under-test",
        schedule_delay_seconds=0.05,
        export_timeout_seconds=5.0,
    )
    return dataclasses.replace(
        settings, tracing=tracing, metrics=dataclasses.replace(settings.metrics, port=0)
    )


async def calls_then_shutdown(settings: Settings) -> None:
    app = build_app(settings, host="127.0.0.1", port=0)
    await app.start()
    try:
        async with grpc.aio.insecure_channel(app.address) as channel:
            await completion_pb2_grpc.CompletionServiceStub(channel).Complete(request(max_tokens=4))
            stub = stream_pb2_grpc.StreamCompletionServiceStub(channel)
            [e async for e in stub.StreamComplete(stream_request(max_tokens=4))]
    finally:
        # Shutdown exports what is still queued: no span is left behind.
        await app.shutdown(grace=0)


def check(collected: Collected) -> None:
    spans = collected.spans()
    names = sorted(span.name for _, span in spans)
    assert names == sorted(
        [
            "/omnirelay.v1.CompletionService/Complete",
            "/omnirelay.v1.StreamCompletionService/StreamComplete",
            "chat local-small",
            "chat local-small",
            "chat small",
            "chat small",
        ]
    )
    assert {r.get("service.name") for r, _ in spans} == {"omnirelay-under-test"}
    calls = [s for _, s in spans if s.name == "chat local-small"]
    for call in calls:
        attributes = {a.key: value(a.value) for a in call.attributes}
        assert attributes["gen_ai.operation.name"] == "chat"
        assert attributes["gen_ai.request.model"] == "local-small"
        assert attributes["gen_ai.usage.output_tokens"] == 4
        # Each call span is a child of its server span, in the same trace.
        parents = [s for _, s in spans if s.span_id == call.parent_span_id]
        assert len(parents) == 1
        assert parents[0].trace_id == call.trace_id
        assert parents[0].name.startswith("/omnirelay.v1.")
    assert all(h.get("x-ingest-token") == INGEST_TOKEN for h in collected.headers)


async def test_spans_reach_an_otlp_grpc_collector(
    settings: Settings, grpc_collector: tuple[str, Collected]
) -> None:
    endpoint, collected = grpc_collector
    await calls_then_shutdown(exporting(settings, "otlp_grpc", endpoint))
    check(collected)


async def test_spans_reach_an_otlp_http_collector(
    settings: Settings, http_collector: tuple[str, Collected]
) -> None:
    endpoint, collected = http_collector
    await calls_then_shutdown(exporting(settings, "otlp_http", endpoint))
    check(collected)
