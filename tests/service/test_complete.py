"""Unary completions over a real grpc.aio channel to an in-process server."""

from __future__ import annotations

import dataclasses

import grpc
import pytest
from grpc import aio

from omnirelay.app import App
from omnirelay.config import Settings
from omnirelay.domain import Sampling
from omnirelay_client.v1 import completion_pb2, completion_pb2_grpc, types_pb2
from tests.conftest import StartServer, with_server
from tests.helpers import request, text, user


async def test_complete_returns_choice_usage_and_route(channel: aio.Channel) -> None:
    stub = completion_pb2_grpc.CompletionServiceStub(channel)
    call = stub.Complete(request(max_tokens=6), metadata=(("x-request-id", "req-123"),))
    response = await call
    assert len(response.choices) == 1
    choice = response.choices[0]
    assert choice.message.role == types_pb2.ROLE_ASSISTANT
    assert len(text(response).split()) == 6
    assert choice.finish_reason == types_pb2.FINISH_REASON_LENGTH
    assert response.usage.output_tokens == 6
    assert response.usage.input_tokens == 3 + 2  # role overhead + "hello gateway"
    route = response.route
    assert (route.requested_model, route.resolved_model, route.provider) == (
        "local-small",
        "local-small",
        "local",
    )
    assert route.deployment == "local/small"
    assert route.request_id == "req-123"
    assert route.attempts[0].outcome == types_pb2.ATTEMPT_OUTCOME_SUCCESS
    assert route.latency.ToNanoseconds() > 0
    metadata = dict(await call.trailing_metadata())
    assert metadata["x-request-id"] == "req-123"
    assert metadata["x-omnirelay-model"] == "local-small"
    assert metadata["x-omnirelay-provider"] == "local"


async def test_request_id_is_generated_when_absent(channel: aio.Channel) -> None:
    stub = completion_pb2_grpc.CompletionServiceStub(channel)
    first = await stub.Complete(request(max_tokens=1))
    second = await stub.Complete(request(max_tokens=1))
    assert len(first.route.request_id) == 32
    assert first.route.request_id != second.route.request_id


async def test_n_choices(channel: aio.Channel) -> None:
    stub = completion_pb2_grpc.CompletionServiceStub(channel)
    response = await stub.Complete(request(n=3, max_tokens=4))
    assert [c.index for c in response.choices] == [0, 1, 2]
    assert len({text(response, i) for i in range(3)}) == 3
    assert response.usage.output_tokens == 12


async def test_stop_sequences(channel: aio.Channel) -> None:
    stub = completion_pb2_grpc.CompletionServiceStub(channel)
    full = text(await stub.Complete(request(max_tokens=20)))
    stop = " " + full.split()[8]
    cut = await stub.Complete(request(max_tokens=20, stop=[stop]))
    assert text(cut) == full[: full.find(stop)]
    assert cut.choices[0].finish_reason == types_pb2.FINISH_REASON_STOP


async def test_aliases_and_direct_provider_calls_resolve(channel: aio.Channel) -> None:
    stub = completion_pb2_grpc.CompletionServiceStub(channel)
    by_alias = await stub.Complete(request(model="powerful", max_tokens=2))
    assert by_alias.route.resolved_model == "local-large"
    assert by_alias.route.requested_model == "powerful"
    default = await stub.Complete(request(model="", max_tokens=2))
    assert default.route.resolved_model == "local-small"
    direct = await stub.Complete(request(model="local/custom-thing", max_tokens=2))
    assert (direct.route.resolved_model, direct.route.provider) == ("local/custom-thing", "local")


async def test_temperature_and_seed_change_the_text(channel: aio.Channel) -> None:
    stub = completion_pb2_grpc.CompletionServiceStub(channel)
    a = text(await stub.Complete(request(max_tokens=8, temperature=0.2, seed=7)))
    b = text(await stub.Complete(request(max_tokens=8, temperature=0.2, seed=7)))
    c = text(await stub.Complete(request(max_tokens=8, temperature=0.9, seed=7)))
    d = text(await stub.Complete(request(max_tokens=8, temperature=0.2, seed=8)))
    assert a == b
    assert len({a, c, d}) == 3


