"""Traces over a real channel: the span tree, GenAI attributes, events, and trace context upstream.

Spans are kept by the SDK's in-memory exporter behind the same batch processor the
configured OTLP exporter would use; ``finished()`` flushes it. Upstream trace context is
checked on the simulator's record of each request's ``traceparent``.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path

import grpc
import httpx
import pytest
from grpc import aio
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from omnirelay.app import App, build_app
from omnirelay.config import Settings
from omnirelay.config.routing import BreakerSettings, RetrySettings
from omnirelay.config.telemetry import TracingSettings
from omnirelay.sim.server import RunningSim, start
from omnirelay_client.v1 import completion_pb2_grpc, stream_pb2_grpc
from tests.helpers import request, stream_request
from tests.routing_helpers import model, routed, sim_provider

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CALLER_SPAN}-01"

Start = Callable[..., Awaitable[tuple[App, aio.Channel, InMemorySpanExporter]]]


@pytest.fixture
async def sim() -> AsyncIterator[RunningSim]:
    running = await start()
    yield running
    await running.stop()


def traced(settings: Settings, **changes: object) -> Settings:
    tracing = dataclasses.replace(TracingSettings(enabled=True, exporter="none"), **changes)  # type: ignore[arg-type]
    metrics = dataclasses.replace(settings.metrics, port=0)
    return dataclasses.replace(settings, tracing=tracing, metrics=metrics)


@pytest.fixture
async def serve() -> AsyncIterator[Start]:
    started: list[tuple[App, aio.Channel]] = []

    async def go(s: Settings) -> tuple[App, aio.Channel, InMemorySpanExporter]:
        exporter = InMemorySpanExporter()
        app = build_app(s, host="127.0.0.1", port=0, span_exporter=exporter)
        await app.start()
        channel = aio.insecure_channel(app.address)
        started.append((app, channel))
        return app, channel, exporter

    yield go
    for app, channel in started:
        await channel.close()
        await app.shutdown(grace=0)


def finished(app: App, exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    assert app.tracing is not None
    assert app.tracing.force_flush()
    return list(exporter.get_finished_spans())


def one(spans: Sequence[ReadableSpan], name: str) -> ReadableSpan:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, f"{len(found)} spans named {name!r} in {[s.name for s in spans]}"
    return found[0]


def children(spans: Sequence[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    assert parent.context is not None
    return [s for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id]


def hex_id(value: int, width: int) -> str:
    return format(value, f"0{width}x")


def traceparent(span: ReadableSpan) -> str:
    """The W3C traceparent naming ``span`` as the parent."""
    ctx = span.context
    assert ctx is not None
    return f"00-{hex_id(ctx.trace_id, 32)}-{hex_id(ctx.span_id, 16)}-{int(ctx.trace_flags):02x}"


async def test_unary_call_makes_server_call_and_attempt_spans_with_genai_attributes(
    serve: Start, settings: Settings
) -> None:
    app, channel, exporter = await serve(traced(settings))
    stub = completion_pb2_grpc.CompletionServiceStub(channel)
    response = await stub.Complete(
        request(model="local-small", max_tokens=12, temperature=0.5, top_p=0.9, seed=7, stop=["END"]),
        metadata=(("traceparent", TRACEPARENT),),
    )

    spans = finished(app, exporter)
    server = one(spans, "/omnirelay.v1.CompletionService/Complete")
    call = one(spans, "chat local-small")
    attempt = one(spans, "chat small")
    assert server.kind is SpanKind.SERVER
    assert call.kind is SpanKind.INTERNAL
    assert attempt.kind is SpanKind.CLIENT
    # One trace, continued from the caller's traceparent: caller → server → call → attempt.
    assert {hex_id(s.context.trace_id, 32) for s in spans if s.context is not None} == {TRACE_ID}
    assert server.parent is not None
    assert hex_id(server.parent.span_id, 16) == CALLER_SPAN
    assert children(spans, server) == [call]
    assert children(spans, call) == [attempt]

    a = dict(call.attributes or {})
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.request.model"] == "local-small"
    assert a["gen_ai.request.max_tokens"] == 12
    assert a["gen_ai.request.temperature"] == pytest.approx(0.5)
    assert a["gen_ai.request.top_p"] == pytest.approx(0.9)
    assert a["gen_ai.request.seed"] == 7
    assert a["gen_ai.request.stop_sequences"] == ("END",)
    assert a["gen_ai.response.model"] == "local-small"
    assert a["gen_ai.provider.name"] == "omnirelay.local"
    assert a["gen_ai.usage.input_tokens"] == response.usage.input_tokens
    assert a["gen_ai.usage.output_tokens"] == response.usage.output_tokens
    assert a["gen_ai.response.finish_reasons"] == ("length",)
    assert a["omnirelay.cost_micros"] == response.usage.cost_micros
    assert a["omnirelay.retries"] == 0
    assert a["omnirelay.fallback"] is False
    assert a["omnirelay.request_id"] == response.route.request_id
    assert "gen_ai.input.messages" not in a  # content is off by default
    assert call.status.status_code is StatusCode.UNSET

    b = dict(attempt.attributes or {})
    assert b["gen_ai.provider.name"] == "omnirelay.local"
    assert b["gen_ai.request.model"] == "small"
    assert b["gen_ai.response.model"] == "small"
    assert b["gen_ai.usage.output_tokens"] == response.usage.output_tokens
    assert b["omnirelay.deployment"] == "local/small"
    assert "error.type" not in b


async def test_stream_spans_carry_time_to_first_chunk_and_finish_reasons(
    serve: Start, settings: Settings
) -> None:
    app, channel, exporter = await serve(traced(settings))
    stub = stream_pb2_grpc.StreamCompletionServiceStub(channel)
    events = [e async for e in stub.StreamComplete(stream_request(max_tokens=5))]
    usage = next(e.usage for e in events if e.WhichOneof("event") == "usage")

    spans = finished(app, exporter)
    server = one(spans, "/omnirelay.v1.StreamCompletionService/StreamComplete")
    call = one(spans, "chat local-small")
    attempt = one(spans, "chat small")
    assert children(spans, server) == [call]
    assert children(spans, call) == [attempt]
    a = dict(call.attributes or {})
    assert a["omnirelay.streamed"] is True
    ttft = a["omnirelay.time_to_first_chunk_seconds"]
    assert isinstance(ttft, float)
    assert ttft > 0
    assert a["gen_ai.usage.output_tokens"] == usage.output_tokens == 5
    assert a["gen_ai.response.finish_reasons"] == ("length",)
    assert dict(attempt.attributes or {})["gen_ai.response.finish_reasons"] == ("length",)
    # The server span ends after the call span: the handler is awaited inside it.
    assert server.end_time is not None
    assert call.end_time is not None
    assert server.end_time >= call.end_time


async def test_retry_is_an_event_and_each_attempt_a_span_with_its_error(
    serve: Start, settings: Settings, sim: RunningSim
) -> None:
    flaky = sim_provider("flaky", sim)
    m = model("m", ("flaky", "retry-me+fault=503+fail_first=1"))
    retry = RetrySettings(max_attempts=2, base_delay_seconds=0.0, max_delay_seconds=0.0)
    app, channel, exporter = await serve(traced(routed(settings, [flaky], [m], retry=retry)))
    await completion_pb2_grpc.CompletionServiceStub(channel).Complete(request(model="m"))

    spans = finished(app, exporter)
    call = one(spans, "chat m")
    attempts = sorted(children(spans, call), key=lambda s: s.start_time or 0)
    assert [s.name for s in attempts] == ["chat retry-me+fault=503+fail_first=1"] * 2
    first, second = attempts
    assert dict(first.attributes or {})["error.type"] == "overloaded"
    assert first.status.status_code is StatusCode.ERROR
    assert second.status.status_code is StatusCode.UNSET
    assert [dict(s.attributes or {})["omnirelay.attempt"] for s in attempts] == [1, 2]
    retries = [e for e in call.events if e.name == "retry"]
    assert len(retries) == 1
    assert dict(retries[0].attributes or {})["error.type"] == "overloaded"
    assert dict(call.attributes or {})["omnirelay.retries"] == 1
    assert dict(call.attributes or {})["gen_ai.provider.name"] == "openai"
    assert dict(first.attributes or {})["server.address"] == "127.0.0.1"
    assert dict(first.attributes or {})["server.port"] == sim.port


async def test_fallback_is_an_event_and_the_call_span_says_so(
    serve: Start, settings: Settings, sim: RunningSim
) -> None:
    bad = sim_provider("bad", sim)
    good = sim_provider("good", sim)
    m = model("m", ("bad", "first+fault=500"), ("good", "second"))
    app, channel, exporter = await serve(traced(routed(settings, [bad, good], [m])))
    await completion_pb2_grpc.CompletionServiceStub(channel).Complete(request(model="m"))

    spans = finished(app, exporter)
    call = one(spans, "chat m")
    attempts = sorted(children(spans, call), key=lambda s: s.start_time or 0)
    assert [dict(s.attributes or {})["omnirelay.deployment"] for s in attempts] == [
        "bad/first+fault=500",
        "good/second",
    ]
    assert dict(attempts[0].attributes or {})["error.type"] == "server_error"
    fallbacks = [e for e in call.events if e.name == "fallback"]
    assert len(fallbacks) == 1
    assert dict(fallbacks[0].attributes or {}) == {
        "omnirelay.from_deployment": "bad/first+fault=500",
        "omnirelay.to_deployment": "good/second",
        "omnirelay.to_model": "m",
    }
    assert dict(call.attributes or {})["omnirelay.fallback"] is True


async def test_an_open_breaker_is_an_event_not_an_attempt(
    serve: Start, settings: Settings, sim: RunningSim
) -> None:
    bad = sim_provider("bad", sim)
    m = model("m", ("bad", "first+fault=500"))
    opens = BreakerSettings(failure_threshold=1, reset_timeout_seconds=60.0)
    app, channel, exporter = await serve(traced(routed(settings, [bad], [m], breaker=opens)))
    stub = completion_pb2_grpc.CompletionServiceStub(channel)
    for _ in range(2):  # the first opens the breaker; the second finds it open
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.Complete(request(model="m"))

    spans = sorted(
        (s for s in finished(app, exporter) if s.name == "chat m"), key=lambda s: s.start_time or 0
    )
    first, second = spans
    assert len(children(finished(app, exporter), first)) == 1
    assert children(finished(app, exporter), second) == []  # nothing was sent upstream
    rejected = [e for e in second.events if e.name == "breaker_rejected"]
    assert [dict(e.attributes or {})["omnirelay.deployment"] for e in rejected] == ["bad/first+fault=500"]
    assert dict(second.attributes or {})["error.type"] == "UNAVAILABLE"
    assert len(sim.simulator.served) == 1


async def test_each_attempt_sends_its_own_span_context_upstream(
    serve: Start, settings: Settings, sim: RunningSim
) -> None:
    bad = sim_provider("bad", sim)
    good = sim_provider("good", sim, kind="anthropic")
    m = model("m", ("bad", "first+fault=429"), ("good", "second"))
    app, channel, exporter = await serve(traced(routed(settings, [bad, good], [m])))
    await completion_pb2_grpc.CompletionServiceStub(channel).Complete(
        request(model="m"), metadata=(("traceparent", TRACEPARENT),)
    )

    spans = finished(app, exporter)
    attempts = sorted(children(spans, one(spans, "chat m")), key=lambda s: s.start_time or 0)
    expected = [traceparent(s) for s in attempts]
    assert [s.traceparent for s in sim.simulator.served] == expected
    assert len(set(expected)) == 2


async def test_streams_send_trace_context_upstream(serve: Start, settings: Settings, sim: RunningSim) -> None:
    p = sim_provider("p", sim, kind="gemini")
    app, channel, exporter = await serve(traced(routed(settings, [p], [model("m", ("p", "g"))])))
    stub = stream_pb2_grpc.StreamCompletionServiceStub(channel)
    [e async for e in stub.StreamComplete(stream_request(model="m"))]

    spans = finished(app, exporter)
    attempt = one(spans, "chat g")
    assert [s.traceparent for s in sim.simulator.served] == [traceparent(attempt)]
    assert int(traceparent(attempt)[-2:], 16) & 1  # sampled


async def test_untraced_gateway_passes_the_callers_traceparent_upstream_unchanged(
    start_server: Callable[[Settings], Awaitable[tuple[App, aio.Channel]]],
    settings: Settings,
    sim: RunningSim,
) -> None:
    p = sim_provider("p", sim)
    app, channel = await start_server(routed(settings, [p], [model("m", ("p", "x"))]))
    assert app.tracing is None
    stub = completion_pb2_grpc.CompletionServiceStub(channel)
    await stub.Complete(request(model="m"), metadata=(("traceparent", TRACEPARENT),))
    await stub.Complete(request(model="m"))  # no caller context: none is invented
    assert [s.traceparent for s in sim.simulator.served] == [TRACEPARENT, ""]


async def test_unsampled_traces_export_nothing_but_still_propagate(
    serve: Start, settings: Settings, sim: RunningSim
) -> None:
    p = sim_provider("p", sim)
    app, channel, exporter = await serve(
        traced(routed(settings, [p], [model("m", ("p", "x"))]), sample_ratio=0.0)
    )
    await completion_pb2_grpc.CompletionServiceStub(channel).Complete(request(model="m"))
    assert finished(app, exporter) == []
    [served] = sim.simulator.served
    version, trace_id, span_id, flags = served.traceparent.split("-")
    assert version == "00"
    assert int(flags, 16) & 1 == 0  # not sampled: the upstream should not record it either
    assert len(trace_id) == 32
    assert int(trace_id, 16) != 0
    assert len(span_id) == 16


async def test_a_callers_sampled_flag_wins_over_the_ratio(serve: Start, settings: Settings) -> None:
    app, channel, exporter = await serve(traced(settings, sample_ratio=0.0))
    await completion_pb2_grpc.CompletionServiceStub(channel).Complete(
        request(), metadata=(("traceparent", TRACEPARENT),)
    )
    names = {s.name for s in finished(app, exporter)}
    assert names == {"/omnirelay.v1.CompletionService/Complete", "chat local-small", "chat small"}


async def test_a_failed_call_has_an_error_status_and_type(serve: Start, settings: Settings) -> None:
    app, channel, exporter = await serve(traced(settings))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await completion_pb2_grpc.CompletionServiceStub(channel).Complete(request(model="no-such-model"))
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND

    spans = finished(app, exporter)
    call = one(spans, "chat no-such-model")
    assert call.status.status_code is StatusCode.ERROR
    assert dict(call.attributes or {})["error.type"] == "NOT_FOUND"
    server = one(spans, "/omnirelay.v1.CompletionService/Complete")
    assert dict(server.attributes or {})["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
    assert children(spans, call) == []


async def test_content_is_recorded_only_when_enabled_and_then_masked(
    serve: Start, settings: Settings
) -> None:
    prompt = "mail me at jane.doe@example.com or call +1 415 555 0132"
    app, channel, exporter = await serve(traced(settings, content=True))
    response = await completion_pb2_grpc.CompletionServiceStub(channel).Complete(request(prompt))
    call = one(finished(app, exporter), "chat local-small")
    a = dict(call.attributes or {})
    recorded = str(a["gen_ai.input.messages"])
    assert "[EMAIL]" in recorded
    assert "[PHONE]" in recorded
    assert "jane.doe@example.com" not in recorded
    assert "555 0132" not in recorded
    assert '"role": "user"' in recorded
    answer = "".join(p.text for p in response.choices[0].message.content)
    assert answer
    assert answer in str(a["gen_ai.output.messages"])


async def test_streamed_content_is_the_delivered_text(serve: Start, settings: Settings) -> None:
    app, channel, exporter = await serve(traced(settings, content=True))
    stub = stream_pb2_grpc.StreamCompletionServiceStub(channel)
    events = [e async for e in stub.StreamComplete(stream_request(max_tokens=80))]
    delivered = "".join(e.text_delta.text for e in events if e.WhichOneof("event") == "text_delta")
    call = one(finished(app, exporter), "chat local-small")
    assert delivered
    assert delivered in str(dict(call.attributes or {})["gen_ai.output.messages"])


async def test_metrics_count_the_spans_ended_and_exported(serve: Start, settings: Settings) -> None:
    app, channel, exporter = await serve(traced(settings))
    await completion_pb2_grpc.CompletionServiceStub(channel).Complete(request("count my spans"))
    spans = finished(app, exporter)
    assert app.admin is not None
    async with httpx.AsyncClient(timeout=5.0) as client:
        text = (await client.get(f"http://127.0.0.1:{app.admin.port}/metrics")).text
    # The server, call and attempt spans: all ended, all exported, none failed.
    assert len(spans) == 3
    assert 'omnirelay_trace_spans_total{state="ended"} 3.0' in text
    assert 'omnirelay_trace_spans_total{state="exported"} 3.0' in text
    assert 'omnirelay_trace_spans_total{state="failed"} 0.0' in text


def test_tracing_off_loads_no_sdk_and_no_instrumentation(tmp_path: Path) -> None:
    # A fresh interpreter: this one has the SDK loaded by the other tests.
    script = (
        "import sys\n"
        "from omnirelay.app import build_app\n"
        "from omnirelay.config import load_settings\n"
        "app = build_app(load_settings('development'), host='127.0.0.1', port=0)\n"
        "assert app.tracing is None\n"
        "tracer = ('opentelemetry.sdk', 'opentelemetry.instrumentation')\n"
        "print(sorted(m for m in sys.modules if m.startswith(tracer)))\n"
    )
    env = {**os.environ, "OMNIRELAY_USAGE__SQLITE_PATH": str(tmp_path / "usage.db")}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
