"""A minimal OTLP/gRPC trace collector: accepts every export, keeps nothing, counts the spans.

The echo scenario's traced omnirelay server (`omnirelay-traced`) exports its spans here, so that
tracing's cost is measured with a real exporter talking to a real endpoint, not one that fails or is
switched off. `Export` answers an empty `ExportTraceServiceResponse` (everything accepted) and adds
the request's spans to a count, which it writes to `--count-file` after every export (replaced
whole, so a reader never sees half of it): `{"spans": N, "exports": M}`. The runner reads it once
the traced server has stopped (its last spans leave at shutdown).

Run: python -m bench.otlp_sink --port 0 --count-file /tmp/spans.json
(prints "otlp-sink serving on 127.0.0.1:<PORT>" when listening)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from bench.baseline import serve_until_signalled

BANNER = "otlp-sink"


@dataclass(frozen=True, slots=True)
class SinkCount:
    """What the sink received: spans in all, in how many export requests."""

    spans: int
    exports: int


def span_count(request: trace_service_pb2.ExportTraceServiceRequest) -> int:
    return sum(len(scope.spans) for resource in request.resource_spans for scope in resource.scope_spans)


def write_count(path: Path, count: SinkCount) -> None:
    """Replace the file whole: a reader sees the previous count or this one, never a partial file."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps({"spans": count.spans, "exports": count.exports}))
    os.replace(partial, path)


def read_count(path: Path) -> SinkCount | None:
    """The sink's last count; None when it wrote none (no export arrived) or the file is unreadable."""
    try:
        data = json.loads(path.read_text())
        return SinkCount(spans=int(data["spans"]), exports=int(data["exports"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


class Sink(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, count_file: Path) -> None:
        self._count_file = count_file
        self.spans = 0
        self.exports = 0

    async def Export(  # noqa: N802 (gRPC method name)
        self,
        request: trace_service_pb2.ExportTraceServiceRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self.spans += span_count(request)
        self.exports += 1
        write_count(self._count_file, SinkCount(self.spans, self.exports))
        return trace_service_pb2.ExportTraceServiceResponse()


async def serve(host: str, port: int, count_file: Path) -> None:
    server = grpc.aio.server()
    # The generated registration (untyped: opentelemetry-proto ships no stub for its grpc module).
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Sink(count_file), server)  # type: ignore[no-untyped-call]
    await serve_until_signalled(server, host, port, BANNER)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.otlp_sink", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--count-file", type=Path, required=True, help="where the span count is written")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.host, args.port, args.count_file))
    return 0


if __name__ == "__main__":
    sys.exit(main())
