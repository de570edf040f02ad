"""The request log: one ``omnirelay.access`` line per completion call, as an operator reads it.

Over a real channel to an in-process server whose logging was set up by
``telemetry.logs.configure`` (as ``omnirelay serve`` does) with its stream pointed at a
buffer: every line the server writes while the test runs is in that buffer. ``configure``
changes process-wide logging state (handlers, levels, ``logging._srcfile``...); the
``logging_state`` fixture puts all of it back, so other tests see logging as it was.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from grpc import aio

from omnirelay.app import App
from omnirelay.config import HttpProviderSettings, Settings, secret_values
from omnirelay.config.routing import BreakerSettings, RetrySettings
from omnirelay.config.telemetry import LoggingSettings
from omnirelay.sim.server import RunningSim
from omnirelay.sim.server import start as start_sim
from omnirelay.telemetry import logs
from omnirelay_client.v1 import completion_pb2, completion_pb2_grpc, stream_pb2_grpc, types_pb2
from tests.conftest import StartServer, with_local
from tests.helpers import request, stream_request, text
from tests.logging_state import LoggingState
from tests.routing_helpers import model, routed, sim_provider

ACCESS = "omnirelay.access"
JSON = LoggingSettings(level="INFO", format="json")
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
RETRY2 = RetrySettings(max_attempts=2, base_delay_seconds=0.0, max_delay_seconds=0.0)

# Personal data a caller might put in a prompt, and a configured key a caller might paste.
EMAIL = "ana.lopez@example.com"
PHONE = "+1 415 555 0132"
CARD = "4111 1111 1111 1111"
PROVIDER_KEY = "sk-proj-Tq4xW9bNc2LmRv7KpYz3"
PERSONAL_PROMPT = f"Reach me at {EMAIL} or {PHONE}; charge card {CARD} for the harbor tour"


# --- capturing the log ------------------------------------------------------------------------


@dataclass
class Captured:
    """What the server logged: every formatted line written to the configured stream."""

    buffer: io.StringIO

    @property
    def output(self) -> str:
        return self.buffer.getvalue()

    def lines(self) -> list[str]:
        return self.output.splitlines()

    def entries(self) -> list[dict[str, Any]]:
        """Every line as a JSON object (the json format: each line must be one)."""
        out = []
        for line in self.lines():
            entry = json.loads(line)
            assert isinstance(entry, dict), line
            out.append(entry)
        return out

    def access(self) -> list[dict[str, Any]]:
        return [e for e in self.entries() if e["logger"] == ACCESS]

    def access_for(self, request_id: str) -> list[dict[str, Any]]:
        return [e for e in self.access() if e["request_id"] == request_id]


Configure = Callable[[LoggingSettings, Settings], Captured]


@pytest.fixture
def configure_logs(monkeypatch: pytest.MonkeyPatch, logging_state: LoggingState) -> Configure:
    """``logs.configure`` as the CLI calls it, writing to a buffer instead of the process's stderr."""

    def configure(logging_settings: LoggingSettings, settings: Settings) -> Captured:
        buffer = io.StringIO()
        # configure binds sys.stderr when it builds its handler: swap the stream in first.
        monkeypatch.setattr(sys, "stderr", buffer)
        for name, _ in logging_settings.levels:
            logging_state.remember(name)
        logs.configure(logging_settings, secret_values(settings))
        return Captured(buffer)

    return configure


Start = Callable[..., Awaitable[tuple[App, aio.Channel, Captured]]]


@pytest.fixture
def start(configure_logs: Configure, start_server: StartServer) -> Start:
    """Configure logging, then start a server with the same logging settings.

    This fixture asks for ``configure_logs`` before ``start_server``, so the servers are shut
    down (their last lines still captured) before logging is put back.
    """

    async def begin(
        settings: Settings,
        logging_settings: LoggingSettings = JSON,
        *,
        server_logging: LoggingSettings | None = None,
    ) -> tuple[App, aio.Channel, Captured]:
        captured = configure_logs(logging_settings, settings)
        served = dataclasses.replace(settings, logging=server_logging or logging_settings)
        app, channel = await start_server(served)
        return app, channel, captured

    return begin


