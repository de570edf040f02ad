"""The simulator's ``fail_first=N``: a fault for the first N requests of one model string, then recovery.

This is what retry and circuit-breaker (half-open) tests stand on, so it is
checked here over real HTTP, through the real adapters, request by request,
and against the record the simulator publishes at ``/_sim/stats``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from omnirelay import errors
from omnirelay.config.schema import HttpProviderSettings
from omnirelay.domain import CompletionRequest, Deployment, Message, ProviderCall, Role, Sampling, TextPart
from omnirelay.providers.assemble import Assembler
from omnirelay.providers.base import ChatProvider
from omnirelay.providers.registry import ProviderRegistry
from omnirelay.sim.server import RunningSim

SECRET = "sk-test-secret-never-shown"
OK = "ok"


@dataclass(frozen=True)
class Target:
    id: str
    kind: str
    format: str
    path: str = ""
    api_version: str = ""


TARGETS = [
    Target("openai", "openai", "openai", "/v1"),
    Target("azure", "azure", "azure", api_version="2024-10-21"),
    Target("anthropic", "anthropic", "anthropic"),
    Target("gemini", "gemini", "gemini"),
    Target("ollama", "ollama", "ollama"),
]
BY_ID = {t.id: t for t in TARGETS}

Make = Callable[[Target], ChatProvider]


@pytest.fixture(params=TARGETS, ids=[t.id for t in TARGETS])
def target(request: pytest.FixtureRequest) -> Target:
    param: Target = request.param
    return param


@pytest.fixture
async def make(sim: RunningSim) -> AsyncIterator[Make]:
    made: list[ChatProvider] = []

    def build(target: Target) -> ChatProvider:
        settings = HttpProviderSettings(
            name=f"sim-{target.id}",
            kind=target.kind,
            base_url=sim.base_url + target.path,
            api_key=SECRET,
            api_version=target.api_version,
            total_timeout=30.0,
        )
        provider = ProviderRegistry.from_settings({settings.name: settings}).get(settings.name)
        made.append(provider)
        return provider

    yield build
    for provider in made:
        await provider.aclose()


def call(model: str) -> ProviderCall:
    request = CompletionRequest(
        model=model, messages=(Message(Role.USER, (TextPart("tell me about relays"),)),)
    )
    return ProviderCall(request, Sampling(), Deployment("sim", "sim", model))


async def unary(provider: ChatProvider, model: str) -> str:
    """``ok``, or the name of the error class the adapter raised."""
    try:
        result = await provider.complete(call(model))
    except errors.UpstreamError as exc:
        return type(exc).__name__
    assert result.choices[0].text
    return OK


async def streamed(provider: ChatProvider, model: str) -> str:
    assembler = Assembler()
    try:
        async for chunk in provider.stream(call(model)):
            assembler.add(chunk)
    except errors.UpstreamError as exc:
        return type(exc).__name__
    assert assembler.result().choices[0].text
    return OK


async def stats(sim: RunningSim) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=sim.base_url) as client:
        response = await client.get("/_sim/stats")
    response.raise_for_status()
    data: dict[str, Any] = response.json()
    return data


def column(data: dict[str, Any], key: str) -> list[Any]:
    return [row[key] for row in data["served"]]


# --- fails N times, then recovers, in every wire format -----------------------------------------------


async def test_unary_fails_first_n_then_recovers(make: Make, target: Target, sim: RunningSim) -> None:
    provider = make(target)
    model = "sim-model+fault=503+fail_first=2"
    outcomes = [await unary(provider, model) for _ in range(4)]
    assert outcomes == ["OverloadedError", "OverloadedError", OK, OK]
    data = await stats(sim)
    assert data["requests"] == 4
    assert data["completed"] == 2
    assert data["by_format"] == {target.format: 4}
    assert column(data, "fault") == ["503", "503", "", ""]
    assert column(data, "completed") == [False, False, True, True]
    assert column(data, "stream") == [False] * 4


async def test_stream_fails_first_n_then_recovers(make: Make, target: Target, sim: RunningSim) -> None:
    provider = make(target)
    model = "sim-model+fault=429+fail_first=1"
    outcomes = [await streamed(provider, model) for _ in range(3)]
    assert outcomes == ["RateLimitedError", OK, OK]
    data = await stats(sim)
    assert column(data, "fault") == ["429", "", ""]
    assert column(data, "completed") == [False, True, True]
    assert column(data, "stream") == [True] * 3
    assert column(data, "pieces_sent") == [0, 12, 12]


@pytest.mark.parametrize("target_id", ["openai", "anthropic"])
async def test_mid_stream_fault_fails_first_n_then_recovers(
    make: Make, sim: RunningSim, target_id: str
) -> None:
    provider = make(BY_ID[target_id])
    model = "sim-model+fault=drop+after=2+fail_first=1"
    outcomes = [await streamed(provider, model) for _ in range(2)]
    assert outcomes == ["StreamBrokenError", OK]
    data = await stats(sim)
    assert column(data, "fault") == ["drop", ""]
    assert column(data, "pieces_sent") == [2, 12]
    assert column(data, "completed") == [False, True]


# --- what is counted, and when the count starts again -------------------------------------------------


async def test_unary_and_stream_share_the_count_of_one_model_string(make: Make, sim: RunningSim) -> None:
    provider = make(BY_ID["openai"])
    model = "sim-model+fault=500+fail_first=2"
    outcomes = [
        await unary(provider, model),
        await streamed(provider, model),
        await streamed(provider, model),
        await unary(provider, model),
    ]
    assert outcomes == ["UpstreamServerError", "UpstreamServerError", OK, OK]
    assert column(await stats(sim), "stream") == [False, True, True, False]


async def test_each_exact_model_string_has_its_own_count(make: Make, sim: RunningSim) -> None:
    provider = make(BY_ID["anthropic"])
    first, other = "sim-model+fault=503+fail_first=1", "sim-model+fault=503+fail_first=1+ttft=0"
    outcomes = [
        await unary(provider, first),
        await unary(provider, other),
        await unary(provider, first),
        await unary(provider, other),
    ]
    assert outcomes == ["OverloadedError", "OverloadedError", OK, OK]
    assert column(await stats(sim), "fault") == ["503", "503", "", ""]


async def test_the_count_is_per_simulator_across_wire_formats(make: Make, sim: RunningSim) -> None:
    model = "sim-model+fault=503+fail_first=1"
    assert await unary(make(BY_ID["openai"]), model) == "OverloadedError"
    assert await unary(make(BY_ID["anthropic"]), model) == OK
    data = await stats(sim)
    assert column(data, "format") == ["openai", "anthropic"]
    assert column(data, "fault") == ["503", ""]


async def test_reset_starts_the_count_again(make: Make, sim: RunningSim) -> None:
    provider = make(BY_ID["openai"])
    model = "sim-model+fault=503+fail_first=1"
    assert [await unary(provider, model) for _ in range(2)] == ["OverloadedError", OK]
    async with httpx.AsyncClient(base_url=sim.base_url) as client:
        (await client.post("/_sim/reset")).raise_for_status()
    assert (await stats(sim))["requests"] == 0
    assert [await unary(provider, model) for _ in range(2)] == ["OverloadedError", OK]
    assert column(await stats(sim), "fault") == ["503", ""]


async def test_without_fail_first_every_request_faults(make: Make, sim: RunningSim) -> None:
    provider = make(BY_ID["anthropic"])
    outcomes = [await unary(provider, "sim-model+fault=503") for _ in range(3)]
    assert outcomes == ["OverloadedError"] * 3
    assert column(await stats(sim), "fault") == ["503"] * 3


async def test_fail_first_zero_never_faults(make: Make, sim: RunningSim) -> None:
    provider = make(BY_ID["openai"])
    assert [await unary(provider, "sim-model+fault=503+fail_first=0") for _ in range(2)] == [OK, OK]
    assert column(await stats(sim), "fault") == ["", ""]


@pytest.mark.parametrize(
    ("path", "body", "headers"),
    [
        ("/v1/chat/completions", {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}, {}),
        (
            "/v1/messages",
            {"model": "claude", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]},
            {"anthropic-version": "2023-06-01"},
        ),
    ],
    ids=["openai", "anthropic"],
)
async def test_header_options_count_by_the_bare_model_string(
    sim: RunningSim, path: str, body: dict[str, Any], headers: dict[str, str]
) -> None:
    # Options from x-sim-options are not part of the counted string: the model name alone is.
    sent = {**headers, "x-sim-options": "fault=429;retry_after=1;fail_first=1"}
    async with httpx.AsyncClient(base_url=sim.base_url) as client:
        statuses = [(await client.post(path, json=body, headers=sent)).status_code for _ in range(3)]
    assert statuses == [429, 200, 200]
    assert column(await stats(sim), "fault") == ["429", "", ""]
