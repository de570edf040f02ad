"""Prometheus metrics end to end: calls over a real channel, then ``GET /metrics`` on the admin port.

Every expected value is derived from what the test did (how many calls of each kind, the
tokens and costs the responses reported), and each scrape is parsed with prometheus_client's
own parser, so a label or a name that drifts shows up as a wrong number.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from omnirelay.app import App
from omnirelay.config import LocalProviderSettings, Settings
from omnirelay.config.routing import BreakerSettings, PricingSettings, RetrySettings
from omnirelay.sim.server import RunningSim, start
from omnirelay.usage import layer
from omnirelay.usage.records import UsageRecord
from omnirelay_client.v1 import completion_pb2, completion_pb2_grpc, stream_pb2, stream_pb2_grpc, types_pb2
from tests.conftest import StartServer
from tests.helpers import drain, request, stream_request
from tests.routing_helpers import model, routed, sim_provider

if TYPE_CHECKING:
    from omnirelay_client.v1.completion_pb2_grpc import CompletionServiceAsyncStub
    from omnirelay_client.v1.stream_pb2_grpc import StreamCompletionServiceAsyncStub

CALL_TIMEOUT = 15.0
# Awkward prices, so that a cost that is dropped or doubled cannot round to the right answer.
PRICE = PricingSettings(input=2.5, output=10.0, cached_input=1.25, source="test", as_of="2026-11-01")


# --- scraping -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    name: str
    labels: Mapping[str, str]
    value: float


@dataclass(frozen=True)
class Scrape:
    """One ``GET /metrics``: its raw text and every sample in it."""

    text: str
    samples: tuple[Sample, ...]

    def matching(self, name: str, **labels: str) -> list[Sample]:
        return [
            s for s in self.samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        ]

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples called ``name`` whose labels include ``labels`` (0 when none)."""
        return sum(s.value for s in self.matching(name, **labels))

    def label_values(self, name: str, label: str) -> set[str]:
        return {s.labels[label] for s in self.samples if s.name == name and label in s.labels}