async def test_preset_fills_unset_parameters_and_request_values_win(
    start_server: StartServer, settings: Settings
) -> None:
    presets = {**settings.presets, "short": Sampling(max_tokens=3, temperature=0.4)}
    _, channel = await start_server(dataclasses.replace(settings, presets=presets))
    stub = completion_pb2_grpc.CompletionServiceStub(channel)
    preset_only = await stub.Complete(
        completion_pb2.CompleteRequest(model="local-small", messages=[user("x")], preset="short")
    )
    assert preset_only.usage.output_tokens == 3
    explicit = await stub.Complete(
        completion_pb2.CompleteRequest(
            model="local-small",
            messages=[user("x")],
            preset="short",
            sampling=types_pb2.SamplingParams(temperature=0.4),
        )
    )
    assert text(explicit) == text(preset_only)
    overridden = await stub.Complete(
        completion_pb2.CompleteRequest(
            model="local-small",
            messages=[user("x")],
            preset="short",
            sampling=types_pb2.SamplingParams(max_tokens=5),
        )
    )
    assert overridden.usage.output_tokens == 5
    # Temperature still comes from the preset: same text start as the preset-only call.
    assert text(overridden).startswith(text(preset_only))


async def test_model_preset_wins_over_global_preset_of_the_same_name(channel: aio.Channel) -> None:
    stub = completion_pb2_grpc.CompletionServiceStub(channel)
    # local-large has its own "creative" (temperature 1.0); the global one is 1.2.
    with_preset = await stub.Complete(
        completion_pb2.CompleteRequest(
            model="local-large",
            messages=[user("x")],
            preset="creative",
            sampling=types_pb2.SamplingParams(max_tokens=6),
        )
    )
    model_temp = await stub.Complete(
        request("x", model="local-large", max_tokens=6, temperature=1.0, top_p=0.9)
    )
    global_temp = await stub.Complete(
        request("x", model="local-large", max_tokens=6, temperature=1.2, top_p=0.98)
    )
    assert text(with_preset) == text(model_temp)
    assert text(with_preset) != text(global_temp)


async def test_unsupported_parameter_is_dropped_with_a_warning(channel: aio.Channel) -> None:
    stub = completion_pb2_grpc.CompletionServiceStub(channel)
    fmt = types_pb2.ResponseFormat(type=types_pb2.ResponseFormat.TYPE_JSON_OBJECT)
    # A direct provider/model call has no registry capabilities to check, so the provider's own
    # parameter support decides (a registry model without json_mode is refused up front instead).
    response = await stub.Complete(request(model="local/small", max_tokens=2, response_format=fmt))
    assert list(response.route.dropped_parameters) == ["response_format"]
    assert response.usage.output_tokens == 2


async def test_embed_count_tokens_and_list_models(server: tuple[App, aio.Channel]) -> None:
    _, channel = server
    stub = completion_pb2_grpc.CompletionServiceStub(channel)
    embedded = await stub.Embed(completion_pb2.EmbedRequest(model="fast", inputs=["a b", "c"], dimensions=8))
    assert [len(e.values) for e in embedded.embeddings] == [8, 8]
    assert embedded.usage.input_tokens == 3
    assert embedded.route.resolved_model == "local-small"
    counted = await stub.CountTokens(
        completion_pb2.CountTokensRequest(model="fast", messages=[user("one two three")])
    )
    assert counted.input_tokens == 6
    assert counted.resolved_model == "local-small"
    assert not counted.estimated
    models = await stub.ListModels(completion_pb2.ListModelsRequest())
    assert [m.name for m in models.models] == ["local-large", "local-small"]
    reasoning = await stub.ListModels(
        completion_pb2.ListModelsRequest(capabilities=[types_pb2.CAPABILITY_REASONING])
    )
    assert [m.name for m in reasoning.models] == ["local-large"]
    nobody = await stub.ListModels(completion_pb2.ListModelsRequest(provider="openai"))
    assert list(nobody.models) == []


async def test_message_size_limit_comes_from_settings(start_server: StartServer, settings: Settings) -> None:
    _, channel = await start_server(with_server(settings, max_receive_message_bytes=2048))
    stub = completion_pb2_grpc.CompletionServiceStub(channel)
    assert (await stub.Complete(request("short", max_tokens=1))).usage.output_tokens == 1
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Complete(request("word " * 1000, max_tokens=1))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_default_valued_parameters_need_no_support(channel: aio.Channel) -> None:
    stub = completion_pb2_grpc.CompletionServiceStub(channel)
    text_format = types_pb2.ResponseFormat(type=types_pb2.ResponseFormat.TYPE_TEXT)
    req = request(max_tokens=2, n=1, response_format=text_format, top_logprobs=0)
    req.routing.strict_parameters = True
    response = await stub.Complete(req)
    assert list(response.route.dropped_parameters) == []
    assert response.usage.output_tokens == 2
