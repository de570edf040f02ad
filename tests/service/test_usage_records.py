"""Every call leaves exactly one usage record, with its attempts, tokens and exact cost.

Over a real channel to an in-process server whose ledger is SQLite in the
test's directory; upstreams are the local provider and the simulator.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from fractions import Fraction

import grpc
import pytest

from omnirelay.app import App
from omnirelay.config import LocalProviderSettings, Settings
from omnirelay.config.routing import PricingSettings, RoutingSettings
from omnirelay.providers import tokenizer
from omnirelay.sim.server import RunningSim, start
from omnirelay.usage.ledger import UsageQuery
from omnirelay.usage.records import UsageRecord
from omnirelay_client.v1 import completion_pb2, completion_pb2_grpc, stream_pb2, stream_pb2_grpc, types_pb2
from tests.conftest import StartServer
from tests.helpers import request, stream_request, user
from tests.routing_helpers import model, routed, sim_provider

# Awkward prices so that every token kind and the rounding matter.
PRICE = PricingSettings(input=2.5, output=10.0, cached_input=1.25, source="test", as_of="2026-11-01")
PROMPT = "count the lighthouses along the northern coast"


@pytest.fixture
async def sim() -> AsyncIterator[RunningSim]:
    running = await start()
    yield running
    await running.stop()


async def records_of(app: App) -> list[UsageRecord]:
    await app.usage.recorder.flush()
    return [r async for r in app.usage.ledger.records(UsageQuery())]


def expected_cost(input_tokens: int, output_tokens: int, price: PricingSettings = PRICE) -> int:
    """Micro-USD, computed apart from the gateway: tokens x USD per million, rounded half up."""
    exact = Fraction(str(price.input)) * input_tokens + Fraction(str(price.output)) * output_tokens
    return int(exact + Fraction(1, 2))


def priced_local(settings: Settings, **local: float) -> Settings:
    """The local provider, slowed as asked, and local-small priced at PRICE."""
    provider = settings.providers["local"]
    assert isinstance(provider, LocalProviderSettings)
    small = dataclasses.replace(settings.models["local-small"], pricing=PRICE)
    return dataclasses.replace(
        settings,
        providers={**settings.providers, "local": dataclasses.replace(provider, **local)},  # type: ignore[arg-type]
        models={**settings.models, "local-small": small},
    )


async def test_unary_call_leaves_one_record_with_exact_cost(
    start_server: StartServer, settings: Settings
) -> None:
    app, channel = await start_server(priced_local(settings))
    req = request(PROMPT)
    req.attribution.project = "harbor"
    req.attribution.user = "ana"
    req.attribution.tags["feature"] = "search"
    metadata = (("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),)
    reply = await completion_pb2_grpc.CompletionServiceStub(channel).Complete(req, metadata=metadata)
    cost = expected_cost(reply.usage.input_tokens, reply.usage.output_tokens)
    assert cost > 0
    assert reply.usage.cost_micros == cost

    (record,) = await records_of(app)
    assert record.request_id == reply.route.request_id
    assert record.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert (record.project, record.user, record.tags) == ("harbor", "ana", (("feature", "search"),))
    assert (record.requested_model, record.resolved_model) == ("local-small", "local-small")
    assert (record.provider, record.deployment) == ("local", "local/small")
    assert record.status_code == 0
    assert not record.streamed
    assert record.usage.input_tokens == reply.usage.input_tokens
    assert record.usage.output_tokens == reply.usage.output_tokens
    assert record.usage.cost_micros == cost
    assert not record.usage.estimated
    assert record.price_table_version == app.prices.version
    assert [(a.deployment, a.outcome, a.usage.cost_micros) for a in record.attempts] == [
        ("local/small", "success", cost)
    ]
    assert record.latency_seconds > 0


async def test_streamed_call_is_billed_from_the_providers_usage_report(
    start_server: StartServer, settings: Settings
) -> None:
    app, channel = await start_server(priced_local(settings))
    events = [
        e
        async for e in stream_pb2_grpc.StreamCompletionServiceStub(channel).StreamComplete(
            stream_request(PROMPT)
        )
    ]
    (usage_event,) = [e.usage for e in events if e.HasField("usage")]
    cost = expected_cost(usage_event.input_tokens, usage_event.output_tokens)
    assert usage_event.cost_micros == cost > 0
    (record,) = await records_of(app)
    assert record.streamed
    assert record.status_code == 0
    assert record.usage.cost_micros == cost
    assert not record.usage.estimated
    assert record.ttft_seconds is not None
    assert 0 < record.ttft_seconds <= record.latency_seconds


async def test_failed_call_leaves_a_record_with_its_status(
    start_server: StartServer, settings: Settings
) -> None:
    app, channel = await start_server(settings)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await completion_pb2_grpc.CompletionServiceStub(channel).Complete(request(model="no-such-model"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    (record,) = await records_of(app)
    assert record.status_code == grpc.StatusCode.NOT_FOUND.value[0]
    assert record.requested_model == "no-such-model"
    assert record.usage.cost_micros == 0
    assert record.attempts == ()


async def test_cancelled_stream_is_billed_on_an_estimate_of_what_was_delivered(
    start_server: StartServer, settings: Settings
) -> None:
    # 20 tokens a second, 400 asked for: the caller leaves long before the provider's usage report.
    app, channel = await start_server(priced_local(settings, tokens_per_second=20.0))
    call = stream_pb2_grpc.StreamCompletionServiceStub(channel).StreamComplete(
        stream_request(PROMPT, max_tokens=400)
    )
    delivered: list[str] = []
    async for event in call:
        if event.HasField("text_delta"):
            delivered.append(event.text_delta.text)
            if len(delivered) == 5:
                break
    call.cancel()
    for _ in range(100):
        await asyncio.sleep(0.02)
        found = await records_of(app)
        if found:
            break
    (record,) = found
    assert record.status_code == grpc.StatusCode.CANCELLED.value[0]
    assert record.usage.estimated
    assert record.usage.input_tokens == tokenizer.count_text(PROMPT) + tokenizer.PER_MESSAGE_OVERHEAD
    # What reached the caller is counted (a few more may have been sent before the cancel landed).
    assert tokenizer.count_text(" ".join(delivered)) <= record.usage.output_tokens < 400
    assert record.usage.cost_micros == expected_cost(record.usage.input_tokens, record.usage.output_tokens)
    assert record.attempts[-1].outcome == "cancelled"


async def test_broken_stream_is_billed_on_an_estimate(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    broken = "alpha+fault=drop+after=4"
    s = routed(settings, [sim_provider("sim-a", sim)], [model("routed", ("sim-a", broken), pricing=PRICE)])
    app, channel = await start_server(s)
    call = stream_pb2_grpc.StreamCompletionServiceStub(channel).StreamComplete(
        stream_pb2.StreamCompleteRequest(
            request=completion_pb2.CompleteRequest(model="routed", messages=[user(PROMPT)])
        )
    )
    delivered: list[str] = []

    async def read() -> None:
        async for event in call:
            if event.HasField("text_delta"):
                delivered.append(event.text_delta.text)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await read()
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    (record,) = await records_of(app)
    assert record.status_code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert record.usage.estimated
    assert record.usage.output_tokens == tokenizer.count_text(" ".join(delivered)) > 0
    (attempt,) = record.attempts
    assert attempt.outcome == "stream_broken"
    assert attempt.usage == record.usage
    assert record.usage.cost_micros == expected_cost(record.usage.input_tokens, record.usage.output_tokens)


async def test_mid_stream_fallback_bills_both_attempts(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    a_model = "alpha+fault=drop+after=3"
    s = routed(
        settings,
        [sim_provider("sim-a", sim), sim_provider("sim-b", sim)],
        [model("routed", ("sim-a", a_model), ("sim-b", "beta"), pricing=PRICE)],
        routing=RoutingSettings(stream_recovery="continue"),
    )
    app, channel = await start_server(s)
    events = [
        e
        async for e in stream_pb2_grpc.StreamCompletionServiceStub(channel).StreamComplete(
            stream_pb2.StreamCompleteRequest(
                request=completion_pb2.CompleteRequest(model="routed", messages=[user(PROMPT)])
            )
        )
    ]
    (usage_event,) = [e.usage for e in events if e.HasField("usage")]
    (record,) = await records_of(app)
    first, second = record.attempts
    assert (first.deployment, first.outcome) == (f"sim-a/{a_model}", "stream_broken")
    assert (second.deployment, second.outcome) == ("sim-b/beta", "success")
    # The abandoned attempt: the prompt and the three delivered pieces, estimated.
    assert first.usage.estimated
    assert first.usage.output_tokens > 0
    assert first.usage.input_tokens > 0
    assert first.usage.cost_micros == expected_cost(first.usage.input_tokens, first.usage.output_tokens)
    # The continuation: the simulator's own report.
    assert not second.usage.estimated
    assert second.usage.cost_micros == expected_cost(second.usage.input_tokens, second.usage.output_tokens)
    # The call: both, as the caller was told in its usage event.
    assert record.usage.cost_micros == first.usage.cost_micros + second.usage.cost_micros
    assert record.usage.input_tokens == first.usage.input_tokens + second.usage.input_tokens
    assert record.usage.output_tokens == first.usage.output_tokens + second.usage.output_tokens
    assert record.usage.estimated
    assert (usage_event.cost_micros, usage_event.output_tokens) == (
        record.usage.cost_micros,
        record.usage.output_tokens,
    )
    assert record.fallback_used


async def test_unary_fallback_records_every_attempt(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    s = routed(
        settings,
        [sim_provider("sim-a", sim), sim_provider("sim-b", sim)],
        [model("routed", ("sim-a", "alpha+fault=503"), ("sim-b", "beta"), pricing=PRICE)],
    )
    app, channel = await start_server(s)
    reply = await completion_pb2_grpc.CompletionServiceStub(channel).Complete(
        completion_pb2.CompleteRequest(model="routed", messages=[user(PROMPT)])
    )
    (record,) = await records_of(app)
    assert [(a.deployment, a.outcome) for a in record.attempts] == [
        ("sim-a/alpha+fault=503", "upstream_error"),
        ("sim-b/beta", "success"),
    ]
    assert record.attempts[0].usage.cost_micros == 0
    assert record.usage.cost_micros == reply.usage.cost_micros > 0
    assert record.fallback_used
    assert record.deployment == "sim-b/beta"


async def test_cache_hit_records_no_cost_and_the_cost_saved(
    start_server: StartServer, settings: Settings
) -> None:
    app, channel = await start_server(priced_local(settings))
    stub = completion_pb2_grpc.CompletionServiceStub(channel)
    first = await stub.Complete(request(PROMPT, temperature=0.0))
    second = await stub.Complete(request(PROMPT, temperature=0.0))
    assert second.route.cache == types_pb2.CACHE_OUTCOME_HIT
    miss, hit = sorted(await records_of(app), key=lambda r: r.time)
    assert (miss.cache, hit.cache) == ("miss", "hit")
    assert miss.usage.cost_micros == first.usage.cost_micros > 0
    assert hit.usage.cost_micros == 0
    assert hit.attempts == ()
    assert hit.saved_cost_micros == first.usage.cost_micros
    assert hit.usage.output_tokens == first.usage.output_tokens
    assert (hit.resolved_model, hit.deployment) == ("local-small", "local/small")


async def test_coalesced_calls_each_leave_a_record_and_only_the_leader_pays(
    start_server: StartServer, settings: Settings
) -> None:
    app, channel = await start_server(priced_local(settings, ttft_ms=200.0))
    stub = completion_pb2_grpc.CompletionServiceStub(channel)
    replies = await asyncio.gather(*(stub.Complete(request(PROMPT, temperature=0.0)) for _ in range(10)))
    records = await records_of(app)
    assert len(records) == 10
    assert sorted(r.request_id for r in records) == sorted(r.route.request_id for r in replies)
    paid = [r for r in records if r.usage.cost_micros]
    assert len(paid) == 1
    assert paid[0].cache == "miss"
    followers = [r for r in records if r.cache == "coalesced"]
    assert len(followers) == 9
    assert all(f.saved_cost_micros == paid[0].usage.cost_micros for f in followers)


async def test_one_record_per_call_under_500_concurrent_calls(
    start_server: StartServer, settings: Settings
) -> None:
    app, channel = await start_server(priced_local(settings, ttft_ms=5.0))
    unary = completion_pb2_grpc.CompletionServiceStub(channel)
    streaming = stream_pb2_grpc.StreamCompletionServiceStub(channel)

    async def one(i: int) -> str:
        if i % 2:
            reply = await unary.Complete(request(f"{PROMPT} {i}"))
            return reply.route.request_id
        events = [e async for e in streaming.StreamComplete(stream_request(f"{PROMPT} {i}"))]
        return events[-1].done.route.request_id

    ids = await asyncio.gather(*(one(i) for i in range(500)))
    records = await records_of(app)
    assert len(records) == 500
    assert sorted(r.request_id for r in records) == sorted(ids)
    assert len({r.record_id for r in records}) == 500
    assert sum(r.streamed for r in records) == 250
    assert app.usage.recorder.counters.spilled == 0


async def test_records_survive_graceful_shutdown(start_server: StartServer, settings: Settings) -> None:
    """Shutdown writes every queued record: nothing is waiting for the next flush interval."""
    slow_flush = dataclasses.replace(
        settings,
        usage=dataclasses.replace(
            settings.usage, recorder=dataclasses.replace(settings.usage.recorder, flush_interval_seconds=60.0)
        ),
    )
    app, channel = await start_server(slow_flush)
    stub = completion_pb2_grpc.CompletionServiceStub(channel)
    for i in range(7):
        await stub.Complete(request(f"{PROMPT} {i}"))
    assert app.usage.recorder.counters.written == 0
    await app.shutdown(grace=1.0)
    from omnirelay.usage.sqlite import SqliteLedger

    ledger = SqliteLedger(settings.usage.sqlite_path)
    await ledger.open()
    try:
        assert await ledger.count(UsageQuery()) == 7
    finally:
        await ledger.close()


async def test_a_leader_that_leaves_still_pays_for_the_flight_its_followers_use(
    start_server: StartServer, settings: Settings
) -> None:
    app, channel = await start_server(priced_local(settings, ttft_ms=300.0))
    stub = completion_pb2_grpc.CompletionServiceStub(channel)
    leader = stub.Complete(request(PROMPT, temperature=0.0))
    await asyncio.sleep(0.1)
    follower = asyncio.ensure_future(stub.Complete(request(PROMPT, temperature=0.0)))
    await asyncio.sleep(0.05)
    leader.cancel()
    answer = await follower
    assert answer.route.cache == types_pb2.CACHE_OUTCOME_COALESCED
    for _ in range(50):
        records = await records_of(app)
        if len(records) == 2:
            break
        await asyncio.sleep(0.02)
    by_cache = {r.cache: r for r in records}
    assert set(by_cache) == {"miss", "coalesced"}
    left = by_cache["miss"]
    assert left.status_code == grpc.StatusCode.CANCELLED.value[0]
    # The upstream call finished for the follower after the leader left; its cost is on the leader.
    assert [a.outcome for a in left.attempts] == ["success"]
    assert left.usage.cost_micros == expected_cost(answer.usage.input_tokens, answer.usage.output_tokens) > 0
    assert by_cache["coalesced"].usage.cost_micros == 0


async def test_coalesced_streams_record_the_answers_tokens_and_the_cost_saved(
    start_server: StartServer, settings: Settings
) -> None:
    app, channel = await start_server(priced_local(settings, ttft_ms=200.0))
    stub = stream_pb2_grpc.StreamCompletionServiceStub(channel)

    async def one() -> list[stream_pb2.StreamCompleteResponse]:
        return [e async for e in stub.StreamComplete(stream_request(PROMPT, temperature=0.0))]

    answers = await asyncio.gather(*(one() for _ in range(5)))
    (usage,) = {e.usage.output_tokens for a in answers for e in a if e.HasField("usage")}
    records = await records_of(app)
    assert len(records) == 5
    (paid,) = [r for r in records if r.cache == "miss"]
    followers = [r for r in records if r.cache == "coalesced"]
    assert len(followers) == 4
    assert paid.usage.cost_micros == expected_cost(paid.usage.input_tokens, paid.usage.output_tokens) > 0
    for f in followers:
        assert f.streamed
        assert f.usage.cost_micros == 0
        assert f.usage.output_tokens == paid.usage.output_tokens == usage
        assert f.saved_cost_micros == paid.usage.cost_micros
