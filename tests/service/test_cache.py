"""The response cache end to end: gRPC client → cache layer → router → real HTTP → the simulator.

The simulator's record (``served``) counts the upstream calls: a hit or a coalesced call must
not add one. Its answers depend only on the provider model and the prompt, so two upstream
calls for one request give the same text; a test that must tell a stored answer from a fresh
one does it by TTL or by the store's counters.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from google.protobuf import json_format, struct_pb2
from grpc import aio

from omnirelay import app as app_module
from omnirelay.app import App
from omnirelay.cache import layer as cache_layer
from omnirelay.cache.keys import cache_key
from omnirelay.cache.stores import MemoryStore
from omnirelay.config import ModelSettings, Settings
from omnirelay.config.cache import ModelCacheSettings
from omnirelay.sim.server import RunningSim, start
from omnirelay_client.v1 import (
    cache_pb2,
    cache_pb2_grpc,
    completion_pb2,
    completion_pb2_grpc,
    stream_pb2,
    stream_pb2_grpc,
    types_pb2,
)
from tests.conftest import StartServer
from tests.helpers import drain, text, user
from tests.routing_helpers import model, routed, sim_provider

if TYPE_CHECKING:
    from omnirelay_client.v1.cache_pb2_grpc import CacheServiceAsyncStub
    from omnirelay_client.v1.completion_pb2_grpc import CompletionServiceAsyncStub
    from omnirelay_client.v1.stream_pb2_grpc import StreamCompletionServiceAsyncStub

PROMPT = "tell me about the harbor relays"
CALL_TIMEOUT = 15.0
Event = stream_pb2.StreamCompleteResponse
Mode = types_pb2.CacheOptions
HIT = types_pb2.CACHE_OUTCOME_HIT
MISS = types_pb2.CACHE_OUTCOME_MISS
COALESCED = types_pb2.CACHE_OUTCOME_COALESCED
BYPASS = types_pb2.CACHE_OUTCOME_BYPASS
REFRESH = types_pb2.CACHE_OUTCOME_REFRESH

# Model name → provider model on the simulator (its +options set latency and faults).
MODELS = {
    "cached": "answerer",
    "other": "other-answerer",
    "slow": "answerer+ttft=300",
    "slower": "answerer+ttft=600",
    "paced": "answerer+ttft=150+itl=25",
    "endless": "answerer+itl=40+tokens=400",
    "long": "answerer+tokens=400",
    "hanging": "answerer+fault=hang",
    "broken": "answerer+fault=503+ttft=300",
    "dropping": "answerer+fault=drop+after=2",
    "filtered": "answerer+fault=filter",
}


@pytest.fixture
async def sim() -> AsyncIterator[RunningSim]:
    running = await start()
    yield running
    await running.stop()


@dataclass
class Gateway:
    app: App
    sim: RunningSim
    unary: CompletionServiceAsyncStub
    streams: StreamCompletionServiceAsyncStub
    admin: CacheServiceAsyncStub

    @property
    def upstream(self) -> int:
        """Completions the simulator has been asked for so far."""
        return len(self.sim.simulator.served)

    async def stats(self) -> cache_pb2.GetCacheStatsResponse:
        return await self.admin.GetCacheStats(cache_pb2.GetCacheStatsRequest(), timeout=CALL_TIMEOUT)

    async def complete(self, request: completion_pb2.CompleteRequest, rid: str = "") -> Answer:
        metadata = (("x-request-id", rid),) if rid else None
        call = self.unary.Complete(request, timeout=CALL_TIMEOUT, metadata=metadata)
        response = await call
        return Answer(response, dict(await call.trailing_metadata()))

    async def stream(self, request: completion_pb2.CompleteRequest, rid: str = "") -> Streamed:
        metadata = (("x-request-id", rid),) if rid else None
        call = self.streams.StreamComplete(
            stream_pb2.StreamCompleteRequest(request=request), timeout=CALL_TIMEOUT, metadata=metadata
        )
        events = [e async for e in call]
        return Streamed(events, dict(await call.trailing_metadata()))


@dataclass
class Answer:
    response: completion_pb2.CompleteResponse
    trailers: dict[str, Any]

    @property
    def outcome(self) -> int:
        return self.response.route.cache

    @property
    def text(self) -> str:
        return text(self.response)


@dataclass
class Streamed:
    events: list[Event]
    trailers: dict[str, Any]

    @property
    def kinds(self) -> list[str]:
        return [str(e.WhichOneof("event")) for e in self.events]

    @property
    def deltas(self) -> list[str]:
        return [e.text_delta.text for e in self.events if e.HasField("text_delta")]

    @property
    def text(self) -> str:
        return "".join(self.deltas)

    @property
    def route(self) -> types_pb2.RouteFacts:
        assert self.events[-1].HasField("done"), self.kinds
        return self.events[-1].done.route

    @property
    def outcome(self) -> int:
        return self.route.cache


def ask(
    prompt: str = PROMPT,
    model_name: str = "cached",
    *,
    mode: int = Mode.MODE_UNSPECIFIED,
    ttl: float | None = None,
    temperature: float | None = 0.0,
    **sampling: Any,
) -> completion_pb2.CompleteRequest:
    """A request; deterministic (temperature 0, so cacheable by default) unless told otherwise."""
    params = types_pb2.SamplingParams(**sampling)
    if temperature is not None:
        params.temperature = temperature
    request = completion_pb2.CompleteRequest(model=model_name, messages=[user(prompt)], sampling=params)
    if mode:
        request.cache.mode = mode  # type: ignore[assignment]
    if ttl is not None:
        request.cache.ttl.seconds = int(ttl)
        request.cache.ttl.nanos = round((ttl - int(ttl)) * 1e9)
    return request


def sim_models(
    names: Iterable[str] = MODELS, cache: dict[str, ModelCacheSettings] | None = None
) -> list[ModelSettings]:
    policies = cache or {}
    out = []
    for name in names:
        m = model(name, ("sim", MODELS[name]), aliases=(f"{name}-alias",))
        if name in policies:
            m = dataclasses.replace(m, cache=policies[name])
        out.append(m)
    return out


async def gateway(
    start_server: StartServer,
    settings: Settings,
    sim: RunningSim,
    *,
    cache: dict[str, Any] | None = None,
    policies: dict[str, ModelCacheSettings] | None = None,
) -> Gateway:
    """A gateway whose models (see MODELS) are served by the simulator, with these cache settings."""
    configured = routed(settings, [sim_provider("sim", sim)], sim_models(cache=policies))
    if cache:
        configured = dataclasses.replace(configured, cache=dataclasses.replace(configured.cache, **cache))
    app, channel = await start_server(configured)
    return Gateway(
        app,
        sim,
        completion_pb2_grpc.CompletionServiceStub(channel),
        stream_pb2_grpc.StreamCompletionServiceStub(channel),
        cache_pb2_grpc.CacheServiceStub(channel),
    )


async def until(condition: Callable[[], bool], what: str, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.01)


def outcomes(results: Sequence[Answer | Streamed]) -> list[int]:
    return [r.outcome for r in results]


def tool_request(prompt: str = PROMPT) -> completion_pb2.CompleteRequest:
    request = ask(prompt)
    schema = json_format.Parse(
        '{"type": "object", "properties": {"query": {"type": "string"}}}', struct_pb2.Struct()
    )
    request.tools.add(name="search", description="search the harbor", parameters=schema)
    request.tool_choice.mode = types_pb2.ToolChoice.MODE_FUNCTION
    request.tool_choice.name = "search"
    return request


# --- miss, then hit -----------------------------------------------------------------------------------


async def test_miss_then_hit_without_a_second_upstream_call(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    gw = await gateway(start_server, settings, sim)
    first = await gw.complete(ask(), rid="miss-1")
    assert gw.upstream == 1
    assert first.outcome == MISS
    assert first.trailers["x-omnirelay-cache"] == "miss"
    assert first.text
    second = await gw.complete(ask(), rid="hit-1")
    assert gw.upstream == 1
    assert second.outcome == HIT
    assert second.trailers["x-omnirelay-cache"] == "hit"
    assert second.trailers["x-request-id"] == "hit-1"
    assert list(second.response.choices) == list(first.response.choices)
    assert second.response.choices[0].finish_reason == types_pb2.FINISH_REASON_STOP
    # The answer's tokens are kept; nothing was spent upstream.
    assert second.response.usage.input_tokens == first.response.usage.input_tokens > 0
    assert second.response.usage.output_tokens == first.response.usage.output_tokens > 0
    assert second.response.usage.cost_micros == 0
    route = second.response.route
    assert (route.requested_model, route.resolved_model, route.provider) == ("cached", "cached", "sim")
    assert route.deployment == first.response.route.deployment
    assert route.request_id == "hit-1"
    assert not route.attempts


async def test_an_alias_hits_the_answer_stored_under_the_canonical_name(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    gw = await gateway(start_server, settings, sim)
    first = await gw.complete(ask())
    by_alias = await gw.complete(ask(model_name="cached-alias"))
    assert by_alias.outcome == HIT
    assert gw.upstream == 1
    assert by_alias.text == first.text
    assert by_alias.response.route.requested_model == "cached-alias"
    assert by_alias.response.route.resolved_model == "cached"


async def test_tenants_have_their_own_answers_but_other_attribution_does_not_matter(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    gw = await gateway(start_server, settings, sim)
    acme = ask()
    acme.attribution.project = "acme"
    globex = ask()
    globex.attribution.project = "globex"
    assert (await gw.complete(acme)).outcome == MISS
    assert (await gw.complete(globex)).outcome == MISS
    assert gw.upstream == 2
    acme_again = ask()
    acme_again.attribution.project = "acme"
    acme_again.attribution.user = "someone-else"
    acme_again.attribution.tags["feature"] = "search"
    acme_again.routing.sticky_key = "k"
    assert (await gw.complete(acme_again)).outcome == HIT
    assert gw.upstream == 2


# --- cache options ------------------------------------------------------------------------------------


async def test_bypass_goes_upstream_every_time_and_stores_nothing(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    gw = await gateway(start_server, settings, sim)
    for expected_upstream in (1, 2):
        answer = await gw.complete(ask(mode=Mode.MODE_BYPASS))
        assert answer.outcome == BYPASS
        assert gw.upstream == expected_upstream
    stats = await gw.stats()
    assert (stats.bypassed, stats.stored, stats.entries) == (2, 0, 0)
    # Nothing was stored: the same request without BYPASS is a miss.
    assert (await gw.complete(ask())).outcome == MISS
    assert gw.upstream == 3
    # And once stored, BYPASS still does not read it.
    assert (await gw.complete(ask(mode=Mode.MODE_BYPASS))).outcome == BYPASS
    assert gw.upstream == 4


async def test_a_bypassed_stream_reports_bypass_like_a_bypassed_unary_call(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    gw = await gateway(start_server, settings, sim)
    unary = await gw.complete(ask(mode=Mode.MODE_BYPASS))
    streamed = await gw.stream(ask(mode=Mode.MODE_BYPASS))
    assert gw.upstream == 2
    assert streamed.text == unary.text
    assert unary.outcome == BYPASS
    assert streamed.outcome == BYPASS, (
        "the done event of a MODE_BYPASS stream should say CACHE_OUTCOME_BYPASS"
    )


async def test_refresh_goes_upstream_and_replaces_the_stored_answer(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    gw = await gateway(start_server, settings, sim)
    # The first answer is stored briefly; the refreshed one for a minute.
    first = await gw.complete(ask(ttl=0.4))
    assert first.outcome == MISS
    assert (await gw.complete(ask())).outcome == HIT
    refreshed = await gw.complete(ask(mode=Mode.MODE_REFRESH, ttl=60))
    assert refreshed.outcome == REFRESH
    assert refreshed.trailers["x-omnirelay-cache"] == "refresh"
    assert gw.upstream == 2
    assert refreshed.text == first.text
    await until(lambda: gw.app.cache is not None and gw.app.cache.counters.stored == 2, "the refresh's write")
    stats = await gw.stats()
    assert stats.entries == 1
    # Past the first answer's TTL the refreshed one is still there: it replaced the first.
    await asyncio.sleep(0.6)
    later = await gw.complete(ask())
    assert later.outcome == HIT
    assert later.text == first.text
    assert gw.upstream == 2


async def test_a_refreshed_stream_replaces_the_stored_answer(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    gw = await gateway(start_server, settings, sim)
    assert (await gw.stream(ask(ttl=0.4))).outcome == MISS
    refreshed = await gw.stream(ask(mode=Mode.MODE_REFRESH, ttl=60))
    assert refreshed.outcome == REFRESH
    assert gw.upstream == 2
    await asyncio.sleep(0.6)
    assert (await gw.stream(ask())).outcome == HIT
    assert gw.upstream == 2


async def test_only_if_cached_is_not_found_on_a_miss_and_answers_a_hit(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    gw = await gateway(start_server, settings, sim)
    with pytest.raises(aio.AioRpcError) as unary_miss:
        await gw.complete(ask(mode=Mode.MODE_ONLY_IF_CACHED))
    assert unary_miss.value.code() == grpc.StatusCode.NOT_FOUND
    assert "ONLY_IF_CACHED" in (unary_miss.value.details() or "")
    with pytest.raises(aio.AioRpcError) as stream_miss:
        await gw.stream(ask(mode=Mode.MODE_ONLY_IF_CACHED))
    assert stream_miss.value.code() == grpc.StatusCode.NOT_FOUND
    assert gw.upstream == 0
    stored = await gw.complete(ask())
    assert gw.upstream == 1
    hit = await gw.complete(ask(mode=Mode.MODE_ONLY_IF_CACHED))
    assert hit.outcome == HIT
    assert hit.text == stored.text
    streamed = await gw.stream(ask(mode=Mode.MODE_ONLY_IF_CACHED))
    assert streamed.outcome == HIT
    assert streamed.text == stored.text
    assert gw.upstream == 1


async def test_only_if_cached_on_a_model_with_caching_off_is_not_found_without_an_upstream_call(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    gw = await gateway(start_server, settings, sim, policies={"cached": ModelCacheSettings(enabled=False)})
    with pytest.raises(aio.AioRpcError) as missed:
        await gw.complete(ask(mode=Mode.MODE_ONLY_IF_CACHED))
    assert missed.value.code() == grpc.StatusCode.NOT_FOUND
    assert gw.upstream == 0


# --- TTLs ---------------------------------------------------------------------------------------------


async def test_an_answer_expires_after_the_requested_ttl(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    gw = await gateway(start_server, settings, sim)
    assert (await gw.complete(ask(ttl=0.3))).outcome == MISS
    assert (await gw.complete(ask())).outcome == HIT
    await asyncio.sleep(0.45)
    assert (await gw.complete(ask())).outcome == MISS
    assert gw.upstream == 2


async def test_a_requested_ttl_is_capped_by_max_ttl_seconds(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    gw = await gateway(
        start_server, settings, sim, cache={"max_ttl_seconds": 0.3, "default_ttl_seconds": 0.3}
    )
    assert (await gw.complete(ask(ttl=3600))).outcome == MISS
    assert (await gw.complete(ask())).outcome == HIT
    await asyncio.sleep(0.45)
    assert (await gw.complete(ask())).outcome == MISS
    assert gw.upstream == 2


async def test_a_models_ttl_applies_when_the_request_sets_none(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    gw = await gateway(start_server, settings, sim, policies={"cached": ModelCacheSettings(ttl_seconds=0.3)})
    assert (await gw.complete(ask())).outcome == MISS
    assert (await gw.complete(ask())).outcome == HIT
    await asyncio.sleep(0.45)
    assert (await gw.complete(ask())).outcome == MISS
    # The request's own TTL wins over the model's.
    assert (await gw.complete(ask("another prompt", ttl=60))).outcome == MISS
    await asyncio.sleep(0.45)
    assert (await gw.complete(ask("another prompt"))).outcome == HIT
    assert gw.upstream == 3


# --- policy -------------------------------------------------------------------------------------------


async def test_a_sampled_request_is_not_cached_unless_asked(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    gw = await gateway(start_server, settings, sim)
    for n in (1, 2):
        answer = await gw.complete(ask(temperature=0.7))
        assert answer.outcome == BYPASS
        assert gw.upstream == n
    # No temperature at all is sampled too.
    assert (await gw.complete(ask("no temperature", temperature=None))).outcome == BYPASS
    assert (await gw.complete(ask("no temperature", temperature=None))).outcome == BYPASS
    assert gw.upstream == 4
    # MODE_USE opts in.
    assert (await gw.complete(ask(temperature=0.7, mode=Mode.MODE_USE))).outcome == MISS
    assert (await gw.complete(ask(temperature=0.7, mode=Mode.MODE_USE))).outcome == HIT
    assert gw.upstream == 5
    # A seed makes a sampled request deterministic.
    assert (await gw.complete(ask("seeded", temperature=0.9, seed=11))).outcome == MISS
    assert (await gw.complete(ask("seeded", temperature=0.9, seed=11))).outcome == HIT
    assert gw.upstream == 6
    stats = await gw.stats()
    assert stats.bypassed == 4


async def test_model_policy_nondeterministic_and_disabled(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    gw = await gateway(
        start_server,
        settings,
        sim,
        policies={
            "cached": ModelCacheSettings(nondeterministic=True),
            "other": ModelCacheSettings(enabled=False),
        },
    )
    assert (await gw.complete(ask(temperature=0.7))).outcome == MISS
    assert (await gw.complete(ask(temperature=0.7))).outcome == HIT
    assert gw.upstream == 1
    for n in (2, 3):
        answer = await gw.complete(ask(model_name="other", mode=Mode.MODE_USE))
        assert answer.outcome == BYPASS
        assert gw.upstream == n


# --- streams ------------------------------------------------------------------------------------------


async def test_a_cached_stream_is_replayed_with_the_same_chunking(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    gw = await gateway(start_server, settings, sim)
    first = await gw.stream(ask(), rid="s-miss")
    assert first.outcome == MISS
    assert first.trailers["x-omnirelay-cache"] == "miss"
    assert len(first.deltas) == 12
    replay = await gw.stream(ask(), rid="s-hit")
    assert gw.upstream == 1
    assert replay.kinds[0] == "route_started"
    assert replay.kinds[-1] == "done"
    assert replay.deltas == first.deltas
    # Everything between the route events is the stored answer, as it came: deltas, finish, usage.
    assert replay.events[1:-1] == first.events[1:-1]
    assert replay.kinds.count("route_started") == 1
    started = replay.events[0].route_started
    assert (started.model, started.provider, started.deployment) == (
        first.events[0].route_started.model,
        first.events[0].route_started.provider,
        first.events[0].route_started.deployment,
    )
    route = replay.route
    assert route.cache == HIT
    assert route.request_id == "s-hit"
    assert route.resolved_model == "cached"
    assert route.provider == "sim"
    assert replay.trailers["x-omnirelay-cache"] == "hit"
    usage = [e.usage for e in replay.events if e.HasField("usage")]
    assert len(usage) == 1
    assert usage[0].output_tokens == 12
    assert usage[0].cost_micros == 0


async def test_unary_is_served_from_a_cached_stream_and_a_stream_from_a_cached_unary_answer(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    gw = await gateway(start_server, settings, sim)
    streamed = await gw.stream(ask("streamed first"))
    unary_hit = await gw.complete(ask("streamed first"))
    assert unary_hit.outcome == HIT
    assert unary_hit.text == streamed.text
    assert unary_hit.response.choices[0].finish_reason == types_pb2.FINISH_REASON_STOP
    assert unary_hit.response.usage.output_tokens == 12
    assert gw.upstream == 1

    unary = await gw.complete(ask("unary first"))
    stream_hit = await gw.stream(ask("unary first"))
    assert stream_hit.outcome == HIT
    assert stream_hit.text == unary.text
    assert stream_hit.kinds[0] == "route_started"
    assert stream_hit.kinds[-3:] == ["finish", "usage", "done"]
    assert gw.upstream == 2


async def test_tool_calls_are_served_across_both_shapes(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    gw = await gateway(start_server, settings, sim)
    streamed = await gw.stream(tool_request("stream the tool call"))
    assert streamed.kinds.count("tool_call_delta") > 1  # the arguments came in pieces
    arguments = "".join(
        e.tool_call_delta.arguments_delta for e in streamed.events if e.HasField("tool_call_delta")
    )
    unary_hit = await gw.complete(tool_request("stream the tool call"))
    assert unary_hit.outcome == HIT
    calls = unary_hit.response.choices[0].message.tool_calls
    assert len(calls) == 1
    assert calls[0].name == "search"
    assert calls[0].arguments_json == arguments
    assert unary_hit.response.choices[0].finish_reason == types_pb2.FINISH_REASON_TOOL_CALLS
    assert gw.upstream == 1

    unary = await gw.complete(tool_request("unary tool call"))
    stream_hit = await gw.stream(tool_request("unary tool call"))
    assert stream_hit.outcome == HIT
    replayed = [e.tool_call_delta for e in stream_hit.events if e.HasField("tool_call_delta")]
    original = unary.response.choices[0].message.tool_calls[0]
    assert "".join(t.arguments_delta for t in replayed) == original.arguments_json
    assert (replayed[0].id, replayed[0].name) == (original.id, original.name)
    assert gw.upstream == 2


# --- coalescing ---------------------------------------------------------------------------------------


async def test_fifty_identical_unary_calls_share_one_upstream_call(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    gw = await gateway(start_server, settings, sim)
    answers = await asyncio.gather(*(gw.complete(ask(model_name="slow"), rid=f"u-{i}") for i in range(50)))
    assert gw.upstream == 1
    got = outcomes(answers)
    assert got.count(MISS) == 1
    assert all(o in (COALESCED, HIT) for o in got if o != MISS), got
    assert {a.text for a in answers} == {answers[0].text}
    assert answers[0].text
    # Each caller gets its own request id, in the route and in the trailers.
    assert [a.response.route.request_id for a in answers] == [f"u-{i}" for i in range(50)]
    assert all(a.trailers["x-request-id"] == f"u-{i}" for i, a in enumerate(answers))
    for a in answers:
        assert a.trailers["x-omnirelay-cache"] in ("miss", "coalesced", "hit")
    stats = await gw.stats()
    assert stats.misses == 1
    assert stats.coalesced + stats.hits == 49
    assert stats.stored == 1


async def test_fifty_identical_streams_share_one_upstream_call(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    gw = await gateway(start_server, settings, sim)
    streams = await asyncio.gather(*(gw.stream(ask(model_name="slow"), rid=f"s-{i}") for i in range(50)))
    assert gw.upstream == 1
    got = outcomes(streams)
    assert got.count(MISS) == 1
    assert all(o in (COALESCED, HIT) for o in got if o != MISS), got
    leader = streams[got.index(MISS)]
    assert len(leader.deltas) == 12
    for i, s in enumerate(streams):
        assert s.deltas == leader.deltas
        assert s.kinds[0] == "route_started"
        assert s.kinds[-1] == "done"
        assert s.kinds.count("done") == 1
        assert s.route.request_id == f"s-{i}"
    stats = await gw.stats()
    assert stats.coalesced + stats.hits == 49
    assert stats.stored == 1


async def test_a_follower_joining_mid_stream_gets_the_deltas_already_sent(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    gw = await gateway(start_server, settings, sim)
    request = stream_pb2.StreamCompleteRequest(request=ask(model_name="paced"))
    leader = gw.streams.StreamComplete(request, timeout=CALL_TIMEOUT)
    leader_events: list[Event] = []
    while len([e for e in leader_events if e.HasField("text_delta")]) < 4:
        event = await leader.read()
        assert isinstance(event, Event)
        leader_events.append(event)
    follower = await gw.stream(ask(model_name="paced"))
    rest: list[object] = []
    await drain(leader, rest)  # read() again: the iterator and read() do not mix
    leader_events.extend(e for e in rest if isinstance(e, Event))
    assert follower.outcome == COALESCED
    assert follower.deltas == [e.text_delta.text for e in leader_events if e.HasField("text_delta")]
    assert len(follower.deltas) == 12
    assert gw.upstream == 1


async def test_with_coalescing_off_identical_unary_calls_each_go_upstream(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    gw = await gateway(start_server, settings, sim, cache={"coalesce": False})
    answers = await asyncio.gather(*(gw.complete(ask(model_name="slow")) for _ in range(3)))
    assert gw.upstream == 3
    assert outcomes(answers) == [MISS] * 3


async def test_with_coalescing_off_identical_streams_each_go_upstream(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    gw = await gateway(start_server, settings, sim, cache={"coalesce": False})
    streams = await asyncio.gather(*(gw.stream(ask(model_name="slow")) for _ in range(3)))
    assert {s.text for s in streams} == {streams[0].text}
    assert outcomes(streams) == [MISS] * 3, "cache.coalesce = false, yet streams were coalesced"
    assert gw.upstream == 3


async def test_a_followers_cancel_leaves_the_others_their_answer(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    gw = await gateway(start_server, settings, sim)
    assert gw.app.cache is not None
    counters = gw.app.cache.counters
    leader = asyncio.ensure_future(gw.complete(ask(model_name="slower")))
    await until(lambda: gw.upstream == 1, "the leader's upstream call")
    calls = [gw.unary.Complete(ask(model_name="slower"), timeout=CALL_TIMEOUT) for _ in range(3)]
    await until(lambda: counters.coalesced == 3, "three followers")
    calls[1].cancel()
    with pytest.raises(asyncio.CancelledError):
        await calls[1]
    kept = [await calls[0], await calls[2]]
    led = await asyncio.wait_for(leader, CALL_TIMEOUT)
    assert led.outcome == MISS
    assert [k.route.cache for k in kept] == [COALESCED, COALESCED]
    assert all(text(k) == led.text for k in kept)
    assert led.text
    assert gw.upstream == 1
    assert sim.simulator.served[0].completed


async def test_the_first_callers_cancel_leaves_the_followers_their_answer(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    gw = await gateway(start_server, settings, sim)
    assert gw.app.cache is not None
    counters = gw.app.cache.counters
    first = gw.unary.Complete(ask(model_name="slower"), timeout=CALL_TIMEOUT)
    await until(lambda: gw.upstream == 1, "the first caller's upstream call")
    followers = [asyncio.ensure_future(gw.complete(ask(model_name="slower"))) for _ in range(2)]
    await until(lambda: counters.coalesced == 2, "two followers")
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    answers = await asyncio.wait_for(asyncio.gather(*followers), CALL_TIMEOUT)
    assert outcomes(answers) == [COALESCED, COALESCED]
    assert answers[0].text == answers[1].text != ""
    assert gw.upstream == 1
    # The shared answer was stored, too.
    assert (await gw.complete(ask(model_name="slower"))).outcome == HIT


async def test_a_stream_followers_cancel_leaves_the_others_their_stream(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    gw = await gateway(start_server, settings, sim)
    assert gw.app.cache is not None
    counters = gw.app.cache.counters
    request = stream_pb2.StreamCompleteRequest(request=ask(model_name="paced"))
    calls = [gw.streams.StreamComplete(request, timeout=CALL_TIMEOUT)]
    await until(lambda: gw.upstream == 1, "the leader's upstream call")
    calls += [gw.streams.StreamComplete(request, timeout=CALL_TIMEOUT) for _ in range(3)]
    await until(lambda: counters.coalesced == 3, "three stream followers")
    leaving = calls[2]
    first = await leaving.read()
    assert isinstance(first, Event)
    assert first.HasField("route_started")
    leaving.cancel()
    results = await asyncio.wait_for(
        asyncio.gather(*(_events(c) for i, c in enumerate(calls) if i != 2)), CALL_TIMEOUT
    )
    texts = ["".join(e.text_delta.text for e in r if e.HasField("text_delta")) for r in results]
    assert len(set(texts)) == 1
    assert texts[0]
    assert [r[-1].done.route.cache for r in results] == [MISS, COALESCED, COALESCED]
    assert gw.upstream == 1
    assert sim.simulator.served[0].completed
    assert not sim.simulator.served[0].disconnected


async def test_when_every_caller_leaves_the_upstream_stream_is_closed_and_nothing_stored(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    gw = await gateway(start_server, settings, sim)
    request = stream_pb2.StreamCompleteRequest(request=ask(model_name="endless"))
    calls = [gw.streams.StreamComplete(request, timeout=CALL_TIMEOUT) for _ in range(2)]
    for call in calls:
        for _ in range(3):
            assert isinstance(await call.read(), Event)
    assert gw.upstream == 1
    for call in calls:
        call.cancel()
    await until(lambda: sim.simulator.served[0].disconnected, "the upstream stream to be closed")
    assert sim.simulator.served[0].pieces_sent < 400
    stats = await gw.stats()
    assert (stats.stored, stats.entries) == (0, 0)


async def test_when_every_unary_caller_leaves_the_upstream_call_is_closed(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    gw = await gateway(start_server, settings, sim)
    assert gw.app.cache is not None
    counters = gw.app.cache.counters
    calls = [gw.unary.Complete(ask(model_name="hanging"), timeout=CALL_TIMEOUT) for _ in range(3)]
    await until(lambda: gw.upstream == 1 and counters.coalesced == 2, "one upstream call, two followers")
    for call in calls:
        call.cancel()
    await until(lambda: sim.simulator.served[0].disconnected, "the upstream call to be closed")
    assert gw.upstream == 1


# --- failures -----------------------------------------------------------------------------------------


async def test_a_failing_leader_fails_every_waiting_caller_alike_and_nothing_is_stored(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    gw = await gateway(start_server, settings, sim)
    results = await asyncio.gather(
        *(gw.complete(ask(model_name="broken")) for _ in range(10)), return_exceptions=True
    )
    assert gw.upstream == 1
    errors = [r for r in results if isinstance(r, aio.AioRpcError)]
    assert len(errors) == 10, results
    assert {e.code() for e in errors} == {grpc.StatusCode.UNAVAILABLE}
    assert len({e.details() for e in errors}) == 1
    stats = await gw.stats()
    assert (stats.stored, stats.entries) == (0, 0)
    # Nothing stored: the next identical call goes upstream again.
    with pytest.raises(aio.AioRpcError) as again:
        await gw.complete(ask(model_name="broken"))
    assert again.value.code() == grpc.StatusCode.UNAVAILABLE
    assert gw.upstream == 2


async def test_a_failing_leader_fails_every_waiting_stream(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    gw = await gateway(start_server, settings, sim)
    results = await asyncio.gather(
        *(gw.stream(ask(model_name="broken")) for _ in range(10)), return_exceptions=True
    )
    assert gw.upstream == 1
    errors = [r for r in results if isinstance(r, aio.AioRpcError)]
    assert len(errors) == 10, results
    assert {e.code() for e in errors} == {grpc.StatusCode.UNAVAILABLE}
    assert len({e.details() for e in errors}) == 1
    assert (await gw.stats()).entries == 0


async def test_a_broken_stream_is_never_stored(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    gw = await gateway(start_server, settings, sim)
    for n in (1, 2):
        call = gw.streams.StreamComplete(
            stream_pb2.StreamCompleteRequest(request=ask(model_name="dropping")), timeout=CALL_TIMEOUT
        )
        received: list[Event] = []
        with pytest.raises(aio.AioRpcError) as broken:
            await _collect(call, received)
        assert broken.value.code() == grpc.StatusCode.UNAVAILABLE
        assert [e.WhichOneof("event") for e in received] == ["route_started", "text_delta", "text_delta"]
        assert gw.upstream == n
    # Nor served to a unary call.
    with pytest.raises(aio.AioRpcError):
        await gw.complete(ask(model_name="dropping"))
    assert gw.upstream == 3
    stats = await gw.stats()
    assert (stats.stored, stats.entries) == (0, 0)


async def test_a_filtered_answer_is_delivered_but_never_stored(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    gw = await gateway(start_server, settings, sim)
    # OpenAI's format: a 200 whose choice finishes with content_filter (not an error).
    for n in (1, 2):
        answer = await gw.complete(ask(model_name="filtered"))
        assert answer.response.choices[0].finish_reason == types_pb2.FINISH_REASON_CONTENT_FILTER
        assert answer.outcome == MISS
        assert gw.upstream == n
    for n in (3, 4):
        streamed = await gw.stream(ask(model_name="filtered"))
        assert streamed.kinds == ["route_started", "finish", "usage", "done"]
        assert streamed.events[1].finish.finish_reason == types_pb2.FINISH_REASON_CONTENT_FILTER
        assert streamed.outcome == MISS
        assert gw.upstream == n
    stats = await gw.stats()
    assert (stats.stored, stats.entries) == (0, 0)
    assert stats.misses == 4


# --- the store's bounds and the admin service ---------------------------------------------------------


async def test_memory_bounds_evict_the_least_recently_used(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    gw = await gateway(start_server, settings, sim, cache={"max_entries": 2})
    for prompt in ("a", "b", "c"):
        assert (await gw.complete(ask(prompt))).outcome == MISS
    stats = await gw.stats()
    assert (stats.entries, stats.evictions, stats.stored) == (2, 1, 3)
    assert (await gw.complete(ask("b"))).outcome == HIT
    assert (await gw.complete(ask("c"))).outcome == HIT
    assert gw.upstream == 3
    # "a" went first; storing it again pushes out "b", now the least recently used.
    assert (await gw.complete(ask("a"))).outcome == MISS
    assert gw.upstream == 4
    assert (await gw.complete(ask("c"))).outcome == HIT
    assert (await gw.complete(ask("b"))).outcome == MISS
    stats = await gw.stats()
    assert stats.entries == 2
    assert stats.evictions == 3


async def test_an_answer_larger_than_max_bytes_is_not_stored(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    gw = await gateway(start_server, settings, sim, cache={"max_bytes": 1024})
    big = ask("a long answer please", model_name="long")  # 400 tokens: a few kilobytes stored
    for n in (1, 2):
        answer = await gw.complete(big)
        assert answer.outcome == MISS
        assert len(answer.text) > 1024
        assert gw.upstream == n
    assert (await gw.stats()).entries == 0
    small = ask("short")
    assert (await gw.complete(small)).outcome == MISS
    assert (await gw.complete(small)).outcome == HIT
    stats = await gw.stats()
    assert 0 < stats.bytes <= 1024
    assert stats.entries == 1


async def test_the_stored_counter_does_not_count_an_answer_the_store_refused(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    gw = await gateway(start_server, settings, sim, cache={"max_bytes": 1024})
    answer = await gw.complete(ask("a long answer please", model_name="long"))
    assert answer.outcome == MISS
    stats = await gw.stats()
    assert stats.entries == 0
    assert stats.stored == 0, "GetCacheStats.stored counts an answer the memory store dropped as too large"


async def test_get_cache_stats_counts_what_happened(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    gw = await gateway(start_server, settings, sim)
    fresh = await gw.stats()
    assert fresh.backend == "memory"
    assert (fresh.hits, fresh.misses, fresh.coalesced, fresh.bypassed, fresh.stored) == (0, 0, 0, 0, 0)
    assert (fresh.entries, fresh.bytes, fresh.evictions, fresh.backend_errors) == (0, 0, 0, 0)
    await gw.complete(ask())  # miss, stored
    await gw.complete(ask())  # hit
    await gw.stream(ask())  # hit (from the unary answer)
    await gw.complete(ask(temperature=0.7))  # bypassed by policy
    await gw.complete(ask(mode=Mode.MODE_BYPASS))  # bypassed by request
    with pytest.raises(aio.AioRpcError):
        await gw.complete(ask("never asked", mode=Mode.MODE_ONLY_IF_CACHED))  # a miss
    stats = await gw.stats()
    assert (stats.hits, stats.misses, stats.coalesced, stats.bypassed, stats.stored) == (2, 2, 0, 2, 1)
    assert (stats.entries, stats.evictions, stats.backend_errors) == (1, 0, 0)
    assert gw.app.cache is not None
    stored = await gw.app.cache.store.get(cache_key(ask(), "cached", ""))
    assert stored is not None
    assert stats.bytes == stored.size > 0


async def test_clear_cache_all_and_by_model(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    gw = await gateway(start_server, settings, sim)
    for prompt in ("one", "two"):
        await gw.complete(ask(prompt))
        await gw.complete(ask(prompt, model_name="other"))
    assert (await gw.stats()).entries == 4
    # By alias: only that model's answers go.
    cleared = await gw.admin.ClearCache(
        cache_pb2.ClearCacheRequest(model="other-alias"), timeout=CALL_TIMEOUT
    )
    assert cleared.removed == 2
    assert (await gw.stats()).entries == 2
    assert (await gw.complete(ask("one"))).outcome == HIT
    assert (await gw.complete(ask("one", model_name="other"))).outcome == MISS
    # By canonical name.
    cleared = await gw.admin.ClearCache(cache_pb2.ClearCacheRequest(model="cached"), timeout=CALL_TIMEOUT)
    assert cleared.removed == 2
    assert (await gw.stats()).entries == 1
    # Everything.
    cleared = await gw.admin.ClearCache(cache_pb2.ClearCacheRequest(), timeout=CALL_TIMEOUT)
    assert cleared.removed == 1
    stats = await gw.stats()
    assert (stats.entries, stats.bytes) == (0, 0)
    before = gw.upstream
    assert (await gw.complete(ask("two"))).outcome == MISS
    assert gw.upstream == before + 1
    assert (await gw.admin.ClearCache(cache_pb2.ClearCacheRequest(), timeout=CALL_TIMEOUT)).removed == 1


async def test_clear_cache_for_an_unknown_model_is_not_found(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    gw = await gateway(start_server, settings, sim)
    await gw.complete(ask())
    with pytest.raises(aio.AioRpcError) as unknown:
        await gw.admin.ClearCache(cache_pb2.ClearCacheRequest(model="no-such-model"), timeout=CALL_TIMEOUT)
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    assert (await gw.stats()).entries == 1


async def test_with_the_cache_off_nothing_is_cached_and_clearing_is_refused(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    gw = await gateway(start_server, settings, sim, cache={"backend": "off"})
    assert gw.app.cache is None
    for n in (1, 2):
        answer = await gw.complete(ask())
        assert answer.outcome == types_pb2.CACHE_OUTCOME_UNSPECIFIED
        assert gw.upstream == n
    stats = await gw.stats()
    assert stats.backend == "off"
    assert (stats.hits, stats.misses, stats.entries) == (0, 0, 0)
    with pytest.raises(aio.AioRpcError) as refused:
        await gw.admin.ClearCache(cache_pb2.ClearCacheRequest(), timeout=CALL_TIMEOUT)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def _events(call: Any) -> list[Event]:
    return [e async for e in call]


async def _collect(call: Any, into: list[Event]) -> None:
    async for event in call:
        into.append(event)


# --- validation, deadlines and a failing store --------------------------------------------------------


def _negative_ttl(request: completion_pb2.CompleteRequest) -> None:
    request.cache.ttl.seconds = -5


def _empty_fallback(request: completion_pb2.CompleteRequest) -> None:
    request.routing.fallback_models.append("")


@pytest.mark.parametrize(
    ("spoil", "field"),
    [(_negative_ttl, "cache.ttl"), (_empty_fallback, "routing.fallback_models[0]")],
    ids=["negative-ttl", "empty-fallback-model"],
)
async def test_an_invalid_request_is_rejected_whether_or_not_an_answer_is_stored(
    start_server: StartServer,
    settings: Settings,
    sim: RunningSim,
    spoil: Callable[[completion_pb2.CompleteRequest], None],
    field: str,
) -> None:
    gw = await gateway(start_server, settings, sim)
    invalid = ask()
    spoil(invalid)
    with pytest.raises(aio.AioRpcError) as before:
        await gw.complete(invalid)
    assert before.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (before.value.details() or "")
    assert gw.upstream == 0
    await gw.complete(ask())  # the valid request's answer is stored
    with pytest.raises(aio.AioRpcError) as after:
        await gw.complete(invalid)
    assert after.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (
        "a stored answer was served to an invalid request"
    )
    with pytest.raises(aio.AioRpcError) as streamed:
        await gw.stream(invalid)
    assert streamed.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_short_deadline_caller_does_not_cut_the_shared_call_short(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    gw = await gateway(start_server, settings, sim)
    hasty = gw.unary.Complete(ask(model_name="slower"), timeout=0.15)
    await until(lambda: gw.upstream == 1, "the first upstream call")
    patient = asyncio.ensure_future(gw.complete(ask(model_name="slower")))
    with pytest.raises(aio.AioRpcError) as expired:
        await hasty
    assert expired.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    answer = await asyncio.wait_for(patient, CALL_TIMEOUT)
    assert answer.outcome == COALESCED
    assert answer.text
    assert gw.upstream == 1


class FailingStore:
    """A store whose reads and writes fail, or hang (stats come from a real, empty memory store)."""

    name = "memory"

    def __init__(self, real: Any, hang: bool) -> None:
        self._real = real
        self._hang = hang
        self.calls = 0

    async def _fail(self) -> None:
        self.calls += 1
        if self._hang:
            await asyncio.sleep(30)
        raise ConnectionError("store down")

    async def get(self, key: str) -> None:
        await self._fail()

    async def set(self, key: str, answer: Any, ttl_seconds: float) -> bool:
        await self._fail()
        return False

    async def clear(self, model: str | None = None) -> int:
        return int(await self._real.clear(model))

    async def stats(self) -> Any:
        return await self._real.stats()

    async def aclose(self) -> None:
        await self._real.aclose()


@pytest.mark.parametrize("hang", [False, True], ids=["failing", "hanging"])
async def test_a_failing_or_slow_store_never_fails_a_call(
    start_server: StartServer,
    settings: Settings,
    sim: RunningSim,
    hang: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stores: list[FailingStore] = []

    def build_store(cache: Any) -> FailingStore:
        stores.append(FailingStore(MemoryStore(cache.max_entries, cache.max_bytes), hang))
        return stores[-1]

    # The app builds its store at start-up: this one fails (or hangs) on every read and write.
    monkeypatch.setattr(app_module, "build_store", build_store)
    gw = await gateway(start_server, settings, sim)
    assert gw.app.cache is not None
    store = stores[0]
    assert gw.app.cache.store is store
    for n in (1, 2):
        started = time.monotonic()
        answer = await gw.complete(ask())
        assert time.monotonic() - started < 1.0
        assert answer.outcome == MISS
        assert answer.text
        assert gw.upstream == n
    streamed = await gw.stream(ask())
    assert streamed.outcome == MISS
    assert gw.upstream == 3
    await until(lambda: store.calls == 6, "three lookups and three writes")
    await until(
        lambda: gw.app.cache is not None and gw.app.cache.counters.backend_errors == 6, "six backend errors"
    )
    stats = await gw.stats()
    assert stats.backend_errors == 6
    assert (stats.hits, stats.stored) == (0, 0)


async def test_two_choices_are_cached_and_cross_served_per_choice(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    # The local provider answers n > 1; n = 2 is sampled, so MODE_USE opts in.
    gw = await gateway(start_server, settings, sim)
    two = ask("two choices from a stream", "local-small", mode=Mode.MODE_USE, n=2, max_tokens=6)
    streamed = await gw.stream(two)
    assert streamed.outcome == MISS
    per_choice = [
        "".join(
            e.text_delta.text
            for e in streamed.events
            if e.HasField("text_delta") and e.text_delta.choice_index == i
        )
        for i in (0, 1)
    ]
    assert all(per_choice)
    hit = await gw.complete(two)
    assert hit.outcome == HIT
    assert [c.index for c in hit.response.choices] == [0, 1]
    assert [text(hit.response, i) for i in (0, 1)] == per_choice

    other = ask("two choices from a unary call", "local-small", mode=Mode.MODE_USE, n=2, max_tokens=6)
    unary = await gw.complete(other)
    replay = await gw.stream(other)
    assert replay.outcome == HIT
    for i in (0, 1):
        assert "".join(
            e.text_delta.text
            for e in replay.events
            if e.HasField("text_delta") and e.text_delta.choice_index == i
        ) == text(unary.response, i)
    finishes = [e.finish for e in replay.events if e.HasField("finish")]
    assert sorted(f.choice_index for f in finishes) == [0, 1]


async def test_requests_seen_before_keep_their_key_and_the_memory_of_them_is_bounded(
    start_server: StartServer, settings: Settings, sim: RunningSim, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cache_layer, "_KNOWN_ENTRIES", 3)
    gw = await gateway(start_server, settings, sim)
    layer = gw.app.cache
    assert layer is not None
    prompts = [f"prompt {i}" for i in range(5)]
    for prompt in prompts:
        assert (await gw.complete(ask(prompt))).outcome == MISS
    assert 0 < len(layer._known) <= 3
    # Remembered or forgotten, each request finds its own answer, and only its own.
    for _ in range(2):
        for prompt in prompts:
            answer = await gw.complete(ask(prompt))
            assert answer.outcome == HIT
            assert answer.response.route.request_id
    assert gw.upstream == len(prompts)
    assert len(layer._known) <= 3
    # A remembered request still obeys the options it carries: only-if-cached on an answered
    # request is a hit, bypass goes upstream (a different request: its bytes differ).
    assert (await gw.complete(ask(prompts[-1], mode=Mode.MODE_ONLY_IF_CACHED))).outcome == HIT
    assert (await gw.complete(ask(prompts[-1], mode=Mode.MODE_BYPASS))).outcome == BYPASS
    assert gw.upstream == len(prompts) + 1
    # A request larger than the bound is keyed every time, never kept.
    monkeypatch.setattr(cache_layer, "_KNOWN_ENTRIES", 100)
    big = ask("x" * (cache_layer._KNOWN_MAX_BYTES + 1))
    assert (await gw.complete(big)).outcome == MISS
    assert (await gw.complete(big)).outcome == HIT
    assert big.SerializeToString() not in layer._known


async def test_a_remembered_uncacheable_request_is_bypassed_every_time(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    # Sampled requests (the common kind) are remembered as "not for the cache" by their bytes:
    # each repeat must still go upstream, be counted and report BYPASS, unary and streamed.
    gw = await gateway(start_server, settings, sim)
    layer = gw.app.cache
    assert layer is not None
    sampled = ask("a sampled question", temperature=0.7)
    for _ in range(3):
        answer = await gw.complete(sampled)
        assert answer.outcome == BYPASS
        assert answer.response.route.request_id
    assert sampled.SerializeToString() in layer._known
    for _ in range(2):
        assert (await gw.stream(sampled)).outcome == BYPASS
    assert gw.upstream == 5
    stats = await gw.stats()
    assert (stats.bypassed, stats.hits, stats.misses, stats.stored) == (5, 0, 0, 0)
    # Remembering the bypass does not touch a cacheable request that differs from it.
    deterministic = ask("a sampled question")
    assert (await gw.complete(deterministic)).outcome == MISS
    assert (await gw.complete(deterministic)).outcome == HIT
    assert gw.upstream == 6