async def finish(app: App) -> None:
    """Stop the server, letting every call end: after this, every line it will write is written."""
    await app.shutdown(grace=5.0)


def unary(channel: aio.Channel) -> Any:
    return completion_pb2_grpc.CompletionServiceStub(channel)


def streaming(channel: aio.Channel) -> Any:
    return stream_pb2_grpc.StreamCompletionServiceStub(channel)


def metadata(request_id: str, traceparent: str = "") -> tuple[tuple[str, str], ...]:
    return (("x-request-id", request_id),) + ((("traceparent", traceparent),) if traceparent else ())


def cache_name(outcome: int) -> str:
    """The request line's name for a RouteFacts cache outcome."""
    if outcome == types_pb2.CACHE_OUTCOME_UNSPECIFIED:
        return "none"
    return types_pb2.CacheOutcome.Name(outcome).removeprefix("CACHE_OUTCOME_").lower()  # type: ignore[arg-type]


def assert_matches_response(line: dict[str, Any], response: completion_pb2.CompleteResponse) -> None:
    route, usage = response.route, response.usage
    assert line["request_id"] == route.request_id
    assert line["model"] == route.requested_model
    assert line["resolved_model"] == route.resolved_model
    assert line["provider"] == route.provider
    assert line["deployment"] == route.deployment
    assert line["fallback"] is route.fallback_used
    assert line["cache"] == cache_name(route.cache)
    assert line["input_tokens"] == usage.input_tokens
    assert line["output_tokens"] == usage.output_tokens
    assert line["cost_micros"] == usage.cost_micros


@pytest.fixture
async def sim() -> AsyncIterator[RunningSim]:
    running = await start_sim()
    yield running
    await running.stop()


# --- 1. a unary call ------------------------------------------------------------------------------


async def test_each_unary_call_leaves_exactly_one_json_request_line(start: Start, settings: Settings) -> None:
    app, channel, captured = await start(settings)
    stub = unary(channel)
    first = await stub.Complete(request("first call"), metadata=metadata("rid-first", TRACEPARENT))
    second = await stub.Complete(request("second call", max_tokens=5), metadata=metadata("rid-second"))
    await finish(app)

    assert len(captured.access()) == 2
    (line,) = captured.access_for("rid-first")
    assert_matches_response(line, first)
    assert line["ts"].endswith("Z")
    assert (line["level"], line["logger"], line["msg"]) == ("INFO", ACCESS, "request")
    assert line["method"] == "Complete"
    assert (line["model"], line["resolved_model"]) == ("local-small", "local-small")
    assert (line["provider"], line["deployment"]) == ("local", "local/small")
    assert line["status"] == "OK"
    assert line["latency_ms"] > 0
    assert line["input_tokens"] > 0
    assert line["output_tokens"] == 24  # the local provider's default answer length
    assert line["retries"] == 0
    assert line["fallback"] is False
    assert line["trace_id"] == TRACE_ID
    # Said only when meaningful: no stream, one attempt, no project, no content logging.
    for absent in ("ttft_ms", "attempts", "project", "prompt", "completion"):
        assert absent not in line

    (other,) = captured.access_for("rid-second")
    assert_matches_response(other, second)
    assert other["output_tokens"] == 5
    assert "trace_id" not in other  # no traceparent sent


async def test_cache_hits_and_projects_are_in_the_request_line(start: Start, settings: Settings) -> None:
    app, channel, captured = await start(settings)
    stub = unary(channel)
    req = request("a deterministic question", temperature=0.0)
    req.attribution.project = "harbor"
    miss = await stub.Complete(req, metadata=metadata("rid-miss"))
    hit = await stub.Complete(req, metadata=metadata("rid-hit"))
    await finish(app)

    assert miss.route.cache == types_pb2.CACHE_OUTCOME_MISS
    assert hit.route.cache == types_pb2.CACHE_OUTCOME_HIT
    (miss_line,) = captured.access_for("rid-miss")
    (hit_line,) = captured.access_for("rid-hit")
    assert_matches_response(miss_line, miss)
    assert_matches_response(hit_line, hit)
    assert (miss_line["cache"], hit_line["cache"]) == ("miss", "hit")
    assert miss_line["project"] == hit_line["project"] == "harbor"
    assert hit_line["status"] == "OK"
    assert hit_line["cost_micros"] == 0