def parse(text: str) -> Scrape:
    samples = tuple(
        Sample(s.name, dict(s.labels), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    )
    return Scrape(text, samples)


async def scrape(app: App) -> Scrape:
    assert app.admin is not None
    async with httpx.AsyncClient(timeout=5.0) as client:
        response = await client.get(f"http://127.0.0.1:{app.admin.port}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


async def scrape_when(app: App, ready: Callable[[Scrape], bool], seconds: float = 3.0) -> Scrape:
    """Scrape until ``ready`` holds (a call is counted when its record is made, just after its
    answer left), for at most ``seconds``; returns the last scrape either way."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        found = await scrape(app)
        if ready(found) or loop.time() >= deadline:
            return found
        await asyncio.sleep(0.02)


# --- calling ----------------------------------------------------------------------------------


@dataclass
class Client:
    app: App
    unary: CompletionServiceAsyncStub
    streams: StreamCompletionServiceAsyncStub

    async def complete(
        self, req: completion_pb2.CompleteRequest, metadata: tuple[tuple[str, str], ...] | None = None
    ) -> completion_pb2.CompleteResponse:
        response: completion_pb2.CompleteResponse = await self.unary.Complete(
            req, timeout=CALL_TIMEOUT, metadata=metadata
        )
        return response

    async def stream(self, req: stream_pb2.StreamCompleteRequest) -> list[stream_pb2.StreamCompleteResponse]:
        return [e async for e in self.streams.StreamComplete(req, timeout=CALL_TIMEOUT)]

    async def fail(self, req: completion_pb2.CompleteRequest) -> grpc.aio.AioRpcError:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await self.unary.Complete(req, timeout=CALL_TIMEOUT)
        return caught.value


async def connect(start_server: StartServer, settings: Settings) -> Client:
    app, channel = await start_server(settings)
    return Client(
        app,
        completion_pb2_grpc.CompletionServiceStub(channel),
        stream_pb2_grpc.StreamCompletionServiceStub(channel),
    )


def stream_usage(events: list[stream_pb2.StreamCompleteResponse]) -> types_pb2.Usage:
    (usage,) = [e.usage for e in events if e.HasField("usage")]
    return usage


def local(settings: Settings, **changes: float) -> Settings:
    """The local provider with these latency knobs, and local-small priced at PRICE."""
    provider = settings.providers["local"]
    assert isinstance(provider, LocalProviderSettings)
    small = dataclasses.replace(settings.models["local-small"], pricing=PRICE)
    return dataclasses.replace(
        settings,
        providers={**settings.providers, "local": dataclasses.replace(provider, **changes)},  # type: ignore[arg-type]
        models={**settings.models, "local-small": small},
    )


def with_metrics(settings: Settings, **changes: bool | int) -> Settings:
    return dataclasses.replace(settings, metrics=dataclasses.replace(settings.metrics, **changes))  # type: ignore[arg-type]


@pytest.fixture
async def sim() -> AsyncIterator[RunningSim]:
    running = await start()
    yield running
    await running.stop()


REQUESTS = "omnirelay_requests_total"
DURATION_COUNT = "gen_ai_client_operation_duration_seconds_count"


# --- 1. Calls, durations, tokens, time to first chunk --------------------------------------------


async def test_ended_calls_are_counted_in_a_batch_and_a_scrape_sees_them_at_once(
    start_server: StartServer, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A long batch, so that "not yet recorded" below does not depend on the machine's speed.
    monkeypatch.setattr(layer, "BATCH_SECONDS", 30.0)
    client = await connect(start_server, settings)
    await client.complete(request("counted in a batch"))
    recorder = client.app.usage.recorder
    # The call has ended but waits (at most BATCH_SECONDS) to be recorded and counted with others.
    assert recorder.counters.submitted == 0
    # A scrape concludes the waiting calls first: no polling needed.
    m = await scrape(client.app)
    assert m.value(REQUESTS) == 1
    assert recorder.counters.submitted == 1


async def test_a_batch_of_ended_calls_is_recorded_within_its_interval(
    start_server: StartServer, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch = 1.0  # longer than the calls take on a slow machine, short enough to wait for
    monkeypatch.setattr(layer, "BATCH_SECONDS", batch)
    client = await connect(start_server, settings)
    await asyncio.gather(*(client.complete(request(f"call {i}")) for i in range(5)))
    recorder = client.app.usage.recorder
    assert recorder.counters.submitted == 0
    await asyncio.sleep(batch * 3)
    assert recorder.counters.submitted == 5


async def test_a_record_that_fails_costs_neither_its_call_nor_the_rest_of_its_batch(
    start_server: StartServer, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(layer, "BATCH_SECONDS", 30.0)
    client = await connect(start_server, settings)
    recorder = client.app.usage.recorder
    submit = recorder.submit
    refused: list[str] = []

    def first_fails(record: UsageRecord) -> None:
        if not refused:
            refused.append(record.request_id)
            raise RuntimeError("a bug while recording")
        submit(record)

    monkeypatch.setattr(recorder, "submit", first_fails)
    replies = await asyncio.gather(*(client.complete(request(f"call {i}")) for i in range(4)))
    assert len(replies) == 4  # every call answered: the failure happens after, in the batch
    m = await scrape(client.app)  # concludes the batch
    assert len(refused) == 1
    assert recorder.counters.submitted == 3
    assert m.value(REQUESTS) == 3  # the failed record's call is not counted; the others are


async def test_unary_and_streamed_calls_are_counted_with_their_tokens(
    start_server: StartServer, settings: Settings
) -> None:
    client = await connect(start_server, settings)
    unary, streamed = 3, 2
    input_tokens = output_tokens = 0
    # Interleaved, so a unary and a stream with the same route are each counted under their own method.
    for i in range(max(unary, streamed)):
        if i < unary:
            reply = await client.complete(request(f"unary question number {i}"))
            input_tokens += reply.usage.input_tokens
            output_tokens += reply.usage.output_tokens
        if i < streamed:
            usage = stream_usage(await client.stream(stream_request(f"streamed question {i} " * (i + 1))))
            input_tokens += usage.input_tokens
            output_tokens += usage.output_tokens
    assert input_tokens > 0
    assert output_tokens > 0
    calls = unary + streamed

    m = await scrape_when(client.app, lambda s: s.value(DURATION_COUNT) >= calls)

    route = {"model": "local-small", "provider": "local", "deployment": "local/small", "grpc_code": "OK"}
    assert m.value(REQUESTS, method="Complete", **route) == unary
    assert m.value(REQUESTS, method="StreamComplete", **route) == streamed
    assert m.value(REQUESTS) == calls
    assert m.value(DURATION_COUNT) == calls
    assert m.value(DURATION_COUNT, error_type="") == calls
    assert (
        m.value(
            DURATION_COUNT,
            gen_ai_operation_name="chat",
            gen_ai_request_model="local-small",
            gen_ai_response_model="local-small",
        )
        == calls
    )
    assert m.value("gen_ai_client_operation_duration_seconds_sum") > 0
    tokens = "gen_ai_client_token_usage"
    assert m.value(f"{tokens}_sum", gen_ai_token_type="input") == input_tokens
    assert m.value(f"{tokens}_sum", gen_ai_token_type="output") == output_tokens
    assert m.value(f"{tokens}_count", gen_ai_token_type="input") == calls
    assert m.value(f"{tokens}_count", gen_ai_token_type="output") == calls
    # Streams only: a unary answer has no first chunk.
    assert m.value("gen_ai_client_operation_time_to_first_chunk_seconds_count") == streamed
    # Nothing failed, fell back or was retried.
    assert m.value("omnirelay_upstream_errors_total") == 0
    assert m.value("omnirelay_fallbacks_total") == 0
    assert m.value("omnirelay_retries_total") == 0
    assert m.value("process_resident_memory_bytes") > 0


async def test_an_alias_is_its_own_request_model_label(start_server: StartServer, settings: Settings) -> None:
    """gen_ai_request_model is the (configured) name the caller asked for, alias or not."""
    client = await connect(start_server, settings)
    await client.complete(request("by its name", model="local-small"))
    await client.complete(request("by an alias", model="fast"))
    await client.complete(request("by the alias again", model="fast"))

    m = await scrape_when(client.app, lambda s: s.value(DURATION_COUNT) >= 3)

    assert m.value(REQUESTS, model="local-small", grpc_code="OK") == 3
    assert m.value(DURATION_COUNT, gen_ai_request_model="local-small") == 1
    assert m.value(DURATION_COUNT, gen_ai_request_model="fast") == 2
    assert m.value(DURATION_COUNT, gen_ai_response_model="local-small") == 3


# --- 2. Bounded labels: unknown models, no request ids -------------------------------------------


async def test_unknown_model_is_counted_as_other_and_ids_never_become_labels(
    start_server: StartServer, settings: Settings
) -> None:
    client = await connect(start_server, settings)
    unknown = "zz-unknown-model-4471"
    caller_id = "req-canary-8d1f02"
    error = await client.fail(request(model=unknown))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    failed_id = dict(error.trailing_metadata() or ())["x-request-id"]
    call = client.unary.Complete(request(), timeout=CALL_TIMEOUT, metadata=(("x-request-id", caller_id),))
    reply = await call
    assert reply.route.request_id == caller_id
    generated = await client.complete(request("a second good call"))
    ids = [str(failed_id), caller_id, generated.route.request_id]
    assert all(ids)

    m = await scrape_when(client.app, lambda s: s.value(REQUESTS) >= 3)

    assert m.value(REQUESTS) == 3
    assert m.value(REQUESTS, method="Complete", grpc_code="NOT_FOUND", model="other") == 1
    assert m.value(REQUESTS, grpc_code="NOT_FOUND") == 1
    assert m.value(REQUESTS, method="Complete", grpc_code="OK", model="local-small") == 2
    assert m.value(DURATION_COUNT, error_type="NOT_FOUND", gen_ai_request_model="other") == 1
    assert unknown not in m.text
    for rid in ids:
        assert rid not in m.text, f"request id {rid} appears in the metrics"


# --- 3. Fallbacks, retries, upstream errors -------------------------------------------------------


async def test_fallback_retry_and_upstream_errors_are_counted(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    retry_twice = RetrySettings(max_attempts=2, base_delay_seconds=0.0, max_delay_seconds=0.0)
    providers = [
        sim_provider("bad", sim),
        sim_provider("good", sim),
        sim_provider("flaky", sim, retry=retry_twice),
    ]
    models = [
        model("falls", ("bad", "first+fault=429"), ("good", "second")),
        model("retries", ("flaky", "third+fault=503+fail_first=1")),
    ]
    client = await connect(start_server, routed(settings, providers, models))

    fell = await client.complete(request(model="falls"))
    assert fell.route.fallback_used
    assert fell.route.deployment == "good/second"
    retried = await client.complete(request(model="retries"))
    assert not retried.route.fallback_used
    assert [a.deployment for a in retried.route.attempts] == ["flaky/third+fault=503+fail_first=1"] * 2

    m = await scrape_when(client.app, lambda s: s.value(REQUESTS) >= 2)

    assert m.value("omnirelay_fallbacks_total", model="falls") == 1
    assert m.value("omnirelay_fallbacks_total") == 1
    assert m.value("omnirelay_upstream_errors_total", provider="bad", **{"class": "rate_limited"}) == 1
    assert m.value("omnirelay_upstream_errors_total", provider="flaky", **{"class": "upstream_error"}) == 1
    assert m.value("omnirelay_upstream_errors_total") == 2
    assert m.value("omnirelay_retries_total", provider="flaky", model="retries") == 1
    assert m.value("omnirelay_retries_total") == 1
    # Each call is counted once, under the deployment that answered.
    assert m.value(REQUESTS, model="falls", provider="good", deployment="good/second", grpc_code="OK") == 1
    assert m.value(REQUESTS, model="retries", provider="flaky", grpc_code="OK") == 1
    assert m.value(REQUESTS) == 2
    assert len(sim.simulator.served) == 4


async def test_a_retry_is_counted_under_the_provider_it_retried(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    retry_twice = RetrySettings(max_attempts=2, base_delay_seconds=0.0, max_delay_seconds=0.0)
    providers = [sim_provider("flaky", sim, retry=retry_twice), sim_provider("good", sim)]
    models = [model("m", ("flaky", "down+fault=503"), ("good", "up"))]
    client = await connect(start_server, routed(settings, providers, models))

    reply = await client.complete(request(model="m"))
    # Retried once on flaky, then fell back to good.
    assert [a.provider for a in reply.route.attempts] == ["flaky", "flaky", "good"]

    m = await scrape_when(client.app, lambda s: s.value(REQUESTS) >= 1)

    assert m.value("omnirelay_upstream_errors_total", provider="flaky") == 2
    assert m.value("omnirelay_fallbacks_total", model="m") == 1
    assert m.value("omnirelay_retries_total") == 1
    assert m.value("omnirelay_retries_total", provider="flaky", model="m") == 1


# --- 4. Circuit breakers --------------------------------------------------------------------------


async def test_breaker_state_transitions_and_rejections(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    deployment = "p1/down+fault=503"
    s = routed(
        settings,
        [sim_provider("p1", sim)],
        [model("fragile", ("p1", "down+fault=503"))],
        breaker=BreakerSettings(failure_threshold=1, reset_timeout_seconds=60.0),
    )
    client = await connect(start_server, s)
    state = "omnirelay_breaker_state"
    transitions = "omnirelay_breaker_transitions_total"
    rejections = "omnirelay_breaker_rejections_total"

    before = await scrape(client.app)
    assert before.value(state, deployment=deployment, state="closed") == 1
    assert before.value(state, deployment=deployment, state="open") == 0
    assert before.value(transitions) == 0

    assert (await client.fail(request(model="fragile"))).code() == grpc.StatusCode.UNAVAILABLE
    opened = await scrape_when(client.app, lambda s: s.value(REQUESTS) >= 1)
    assert opened.value(state, deployment=deployment, state="open") == 1
    assert opened.value(state, deployment=deployment, state="closed") == 0
    assert opened.value(state, deployment=deployment) == 1  # exactly one state at a time
    assert opened.value(transitions, deployment=deployment, from_state="closed", to_state="open") == 1
    assert opened.value(transitions) == 1
    assert opened.value(rejections) == 0
    assert opened.value("omnirelay_upstream_errors_total", provider="p1") == 1

    rounds = 2
    for _ in range(rounds):
        assert (await client.fail(request(model="fragile"))).code() == grpc.StatusCode.UNAVAILABLE
    rejected = await scrape_when(client.app, lambda s: s.value(REQUESTS) >= 1 + rounds)
    assert rejected.value(rejections, deployment=deployment) == rounds
    # Rejected attempts are neither upstream errors nor upstream calls, and change no state.
    assert rejected.value("omnirelay_upstream_errors_total") == 1
    assert rejected.value(transitions) == 1
    assert rejected.value(REQUESTS, model="fragile", grpc_code="UNAVAILABLE") == 1 + rounds
    assert len(sim.simulator.served) == 1


# --- 5. Cost by project ---------------------------------------------------------------------------


async def test_cost_is_counted_by_project_and_projects_are_capped(
    start_server: StartServer, settings: Settings
) -> None:
    client = await connect(start_server, with_metrics(local(settings), max_projects=2))
    spent: dict[str, int] = {}
    projects = ["harbor", "beacon", "harbor", "quay", "quay", "harbor"]
    for i, project in enumerate(projects):
        req = request(f"what does call {i} of {project} cost " + "word " * i)
        req.attribution.project = project
        reply = await client.complete(req)
        assert reply.usage.cost_micros > 0
        spent[project] = spent.get(project, 0) + reply.usage.cost_micros
    # A project-less call costs too, under the empty project.
    unattributed = await client.complete(request("nobody pays for this one"))

    m = await scrape_when(client.app, lambda s: s.value(REQUESTS) >= len(projects) + 1)

    cost = "omnirelay_cost_usd_total"
    assert m.value(cost, model="local-small", project="harbor") == pytest.approx(spent["harbor"] / 1e6)
    assert m.value(cost, model="local-small", project="beacon") == pytest.approx(spent["beacon"] / 1e6)
    # The third distinct project is past max_projects=2.
    assert m.value(cost, model="local-small", project="other") == pytest.approx(spent["quay"] / 1e6)
    assert m.value(cost, project="") == pytest.approx(unattributed.usage.cost_micros / 1e6)
    assert m.label_values(cost, "project") == {"harbor", "beacon", "other", ""}
    assert "quay" not in m.text
    total = sum(spent.values()) + unattributed.usage.cost_micros
    assert m.value(cost) == pytest.approx(total / 1e6)


# --- 6. Cache -------------------------------------------------------------------------------------


async def test_cache_hit_and_miss_are_counted_with_the_saving(
    start_server: StartServer, settings: Settings
) -> None:
    client = await connect(start_server, local(settings))
    deterministic = request("the same question twice", temperature=0.0)
    first = await client.complete(deterministic)
    second = await client.complete(deterministic)
    assert first.route.cache == types_pb2.CACHE_OUTCOME_MISS
    assert second.route.cache == types_pb2.CACHE_OUTCOME_HIT
    assert first.usage.cost_micros > 0

    m = await scrape_when(client.app, lambda s: s.value(REQUESTS) >= 2)

    cache = "omnirelay_cache_requests_total"
    assert m.value(cache, model="local-small", outcome="miss") == 1
    assert m.value(cache, model="local-small", outcome="hit") == 1
    assert m.value(cache) == 2
    assert m.value("omnirelay_cache_stored_total") == 1
    # The hit saved what the miss cost upstream; only the miss was paid for.
    saved = m.value("omnirelay_cache_saved_usd_total", model="local-small")
    assert saved == pytest.approx(first.usage.cost_micros / 1e6)
    assert m.value("omnirelay_cost_usd_total") == pytest.approx(
        (first.usage.cost_micros + second.usage.cost_micros) / 1e6
    )


# --- 7. In-flight gauges --------------------------------------------------------------------------


async def test_in_flight_gauges_follow_open_calls(start_server: StartServer, settings: Settings) -> None:
    # 40 tokens a second: a 20-token answer takes half a second.
    client = await connect(start_server, local(settings, tokens_per_second=40.0))
    in_flight = "omnirelay_in_flight"

    idle = await scrape(client.app)
    assert idle.value(in_flight, kind="stream") == 0
    assert idle.value(in_flight, kind="unary") == 0

    call = client.streams.StreamComplete(stream_request("a slow story", max_tokens=20), timeout=CALL_TIMEOUT)
    first = await call.read()
    assert isinstance(first, stream_pb2.StreamCompleteResponse)
    during = await scrape(client.app)
    assert during.value(in_flight, kind="stream") == 1
    assert during.value(in_flight, kind="unary") == 0
    rest: list[object] = []
    await drain(call, rest)
    assert rest
    assert await call.code() == grpc.StatusCode.OK

    unary = asyncio.ensure_future(client.complete(request("a slow answer", max_tokens=20)))
    try:
        waiting = await scrape_when(client.app, lambda s: s.value(in_flight, kind="unary") >= 1)
        assert not unary.done()
        assert waiting.value(in_flight, kind="unary") == 1
        assert waiting.value(in_flight, kind="stream") == 0
    finally:
        await unary

    after = await scrape_when(client.app, lambda s: s.value(in_flight) == 0 and s.value(REQUESTS) >= 2)
    assert after.value(in_flight, kind="stream") == 0
    assert after.value(in_flight, kind="unary") == 0
    assert after.value(REQUESTS, method="StreamComplete") == 1
    assert after.value(REQUESTS, method="Complete") == 1


# --- 8. Usage records -----------------------------------------------------------------------------


async def test_usage_records_are_counted_from_queued_to_written(
    start_server: StartServer, settings: Settings
) -> None:
    client = await connect(start_server, settings)
    unary, streamed, failed = 4, 2, 1
    for i in range(unary):
        await client.complete(request(f"record me {i}"))
    for i in range(streamed):
        await client.stream(stream_request(f"record my stream {i}"))
    for _ in range(failed):
        await client.fail(request(model="zz-not-configured"))
    calls = unary + streamed + failed

    records = "omnirelay_usage_records_total"
    queued = await scrape_when(client.app, lambda s: s.value(records, state="queued") >= calls)
    assert queued.value(records, state="queued") == calls
    await client.app.usage.recorder.flush()
    m = await scrape(client.app)

    assert m.value(records, state="queued") == calls
    assert m.value(records, state="written") == m.value(records, state="queued")
    for state in ("spilled", "replayed", "lost"):
        assert m.value(records, state=state) == 0
    assert m.value("omnirelay_usage_queue_depth") == 0
    assert m.value("omnirelay_usage_ledger_up") == 1
    assert m.value("omnirelay_usage_write_failures_total") == 0
    assert m.value(REQUESTS) == calls


# --- 9. Switched off ------------------------------------------------------------------------------


async def test_metrics_disabled_builds_no_registry_and_no_listener(
    start_server: StartServer, settings: Settings
) -> None:
    client = await connect(start_server, with_metrics(settings, enabled=False))
    assert client.app.metrics is None
    assert client.app.admin is None
    # Calls are served as before.
    reply = await client.complete(request())
    assert reply.usage.output_tokens > 0
