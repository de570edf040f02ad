"""Model names, the shipped registry, capability checks, strategy hints and ListModels over gRPC."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable

import grpc
import pytest
from google.protobuf import struct_pb2
from grpc import aio

from omnirelay.config import Settings
from omnirelay.config.routing import DeploymentSettings, ModelRoutingSettings, PricingSettings
from omnirelay.sim.server import RunningSim, start
from omnirelay_client.v1 import completion_pb2, completion_pb2_grpc, types_pb2
from tests.conftest import StartServer
from tests.helpers import error_info, field_violations, request
from tests.routing_helpers import model, routed, sim_provider

LONG_PROMPT = " ".join(f"word{i}" for i in range(400))  # ~400 tokens by any estimate


@pytest.fixture
async def sim() -> AsyncIterator[RunningSim]:
    running = await start()
    yield running
    await running.stop()


def stub(channel: aio.Channel) -> completion_pb2_grpc.CompletionServiceAsyncStub:
    return completion_pb2_grpc.CompletionServiceStub(channel)


async def local_only(start_server: StartServer, settings: Settings) -> aio.Channel:
    """The shipped settings: only the local provider, every shipped registry model known."""
    _, channel = await start_server(settings)
    return channel


def served_models(sim: RunningSim) -> list[str]:
    return [s.model for s in sim.simulator.served]


def tool_request(model_name: str) -> completion_pb2.CompleteRequest:
    req = request("look something up", model=model_name)
    params = struct_pb2.Struct()
    params.update({"type": "object", "properties": {"query": {"type": "string"}}})
    req.tools.append(types_pb2.Tool(name="lookup", description="look it up", parameters=params))
    return req


def json_request(model_name: str) -> completion_pb2.CompleteRequest:
    fmt = types_pb2.ResponseFormat(type=types_pb2.ResponseFormat.TYPE_JSON_OBJECT)
    return request("answer in JSON", model=model_name, response_format=fmt)


def long_request(model_name: str) -> completion_pb2.CompleteRequest:
    return request(LONG_PROMPT, model=model_name)


Build = Callable[[str], completion_pb2.CompleteRequest]


# --- name resolution ---


@pytest.mark.parametrize(
    ("name", "resolved", "deployment"),
    [
        ("fast", "local-small", "local/small"),
        ("cheap", "local-small", "local/small"),
        ("powerful", "local-large", "local/large"),
        ("local-large", "local-large", "local/large"),
        ("local-small", "local-small", "local/small"),
    ],
)
async def test_aliases_and_canonical_names_resolve(
    start_server: StartServer, settings: Settings, name: str, resolved: str, deployment: str
) -> None:
    channel = await local_only(start_server, settings)
    call = stub(channel).Complete(request(model=name))
    response = await call
    assert response.route.requested_model == name
    assert response.route.resolved_model == resolved
    assert response.route.provider == "local"
    assert response.route.deployment == deployment
    trailers = dict(await call.trailing_metadata() or ())
    assert trailers["x-omnirelay-model"] == resolved
    assert trailers["x-omnirelay-provider"] == "local"


async def test_a_direct_provider_slash_model_call_reaches_that_provider_with_that_model(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    _, channel = await start_server(routed(settings, [sim_provider("my-openai", sim)], []))
    response = await stub(channel).Complete(request(model="my-openai/some-upstream-model"))
    assert response.route.resolved_model == "my-openai/some-upstream-model"
    assert response.route.provider == "my-openai"
    assert response.route.deployment == "my-openai/some-upstream-model"
    assert served_models(sim) == ["some-upstream-model"]
    # The local provider the same way.
    local = await stub(channel).Complete(request(model="local/large"))
    assert (local.route.provider, local.route.deployment) == ("local", "local/large")


async def test_an_unknown_name_is_not_found_with_close_matches(
    start_server: StartServer, settings: Settings
) -> None:
    channel = await local_only(start_server, settings)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub(channel).Complete(request(model="local-smal"))
    error = caught.value
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "unknown model 'local-smal'" in (error.details() or "")
    assert "did you mean 'local-small'" in (error.details() or "")
    info = error_info(error)
    assert info.reason == "MODEL_NOT_FOUND"
    assert info.metadata["model"] == "local-smal"
    suggestions = info.metadata["suggestions"].split(",")
    assert suggestions[0] == "local-small"
    assert "local-large" in suggestions


async def test_an_unknown_name_far_from_everything_has_no_suggestions(
    start_server: StartServer, settings: Settings
) -> None:
    channel = await local_only(start_server, settings)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub(channel).Complete(request(model="zzzzzzzzzzzzzzzzzzzz"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "did you mean" not in (caught.value.details() or "")
    assert error_info(caught.value).metadata["suggestions"] == ""


async def test_an_unknown_provider_prefix_is_not_found(start_server: StartServer, settings: Settings) -> None:
    channel = await local_only(start_server, settings)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub(channel).Complete(request(model="lokal/small"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "local/" in error_info(caught.value).metadata["suggestions"].split(",")


@pytest.mark.parametrize("name", ["gpt-4o", "gpt-4o-2024-08-06"])
async def test_a_shipped_model_no_configured_provider_serves_is_failed_precondition(
    start_server: StartServer, settings: Settings, name: str
) -> None:
    channel = await local_only(start_server, settings)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub(channel).Complete(request(model=name))
    error = caught.value
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = error.details() or ""
    assert "'gpt-4o'" in details
    assert "configure a provider of kind azure, openai" in details
    assert error_info(error).metadata["model"] == "gpt-4o"


async def test_a_shipped_anthropic_model_names_its_kind(
    start_server: StartServer, settings: Settings
) -> None:
    channel = await local_only(start_server, settings)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub(channel).Complete(request(model="claude-sonnet"))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "'claude-sonnet-4'" in (caught.value.details() or "")
    assert "of kind anthropic" in (caught.value.details() or "")


# --- binding shipped deployments to configured providers by kind ---


@pytest.mark.parametrize("name", ["gpt-4o", "gpt-4o-2024-08-06"])
async def test_a_provider_of_kind_openai_makes_shipped_gpt_4o_routable(
    start_server: StartServer, settings: Settings, sim: RunningSim, name: str
) -> None:
    _, channel = await start_server(routed(settings, [sim_provider("my-openai", sim)], []))
    call = stub(channel).Complete(request(model=name, max_tokens=4))
    response = await call
    assert served_models(sim) == ["gpt-4o-2024-08-06"]
    route = response.route
    assert route.requested_model == name
    assert route.resolved_model == "gpt-4o"
    assert route.provider == "my-openai"
    assert route.deployment == "my-openai/gpt-4o-2024-08-06"
    assert not route.fallback_used
    assert response.usage.output_tokens == 4
    trailers = dict(await call.trailing_metadata() or ())
    assert trailers["x-omnirelay-provider"] == "my-openai"


async def test_every_plain_provider_of_the_kind_is_a_deployment(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    providers = [sim_provider("openai-us", sim), sim_provider("openai-eu", sim)]
    _, channel = await start_server(routed(settings, providers, []))
    listed = await stub(channel).ListModels(completion_pb2.ListModelsRequest())
    gpt4o = next(m for m in listed.models if m.name == "gpt-4o")
    assert list(gpt4o.deployments) == ["openai-eu/gpt-4o-2024-08-06", "openai-us/gpt-4o-2024-08-06"]
    assert list(gpt4o.providers) == ["openai-eu", "openai-us"]


async def test_an_openai_compatible_server_with_a_flavor_is_not_bound_by_kind(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    vllm = sim_provider("my-vllm", sim, flavor="vllm")
    _, channel = await start_server(routed(settings, [vllm], []))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub(channel).Complete(request(model="gpt-4o"))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert served_models(sim) == []
    # It still serves direct calls.
    response = await stub(channel).Complete(request(model="my-vllm/meta-llama"))
    assert response.route.provider == "my-vllm"
    assert served_models(sim) == ["meta-llama"]


# --- default model ---


async def test_the_requests_model_beats_the_default_model(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    own = model("sim-default", ("my-openai", "default-upstream"))
    configured = dataclasses.replace(
        routed(settings, [sim_provider("my-openai", sim)], [own]), default_model="sim-default"
    )
    _, channel = await start_server(configured)
    chosen = await stub(channel).Complete(request(model="powerful"))
    assert chosen.route.resolved_model == "local-large"
    assert served_models(sim) == []  # the default model was never called
    fallback = await stub(channel).Complete(request(model=""))
    assert fallback.route.requested_model == ""
    assert fallback.route.resolved_model == "sim-default"
    assert served_models(sim) == ["default-upstream"]


# --- capability and context checks, before any upstream call ---


def checked_models(sim: RunningSim, settings: Settings, *, with_fallback: bool) -> Settings:
    """``plain`` (no tools, no JSON mode, a 50-token window) and ``capable`` (all of them)."""
    fallbacks = ModelRoutingSettings(fallbacks=("capable",)) if with_fallback else None
    plain = model(
        "plain",
        ("my-openai", "plain-upstream"),
        capabilities=("streaming",),
        context_window=50,
        routing=fallbacks,
    )
    capable = model(
        "capable",
        ("my-openai", "capable-upstream"),
        capabilities=("streaming", "tools", "json_mode"),
        context_window=100_000,
    )
    return routed(settings, [sim_provider("my-openai", sim)], [plain, capable])


async def test_tools_to_a_model_without_tools_are_refused_before_any_upstream_call(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    _, channel = await start_server(checked_models(sim, settings, with_fallback=False))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub(channel).Complete(tool_request("plain"))
    error = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = field_violations(error)
    assert list(violations) == ["tools"]
    assert "'plain' does not support tools" in violations["tools"]
    assert served_models(sim) == []


async def test_json_mode_to_a_model_without_json_mode_is_refused(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    _, channel = await start_server(checked_models(sim, settings, with_fallback=False))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub(channel).Complete(json_request("plain"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = field_violations(caught.value)
    assert list(violations) == ["sampling.response_format"]
    assert "json_mode" in violations["sampling.response_format"]
    assert served_models(sim) == []


async def test_json_mode_to_the_shipped_local_model_is_refused(
    start_server: StartServer, settings: Settings
) -> None:
    channel = await local_only(start_server, settings)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub(channel).Complete(json_request("local-small"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "sampling.response_format" in field_violations(caught.value)


async def test_a_prompt_over_the_context_window_is_refused(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    _, channel = await start_server(checked_models(sim, settings, with_fallback=False))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub(channel).Complete(long_request("plain"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = field_violations(caught.value)
    assert list(violations) == ["messages"]
    assert "50-token context window of 'plain'" in violations["messages"]
    assert served_models(sim) == []
    # A short prompt to the same model is fine.
    ok = await stub(channel).Complete(request("hi", model="plain"))
    assert ok.route.resolved_model == "plain"
    assert served_models(sim) == ["plain-upstream"]


@pytest.mark.parametrize(
    "build", [tool_request, json_request, long_request], ids=["tools", "json", "context"]
)
async def test_an_unsuitable_model_is_skipped_for_its_capable_fallback(
    start_server: StartServer, settings: Settings, sim: RunningSim, build: Build
) -> None:
    _, channel = await start_server(checked_models(sim, settings, with_fallback=True))
    response = await stub(channel).Complete(build("plain"))
    assert served_models(sim) == ["capable-upstream"]  # the unsuitable model was never called
    route = response.route
    assert route.requested_model == "plain"
    assert route.resolved_model == "capable"
    assert route.deployment == "my-openai/capable-upstream"
    # The answer came from a fallback model: the route must say so.
    assert route.fallback_used


@pytest.mark.parametrize(
    "build", [tool_request, json_request, long_request], ids=["tools", "json", "context"]
)
async def test_the_callers_own_fallback_models_take_an_unsuitable_request(
    start_server: StartServer, settings: Settings, sim: RunningSim, build: Build
) -> None:
    _, channel = await start_server(checked_models(sim, settings, with_fallback=False))
    req = build("plain")
    req.routing.fallback_models.append("capable")
    response = await stub(channel).Complete(req)
    assert response.route.resolved_model == "capable"
    assert served_models(sim) == ["capable-upstream"]


async def test_no_fallback_allowed_means_the_unsuitable_model_is_refused(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    _, channel = await start_server(checked_models(sim, settings, with_fallback=True))
    req = tool_request("plain")
    req.routing.allow_fallback = False
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub(channel).Complete(req)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "tools" in field_violations(caught.value)
    assert served_models(sim) == []


async def test_when_no_model_on_the_route_can_serve_every_reason_is_named(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    _, channel = await start_server(checked_models(sim, settings, with_fallback=False))
    req = tool_request("plain")
    req.routing.fallback_models.append("local-small")
    req.sampling.response_format.type = types_pb2.ResponseFormat.TYPE_JSON_OBJECT
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub(channel).Complete(req)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = caught.value.details() or ""
    assert "'plain'" in details
    assert "'local-small'" in details
    assert served_models(sim) == []


# --- strategy hints ---


def spread_settings(settings: Settings, sim: RunningSim) -> Settings:
    """``spread``: three deployments of equal weight, routed at random unless the request says otherwise."""
    spread = model(
        "spread",
        DeploymentSettings("my-openai", "d-a", priority=2),
        DeploymentSettings("my-openai", "d-b", priority=0),
        DeploymentSettings("my-openai", "d-c", priority=1),
        routing=ModelRoutingSettings(strategy="weighted"),
    )
    return routed(settings, [sim_provider("my-openai", sim)], [spread])


def hinted(strategy: int, sticky_key: str = "") -> completion_pb2.CompleteRequest:
    req = request(model="spread", max_tokens=2)
    req.routing.strategy = strategy  # type: ignore[assignment]
    req.routing.sticky_key = sticky_key
    return req


async def test_a_sticky_hint_keeps_one_key_on_one_deployment(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    _, channel = await start_server(spread_settings(settings, sim))
    sticky = types_pb2.RoutingOptions.STRATEGY_STICKY
    deployments = set()
    for _ in range(10):
        response = await stub(channel).Complete(hinted(sticky, "conversation-42"))
        deployments.add(response.route.deployment)
    assert len(deployments) == 1
    assert len(set(served_models(sim))) == 1
    # Other keys land elsewhere: the hint is a hash of the key, not one fixed deployment.
    others = set()
    for i in range(30):
        response = await stub(channel).Complete(hinted(sticky, f"conversation-{i}"))
        others.add(response.route.deployment)
    assert len(others) >= 2


async def test_lowest_cost_prefers_the_deployment_with_the_lower_own_price(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    # Deployment prices override the model's list price, so one model served by a reseller
    # and by the first party can be routed by cost.
    listed = PricingSettings(input=2.5, output=10.0)
    reseller = PricingSettings(input=1.0, output=4.0)
    cheap = model(
        "priced",
        DeploymentSettings("my-openai", "first-party", priority=0),
        DeploymentSettings("my-openai", "reseller", priority=1, pricing=reseller),
        pricing=listed,
        routing=ModelRoutingSettings(strategy="lowest_cost"),
    )
    _, channel = await start_server(routed(settings, [sim_provider("my-openai", sim)], [cheap]))
    for _ in range(5):
        response = await stub(channel).Complete(request(model="priced", max_tokens=2))
        assert response.route.deployment == "my-openai/reseller"
    # A priority hint on the same route picks the first-party deployment instead.
    hinted_request = request(model="priced", max_tokens=2)
    hinted_request.routing.strategy = types_pb2.RoutingOptions.STRATEGY_PRIORITY
    response = await stub(channel).Complete(hinted_request)
    assert response.route.deployment == "my-openai/first-party"
    assert served_models(sim) == ["reseller"] * 5 + ["first-party"]


async def test_without_a_hint_the_models_own_strategy_spreads_calls(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    _, channel = await start_server(spread_settings(settings, sim))
    seen = set()
    for _ in range(30):
        response = await stub(channel).Complete(request(model="spread", max_tokens=2))
        seen.add(response.route.deployment)
    # Weighted over three equal deployments: all 30 on one has probability 3·3^-30.
    assert len(seen) >= 2


async def test_a_priority_hint_overrides_the_models_weighted_strategy(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    _, channel = await start_server(spread_settings(settings, sim))
    for _ in range(10):
        response = await stub(channel).Complete(hinted(types_pb2.RoutingOptions.STRATEGY_PRIORITY))
        assert response.route.deployment == "my-openai/d-b"
    assert set(served_models(sim)) == {"d-b"}


# --- ListModels ---


async def test_list_models_lists_the_routable_models_by_name(
    start_server: StartServer, settings: Settings
) -> None:
    channel = await local_only(start_server, settings)
    listed = await stub(channel).ListModels(completion_pb2.ListModelsRequest())
    assert [m.name for m in listed.models] == ["local-large", "local-small"]
    small = listed.models[1]
    assert small.available
    assert list(small.deployments) == ["local/small"]
    assert list(small.providers) == ["local"]
    assert list(small.aliases) == ["default", "fast", "cheap"]
    assert small.pricing.known
    assert small.pricing.source == "self-hosted"


async def test_list_models_filters_by_capability(start_server: StartServer, settings: Settings) -> None:
    channel = await local_only(start_server, settings)
    reasoning = await stub(channel).ListModels(
        completion_pb2.ListModelsRequest(capabilities=[types_pb2.CAPABILITY_REASONING])
    )
    assert [m.name for m in reasoning.models] == ["local-large"]
    both = await stub(channel).ListModels(
        completion_pb2.ListModelsRequest(
            capabilities=[types_pb2.CAPABILITY_TOOLS, types_pb2.CAPABILITY_EMBEDDINGS]
        )
    )
    assert [m.name for m in both.models] == ["local-large", "local-small"]
    vision = await stub(channel).ListModels(
        completion_pb2.ListModelsRequest(capabilities=[types_pb2.CAPABILITY_VISION])
    )
    assert list(vision.models) == []


async def test_include_unavailable_adds_the_shipped_models_marked_unavailable(
    start_server: StartServer, settings: Settings
) -> None:
    channel = await local_only(start_server, settings)
    listed = await stub(channel).ListModels(completion_pb2.ListModelsRequest(include_unavailable=True))
    names = [m.name for m in listed.models]
    assert names == sorted(settings.models)
    by_name = {m.name: m for m in listed.models}
    claude = by_name["claude-sonnet-4"]
    assert not claude.available
    assert list(claude.deployments) == []
    assert list(claude.providers) == ["anthropic"]
    assert "claude-sonnet" in claude.aliases
    assert by_name["claude-3-7-sonnet"].deprecation_date == "2026-02-19"
    assert by_name["local-small"].available
    assert sorted(n for n, m in by_name.items() if m.available) == ["local-large", "local-small"]
    # Filters apply to unavailable models too (by provider kind).
    anthropic = await stub(channel).ListModels(
        completion_pb2.ListModelsRequest(include_unavailable=True, provider="anthropic")
    )
    assert [m.name for m in anthropic.models] == sorted(
        n for n, m in settings.models.items() if any(d.provider == "anthropic" for d in m.deployments)
    )
    embeddings = await stub(channel).ListModels(
        completion_pb2.ListModelsRequest(
            include_unavailable=True, capabilities=[types_pb2.CAPABILITY_EMBEDDINGS]
        )
    )
    assert {"text-embedding-3-small", "text-embedding-004", "local-small"} <= {
        m.name for m in embeddings.models
    }
    assert all(types_pb2.CAPABILITY_EMBEDDINGS in m.capabilities for m in embeddings.models)


async def test_list_models_with_a_bound_provider_shows_prices_and_deployments(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    unpriced = model("sim-unpriced", ("my-openai", "x"))
    priced = model("sim-priced", ("my-openai", "y"), pricing=PricingSettings(0.333333, 1.0000004))
    _, channel = await start_server(routed(settings, [sim_provider("my-openai", sim)], [unpriced, priced]))
    listed = await stub(channel).ListModels(completion_pb2.ListModelsRequest(provider="my-openai"))
    openai_kind = sorted(
        n for n, m in settings.models.items() if any(d.provider == "openai" for d in m.deployments)
    )
    assert [m.name for m in listed.models] == sorted([*openai_kind, "sim-priced", "sim-unpriced"])
    by_name = {m.name: m for m in listed.models}
    gpt4o = by_name["gpt-4o"]
    assert gpt4o.available
    assert list(gpt4o.providers) == ["my-openai"]
    assert list(gpt4o.deployments) == ["my-openai/gpt-4o-2024-08-06"]
    assert gpt4o.context_window == 128_000
    assert gpt4o.max_output_tokens == 16_384
    assert list(gpt4o.aliases) == ["gpt-4o-2024-08-06"]
    assert set(gpt4o.capabilities) >= {types_pb2.CAPABILITY_TOOLS, types_pb2.CAPABILITY_JSON_MODE}
    p = gpt4o.pricing
    assert p.known
    assert p.input_per_million_micros == 2_500_000
    assert p.output_per_million_micros == 10_000_000
    assert p.cached_input_per_million_micros == 1_250_000
    assert p.source == "https://openai.com/api/pricing/"
    assert p.as_of == "2025-06-01"
    assert by_name["gpt-4o-mini"].pricing.input_per_million_micros == 150_000
    assert by_name["gpt-4o-mini"].pricing.cached_input_per_million_micros == 75_000
    assert not by_name["sim-unpriced"].pricing.known
    assert by_name["sim-priced"].pricing.input_per_million_micros == 333_333
    assert by_name["sim-priced"].pricing.output_per_million_micros == 1_000_000
    # A provider that serves nothing here lists nothing; the local provider lists its own models.
    none = await stub(channel).ListModels(completion_pb2.ListModelsRequest(provider="anthropic"))
    assert list(none.models) == []
    local = await stub(channel).ListModels(completion_pb2.ListModelsRequest(provider="local"))
    assert [m.name for m in local.models] == ["local-large", "local-small"]


# --- fallbacks naming registry models that no provider serves here ---


def with_fallbacks(settings: Settings, sim: RunningSim, primary: str, *fallbacks: str) -> Settings:
    first = model(
        "primary",
        ("my-openai", primary),
        capabilities=("streaming",),
        routing=ModelRoutingSettings(fallbacks=fallbacks),
    )
    capable = model("capable", ("my-openai", "capable-upstream"), capabilities=("streaming", "tools"))
    return routed(settings, [sim_provider("my-openai", sim)], [first, capable])


async def test_an_unroutable_later_fallback_does_not_stop_a_routable_earlier_one(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    # claude-sonnet-4 is a known registry model (config accepts it), but no anthropic provider is here.
    configured = with_fallbacks(settings, sim, "primary-upstream", "capable", "claude-sonnet-4")
    _, channel = await start_server(configured)
    response = await stub(channel).Complete(tool_request("primary"))
    assert response.route.resolved_model == "capable"
    assert served_models(sim) == ["capable-upstream"]


async def test_an_unroutable_fallback_is_passed_over_after_an_upstream_failure(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    configured = with_fallbacks(settings, sim, "primary-upstream+fault=500", "claude-sonnet-4", "capable")
    _, channel = await start_server(configured)
    response = await stub(channel).Complete(request(model="primary"))
    assert response.route.resolved_model == "capable"
    assert response.route.fallback_used
    assert served_models(sim) == ["primary-upstream", "capable-upstream"]


async def test_an_unroutable_fallback_does_not_mask_the_primarys_own_failure(
    start_server: StartServer, settings: Settings, sim: RunningSim
) -> None:
    configured = with_fallbacks(settings, sim, "primary-upstream+fault=500", "claude-sonnet-4")
    _, channel = await start_server(configured)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub(channel).Complete(request(model="primary"))
    # The caller hears about the upstream's 500 (UNAVAILABLE), not about an unrelated fallback.
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(caught.value).reason == "UPSTREAM_SERVER_ERROR"
    assert served_models(sim) == ["primary-upstream"]