# --- 2. a stream ----------------------------------------------------------------------------------


async def test_each_stream_leaves_one_request_line_with_its_time_to_first_token(
    start: Start, settings: Settings
) -> None:
    app, channel, captured = await start(with_local(settings, tokens_per_second=2000.0))
    events = [
        e
        async for e in streaming(channel).StreamComplete(
            stream_request("stream this", max_tokens=12), metadata=metadata("rid-stream", TRACEPARENT)
        )
    ]
    await finish(app)

    usage = next(e.usage for e in events if e.HasField("usage"))
    done = events[-1].done.route
    (line,) = captured.access()
    assert line["request_id"] == "rid-stream"
    assert line["method"] == "StreamComplete"
    assert line["status"] == "OK"
    assert (line["provider"], line["deployment"]) == ("local", "local/small")
    assert (line["input_tokens"], line["output_tokens"]) == (usage.input_tokens, usage.output_tokens)
    assert line["output_tokens"] == 12
    assert line["cache"] == cache_name(done.cache)
    assert line["trace_id"] == TRACE_ID
    assert 0 < line["ttft_ms"] <= line["latency_ms"]
    # 12 tokens at 2000/s: the stream took at least 6 ms after its first token.
    assert line["latency_ms"] >= 5.0


async def test_a_cancelled_stream_leaves_one_cancelled_line(start: Start, settings: Settings) -> None:
    app, channel, captured = await start(with_local(settings, tokens_per_second=50.0))
    call = streaming(channel).StreamComplete(
        stream_request("a long story", max_tokens=10_000), metadata=metadata("rid-cancel")
    )
    async for event in call:
        if event.HasField("text_delta"):
            break
    call.cancel()
    await finish(app)

    (line,) = captured.access()
    assert line["request_id"] == "rid-cancel"
    assert line["method"] == "StreamComplete"
    assert line["status"] == "CANCELLED"


# --- 3. a failing call ----------------------------------------------------------------------------


async def test_a_failing_call_leaves_one_line_with_its_status(start: Start, settings: Settings) -> None:
    app, channel, captured = await start(settings)
    with pytest.raises(aio.AioRpcError) as failed:
        await unary(channel).Complete(request(model="no-such-model"), metadata=metadata("rid-404"))
    assert failed.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(aio.AioRpcError):
        await anext(
            aiter(
                streaming(channel).StreamComplete(
                    stream_request(model="no-such-model"), metadata=metadata("rid-404-stream")
                )
            )
        )
    await finish(app)

    (line,) = captured.access_for("rid-404")
    assert line["status"] == "NOT_FOUND"
    assert line["method"] == "Complete"
    assert line["model"] == "no-such-model"
    assert (line["provider"], line["deployment"], line["input_tokens"], line["output_tokens"]) == (
        "",
        "",
        0,
        0,
    )
    assert line["latency_ms"] > 0
    (streamed,) = captured.access_for("rid-404-stream")
    assert (streamed["status"], streamed["method"]) == ("NOT_FOUND", "StreamComplete")
    assert len(captured.access()) == 2


# --- 4. fallback and retries over the simulator ---------------------------------------------------


async def test_fallback_is_in_the_request_line(start: Start, settings: Settings, sim: RunningSim) -> None:
    providers = [sim_provider("bad", sim), sim_provider("good", sim)]
    models = [model("m", ("bad", "first+fault=429"), ("good", "second"))]
    app, channel, captured = await start(routed(settings, providers, models))
    response = await unary(channel).Complete(request(model="m"), metadata=metadata("rid-fallback"))
    await finish(app)

    assert [s.model for s in sim.simulator.served] == ["first", "second"]
    (line,) = captured.access()
    assert_matches_response(line, response)
    assert line["fallback"] is True
    assert line["attempts"] == 2
    assert line["retries"] == 0
    assert (line["provider"], line["deployment"]) == ("good", "good/second")
    assert line["status"] == "OK"
    # The provider's key is masked in every line even though no line should hold it at all.
    assert "sk-routing-secret-never-shown" not in captured.output


