"""Stopping the tracer: every span is accounted for, and an unreachable collector cannot hold a shutdown.

The SDK alone would export the queue batch by batch, each waiting out the export timeout; the
gateway bounds the whole shutdown by one export timeout and says what did not leave.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Sequence
from types import SimpleNamespace

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry, generate_latest

from omnirelay.config.telemetry import TracingSettings
from omnirelay.telemetry.metrics import StateCollector
from omnirelay.telemetry.tracing import Tracing


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tracing(sink: SpanExporter | None, **options: object) -> Tracing:
    settings = TracingSettings(
        enabled=True,
        # Nothing leaves before the shutdown: it is the shutdown's export that is under test.
        schedule_delay_seconds=3600.0,
        max_export_batch_size=2,
        **options,  # type: ignore[arg-type]
    )
    return Tracing(settings, {}, lambda text: text, sink)


def _spans(tracing: Tracing, count: int) -> None:
    tracer = tracing.provider.get_tracer("test")
    for i in range(count):
        with tracer.start_as_current_span(f"span {i}"):
            pass


class _Hanging(SpanExporter):
    """A collector that never answers until the exporter is shut down (like OTLP's retry wait)."""

    def __init__(self) -> None:
        self.stopped = threading.Event()
        self.calls = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.calls += 1
        self.stopped.wait()
        return SpanExportResult.FAILURE

    def shutdown(self) -> None:
        self.stopped.set()


def test_a_reachable_collector_gets_every_span_and_nothing_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    exporter = InMemorySpanExporter()
    tracing = _tracing(exporter)
    _spans(tracing, 7)
    with caplog.at_level(logging.WARNING, logger="omnirelay.telemetry.tracing"):
        tally = tracing.shutdown()
    assert len(exporter.get_finished_spans()) == 7
    assert (tally.ended, tally.exported, tally.failed, tally.unsent, tally.dropped) == (7, 7, 0, 0, 0)
    assert not caplog.records


def test_a_hanging_collector_is_cut_off_and_the_rest_counted_as_not_sent(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hanging = _Hanging()
    tracing = _tracing(hanging, export_timeout_seconds=0.2)
    _spans(tracing, 10)
    with caplog.at_level(logging.WARNING, logger="omnirelay.telemetry.tracing"):
        tally = tracing.shutdown()
    # The first batch was in flight when the bound ran out; the four others never went.
    assert hanging.calls == 1
    assert (tally.ended, tally.exported, tally.failed, tally.unsent, tally.dropped) == (10, 0, 2, 8, 0)
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert "0 of 10 spans exported; 2 failed, 8 not sent within 0.2 s" in record.getMessage()


def test_an_unreachable_otlp_collector_loses_no_count(caplog: pytest.LogCaptureFixture) -> None:
    tracing = _tracing(
        None, exporter="otlp_grpc", endpoint=f"http://127.0.0.1:{_closed_port()}", export_timeout_seconds=0.5
    )
    _spans(tracing, 9)
    with caplog.at_level(logging.WARNING, logger="omnirelay.telemetry.tracing"):
        tally = tracing.shutdown()
    assert tally.ended == 9
    assert tally.exported == 0
    assert tally.failed + tally.unsent == 9
    messages = [r.getMessage() for r in caplog.records if r.name == "omnirelay.telemetry.tracing"]
    assert len(messages) == 1
    assert messages[0].startswith("tracing stopped: 0 of 9 spans exported")
    assert "collector http://127.0.0.1:" in messages[0]


def test_a_full_queue_is_counted_as_dropped() -> None:
    hanging = _Hanging()
    tracing = _tracing(hanging, max_queue_size=4, export_timeout_seconds=0.2)
    _spans(tracing, 2)  # a whole batch: the worker takes it and hangs in the export
    for _ in range(500):
        if hanging.calls:
            break
        threading.Event().wait(0.01)
    assert hanging.calls == 1
    _spans(tracing, 6)  # the queue takes four; with the worker stuck, two are turned away
    tally = tracing.shutdown()
    assert (tally.ended, tally.exported, tally.failed, tally.unsent, tally.dropped) == (8, 0, 2, 4, 2)


def _scraped(tracing: Tracing) -> dict[str, float]:
    # As /metrics reads them: the scrape-time collector asks tracing for its tally.
    registry = CollectorRegistry()
    idle = SimpleNamespace(count=0)
    registry.register(StateCollector(idle, idle, lambda: (), None, None, tracing.tally))
    found: dict[str, float] = {}
    for line in generate_latest(registry).decode().splitlines():
        if line.startswith("omnirelay_trace_spans_total{"):
            labels, value = line.rsplit(" ", 1)
            found[labels.split('"')[1]] = float(value)
    return found


def test_span_counters_for_metrics_follow_the_exports() -> None:
    tracing = _tracing(InMemorySpanExporter())
    assert _scraped(tracing) == {"ended": 0.0, "exported": 0.0, "failed": 0.0}
    _spans(tracing, 5)
    assert _scraped(tracing) == {"ended": 5.0, "exported": 0.0, "failed": 0.0}  # queued, not yet sent
    assert tracing.force_flush()
    assert _scraped(tracing) == {"ended": 5.0, "exported": 5.0, "failed": 0.0}
    tracing.shutdown()


def test_span_counters_count_failed_exports() -> None:
    hanging = _Hanging()
    tracing = _tracing(hanging, export_timeout_seconds=0.2)
    _spans(tracing, 4)
    tracing.shutdown()
    assert _scraped(tracing) == {"ended": 4.0, "exported": 0.0, "failed": 2.0}