async def test_a_retry_is_counted_in_the_request_line(
    start: Start, settings: Settings, sim: RunningSim
) -> None:
    providers = [sim_provider("p1", sim)]
    models = [model("m", ("p1", "a+fault=503+fail_first=1"))]
    app, channel, captured = await start(routed(settings, providers, models, retry=RETRY2))
    response = await unary(channel).Complete(request(model="m"), metadata=metadata("rid-retry"))
    await finish(app)

    assert [s.model for s in sim.simulator.served] == ["a", "a"]
    (line,) = captured.access()
    assert_matches_response(line, response)
    assert line["retries"] == 1
    assert line["attempts"] == 2
    assert line["fallback"] is False
    assert line["status"] == "OK"


async def test_an_upstream_failure_is_in_the_request_line(
    start: Start, settings: Settings, sim: RunningSim
) -> None:
    providers = [sim_provider("p1", sim)]
    models = [model("m", ("p1", "a+fault=500"))]
    app, channel, captured = await start(routed(settings, providers, models))
    with pytest.raises(aio.AioRpcError) as failed:
        await unary(channel).Complete(request(model="m"), metadata=metadata("rid-500"))
    await finish(app)

    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    (line,) = captured.access()
    assert line["request_id"] == "rid-500"
    assert line["status"] == "UNAVAILABLE"
    assert (line["provider"], line["deployment"]) == ("p1", "p1/a+fault=500")
    assert (line["input_tokens"], line["output_tokens"]) == (0, 0)


async def test_lifecycle_and_breaker_events_are_lines_in_the_configured_format(
    start: Start, settings: Settings, sim: RunningSim
) -> None:
    providers = [sim_provider("p1", sim)]
    models = [model("m", ("p1", "a+fault=500"))]
    opens = BreakerSettings(failure_threshold=1, reset_timeout_seconds=60.0)
    app, channel, captured = await start(routed(settings, providers, models, breaker=opens))
    with pytest.raises(aio.AioRpcError):
        await unary(channel).Complete(request(model="m"), metadata=metadata("rid-opens"))
    await finish(app)

    entries = captured.entries()  # every line is one JSON object, these included
    events = [(e["logger"], e["level"], e["msg"]) for e in entries if e["logger"] != ACCESS]
    breaker = [e for e in events if e[0] == "omnirelay.breaker"]
    assert breaker == [("omnirelay.breaker", "WARNING", "circuit breaker p1/a+fault=500: closed -> open")]
    lifecycle = [msg for name, _, msg in events if name == "omnirelay.app"]
    assert lifecycle[0].startswith(f"serving on {app.address}")
    assert lifecycle[-1] == "stopped"
    # The breaker opened while serving, before the drain began.
    drain = next(i for i, e in enumerate(events) if e[2].startswith("health NOT_SERVING"))
    assert events.index(breaker[0]) < drain


# --- 5. switches: requests off, per-logger levels, text format ------------------------------------


@pytest.mark.parametrize("where", ["settings", "configure_only"])
async def test_requests_off_writes_no_request_line_but_other_logs_still_work(
    start: Start, settings: Settings, where: str
) -> None:
    off = dataclasses.replace(JSON, requests=False)
    # configure_only: the server still has its request log; configure alone must silence it.
    server_logging = off if where == "settings" else JSON
    app, channel, captured = await start(settings, off, server_logging=server_logging)
    await unary(channel).Complete(request(), metadata=metadata("rid-quiet"))
    logging.getLogger("omnirelay.test").warning("still here")
    await finish(app)

    entries = captured.entries()
    assert not [e for e in entries if e["logger"] == ACCESS]
    assert "rid-quiet" not in captured.output
    loggers = {e["logger"] for e in entries}
    assert {"omnirelay.app", "omnirelay.test"} <= loggers
    assert any(e["msg"] == "stopped" for e in entries)


async def test_a_per_logger_level_silences_request_lines(start: Start, settings: Settings) -> None:
    quiet = dataclasses.replace(JSON, level="DEBUG", levels=((ACCESS, "WARNING"),))
    app, channel, captured = await start(settings, quiet)
    await unary(channel).Complete(request(), metadata=metadata("rid-leveled"))
    logging.getLogger(ACCESS).warning("a warning still passes")
    await finish(app)

    access = captured.access()
    assert [e["msg"] for e in access] == ["a warning still passes"]
    assert "rid-leveled" not in captured.output
    assert any(e["logger"] == "omnirelay.app" for e in captured.entries())


async def test_per_logger_levels_can_also_turn_one_logger_up(start: Start, settings: Settings) -> None:
    chatty = dataclasses.replace(JSON, level="WARNING", levels=((ACCESS, "INFO"),))
    app, channel, captured = await start(settings, chatty)
    await unary(channel).Complete(request(), metadata=metadata("rid-up"))
    await finish(app)

    assert [e["request_id"] for e in captured.access()] == ["rid-up"]
    # The rest follows the main level: no INFO line from the app.
    assert not [e for e in captured.entries() if e["logger"] != ACCESS and e["level"] == "INFO"]


async def test_text_format_prints_key_value_pairs(start: Start, settings: Settings) -> None:
    # The development profile's own logging: DEBUG, text.
    assert (settings.logging.format, settings.logging.level) == ("text", "DEBUG")
    app, channel, captured = await start(settings, settings.logging)
    response = await unary(channel).Complete(request(), metadata=metadata("rid-text", TRACEPARENT))
    await finish(app)

    (line,) = [line for line in captured.lines() if f" {ACCESS} request " in line]
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)
    pairs = dict(part.split("=", 1) for part in line.split(f" {ACCESS} request ", 1)[1].split(" "))
    assert pairs["request_id"] == "rid-text"
    assert pairs["method"] == "Complete"
    assert pairs["model"] == "local-small"
    assert pairs["provider"] == "local"
    assert pairs["deployment"] == "local/small"
    assert pairs["status"] == "OK"
    assert float(pairs["latency_ms"]) > 0
    assert pairs["input_tokens"] == str(response.usage.input_tokens)
    assert pairs["output_tokens"] == str(response.usage.output_tokens)
    assert pairs["retries"] == "0"
    assert pairs["fallback"] == "False"
    assert pairs["trace_id"] == TRACE_ID
    assert " INFO " in line


async def test_text_format_keeps_a_hostile_model_name_on_one_line(start: Start, settings: Settings) -> None:
    app, channel, captured = await start(settings, settings.logging)
    req = request(model="nope\n2026-11-22\tERROR\tomnirelay.app\tforged")
    req.attribution.project = "p\rq"
    with pytest.raises(aio.AioRpcError):
        await unary(channel).Complete(req, metadata=metadata("rid-hostile"))
    await finish(app)

    (line,) = [line for line in captured.lines() if "request_id=rid-hostile" in line]
    assert "forged" in line
    assert not [line for line in captured.lines() if line.startswith("2026-11-22\tERROR")]


# --- 6. content logging ---------------------------------------------------------------------------


async def test_content_is_not_logged_by_default(start: Start, settings: Settings) -> None:
    assert not JSON.content
    prompt = "the secret recipe of the lighthouse keeper zq7"
    app, channel, captured = await start(settings, dataclasses.replace(JSON, level="DEBUG"))
    response = await unary(channel).Complete(request(prompt), metadata=metadata("rid-private"))
    events = [e async for e in streaming(channel).StreamComplete(stream_request(prompt))]
    await finish(app)

    streamed = "".join(e.text_delta.text for e in events if e.HasField("text_delta"))
    assert len(captured.access()) == 2
    for line in captured.access():
        assert "prompt" not in line
        assert "completion" not in line
    assert "zq7" not in captured.output
    assert text(response).strip() not in captured.output
    assert streamed.strip() not in captured.output


def _with_key(settings: Settings) -> Settings:
    """A configured provider key (unused by the calls) that the secret mask must know."""
    provider = HttpProviderSettings(
        name="openai", kind="openai", base_url="http://127.0.0.1:9/v1", api_key=PROVIDER_KEY
    )
    return dataclasses.replace(settings, providers={**settings.providers, "openai": provider})


async def test_content_logging_masks_personal_data_and_secrets(start: Start, settings: Settings) -> None:
    content = dataclasses.replace(JSON, content=True, redact=("email", "phone", "card"))
    app, channel, captured = await start(_with_key(settings), content)
    response = await unary(channel).Complete(request(PERSONAL_PROMPT), metadata=metadata("rid-unary"))
    events = [
        e
        async for e in streaming(channel).StreamComplete(
            stream_request(f"{PERSONAL_PROMPT} (key {PROVIDER_KEY})"), metadata=metadata("rid-stream")
        )
    ]
    await finish(app)

    (line,) = captured.access_for("rid-unary")
    assert line["prompt"] == "user: Reach me at [EMAIL] or [PHONE]; charge card [CARD] for the harbor tour"
    assert line["completion"] == text(response)
    assert line["completion"]

    (streamed,) = captured.access_for("rid-stream")
    assert streamed["prompt"] == (
        "user: Reach me at [EMAIL] or [PHONE]; charge card [CARD] for the harbor tour (key [REDACTED])"
    )
    assert streamed["completion"] == "".join(e.text_delta.text for e in events if e.HasField("text_delta"))
    assert streamed["completion"]

    output = captured.output
    for raw in (EMAIL, PHONE, CARD, "415 555 0132", "4111", PROVIDER_KEY):
        assert raw not in output


async def test_content_logging_masks_only_the_configured_kinds(start: Start, settings: Settings) -> None:
    only_email = dataclasses.replace(JSON, content=True, redact=("email",))
    app, channel, captured = await start(settings, only_email)
    await unary(channel).Complete(request(PERSONAL_PROMPT), metadata=metadata("rid-email-only"))
    await finish(app)

    (line,) = captured.access()
    assert line["prompt"] == f"user: Reach me at [EMAIL] or {PHONE}; charge card {CARD} for the harbor tour"
    assert EMAIL not in captured.output


async def test_content_logging_in_text_format_keeps_one_line_per_call(
    start: Start, settings: Settings
) -> None:
    content = dataclasses.replace(settings.logging, content=True)
    app, channel, captured = await start(settings, content)
    response = await unary(channel).Complete(request(PERSONAL_PROMPT), metadata=metadata("rid-text-content"))
    await finish(app)

    (line,) = [line for line in captured.lines() if "request_id=rid-text-content" in line]
    assert 'prompt="user: Reach me at [EMAIL] or [PHONE]; charge card [CARD] for the harbor tour"' in line
    assert f"completion={json.dumps(text(response))}" in line
    for raw in (EMAIL, PHONE, CARD):
        assert raw not in captured.output


async def test_logging_state_is_restored_for_other_tests() -> None:
    """Runs after the tests above (file order): configure's handler must be gone everywhere."""
    await asyncio.sleep(0)
    for logger in (logging.getLogger(), logging.getLogger("omnirelay"), logging.getLogger(ACCESS)):
        for handler in logger.handlers:
            assert not isinstance(handler.formatter, logs.JsonFormatter | logs.TextFormatter)
    assert logging.getLogger("omnirelay").propagate
    assert logging.getLogger(ACCESS).level == logging.NOTSET
    assert logging._srcfile is not None


def test_the_span_batchers_per_span_warning_is_off_and_can_be_turned_back_on(
    configure_logs: Configure, logging_state: LoggingState, settings: Settings
) -> None:
    # Under a lagging collector the SDK would warn once per dropped span: a line per call.
    batcher = logging.getLogger(logs.SPAN_BATCHER_LOGGER)
    logging_state.remember(logs.SPAN_BATCHER_LOGGER)
    captured = configure_logs(JSON, settings)
    batcher.warning("Queue full, dropping Span.")
    batcher.error("Exception while exporting Span.")  # a failed export still says so
    assert [e["msg"] for e in captured.entries()] == ["Exception while exporting Span."]

    captured = configure_logs(
        dataclasses.replace(JSON, levels=((logs.SPAN_BATCHER_LOGGER, "WARNING"),)), settings
    )
    batcher.warning("Queue full, dropping Span.")
    assert [e["msg"] for e in captured.entries()] == ["Queue full, dropping Span."]
