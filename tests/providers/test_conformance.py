"""One conformance suite, run against every adapter over real HTTP to the simulator.

Per-provider files hold only quirks; everything every provider must do is here:
unary, streaming equal to unary, max tokens, stop, tools, JSON mode, every
injected fault mapped to its error class and gRPC code, timeouts, and a
cancel that reaches the upstream.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import grpc
import pytest

from omnirelay import errors
from omnirelay.config.schema import HttpProviderSettings
from omnirelay.domain import (
    CompletionRequest,
    Deployment,
    FinishReason,
    Message,
    ProviderCall,
    ResponseFormat,
    ResponseFormatType,
    Role,
    Sampling,
    StreamChunk,
    TextDelta,
    TextPart,
    ToolChoice,
    ToolChoiceMode,
    ToolSpec,
)
from omnirelay.providers.assemble import Assembler
from omnirelay.providers.base import ChatProvider
from omnirelay.providers.registry import ProviderRegistry
from omnirelay.sim.server import RunningSim

SECRET = "sk-test-secret-never-shown"


@dataclass(frozen=True)
class Target:
    id: str
    kind: str
    path: str = ""
    flavor: str = ""
    api_version: str = ""


TARGETS = [
    Target("openai", "openai", "/v1"),
    Target("azure", "azure", api_version="2024-10-21"),
    Target("anthropic", "anthropic"),
    Target("gemini", "gemini"),
    Target("ollama", "ollama"),
    Target("ollama-openai-compat", "openai", "/v1", flavor="ollama"),
]


@pytest.fixture(params=TARGETS, ids=[t.id for t in TARGETS])
def target(request: pytest.FixtureRequest) -> Target:
    param: Target = request.param
    return param


Make = Callable[..., ChatProvider]


@pytest.fixture
async def make(sim: RunningSim, target: Target) -> AsyncIterator[Make]:
    made: list[ChatProvider] = []

    def build(total_timeout: float = 30.0) -> ChatProvider:
        settings = HttpProviderSettings(
            name=f"sim-{target.id}",
            kind=target.kind,
            base_url=sim.base_url + target.path,
            api_key=SECRET,
            flavor=target.flavor,
            api_version=target.api_version,
            total_timeout=total_timeout,
        )
        provider = ProviderRegistry.from_settings({settings.name: settings}).get(settings.name)
        made.append(provider)
        return provider

    yield build
    for provider in made:
        await provider.aclose()


def call(model: str = "sim-model", prompt: str = "tell me about relays", **sampling: object) -> ProviderCall:
    return call_with(
        CompletionRequest(model=model, messages=(Message(Role.USER, (TextPart(prompt),)),)), **sampling
    )


def call_with(request: CompletionRequest, **sampling: object) -> ProviderCall:
    return ProviderCall(request, Sampling(**sampling), Deployment("sim", "sim", request.model))  # type: ignore[arg-type]


async def collect(provider: ChatProvider, c: ProviderCall) -> Assembler:
    assembler = Assembler()
    async for chunk in provider.stream(c):
        assembler.add(chunk)
    return assembler


async def texts(stream: AsyncIterator[StreamChunk], into: list[str]) -> None:
    async for chunk in stream:
        if isinstance(chunk, TextDelta):
            into.append(chunk.text)


async def test_unary_text_usage_and_finish(make: Make) -> None:
    result = await make().complete(call())
    choice = result.choices[0]
    assert len(choice.text.split()) == 12
    assert choice.finish_reason is FinishReason.STOP
    assert result.usage.output_tokens == 12
    assert result.usage.input_tokens > 0


async def test_stream_assembles_to_the_unary_answer(make: Make) -> None:
    provider = make()
    unary = await provider.complete(call())
    streamed = (await collect(provider, call())).result()
    assert streamed.choices[0].text == unary.choices[0].text
    assert streamed.choices[0].finish_reason is unary.choices[0].finish_reason
    assert streamed.usage.output_tokens == unary.usage.output_tokens
    assert streamed.usage.input_tokens == unary.usage.input_tokens


async def test_max_tokens_is_length(make: Make) -> None:
    provider = make()
    unary = await provider.complete(call(max_tokens=5))
    assert unary.choices[0].finish_reason is FinishReason.LENGTH
    assert unary.usage.output_tokens == 5
    streamed = (await collect(provider, call(max_tokens=5))).result()
    assert streamed.choices[0].finish_reason is FinishReason.LENGTH
    assert streamed.usage.output_tokens == 5


async def test_stop_sequence(make: Make) -> None:
    provider = make()
    full = (await provider.complete(call())).choices[0].text
    stop = " " + full.split()[4]
    cut = await provider.complete(call(stop=(stop,)))
    assert cut.choices[0].text == full[: full.find(stop)]
    assert cut.choices[0].finish_reason is FinishReason.STOP


async def test_tool_call_unary_and_streamed(make: Make) -> None:
    tool = ToolSpec(
        "lookup", "look a thing up", {"type": "object", "properties": {"query": {"type": "string"}}}
    )
    request = CompletionRequest(
        model="sim-model+tool=lookup",
        messages=(Message(Role.USER, (TextPart("find relays"),)),),
        tools=(tool,),
        tool_choice=ToolChoice(ToolChoiceMode.REQUIRED),
    )
    provider = make()
    unary = (await provider.complete(call_with(request))).choices[0]
    assert unary.finish_reason is FinishReason.TOOL_CALLS
    assert [c.name for c in unary.tool_calls] == ["lookup"]
    assert set(json.loads(unary.tool_calls[0].arguments_json)) == {"query"}
    streamed = (await collect(provider, call_with(request))).result().choices[0]
    assert streamed.finish_reason is FinishReason.TOOL_CALLS
    assert json.loads(streamed.tool_calls[0].arguments_json) == json.loads(unary.tool_calls[0].arguments_json)


async def test_json_mode_or_declared_unsupported(make: Make) -> None:
    provider = make()
    if "response_format" in provider.unsupported_parameters:
        return  # The gateway drops it with a warning, or refuses it in strict mode (service tests).
    fmt = ResponseFormat(ResponseFormatType.JSON_OBJECT)
    text = (await provider.complete(call(response_format=fmt))).choices[0].text
    assert isinstance(json.loads(text), dict)


FAULTS = [
    ("401", errors.UpstreamAuthenticationError, grpc.StatusCode.UNAUTHENTICATED),
    ("403", errors.UpstreamPermissionError, grpc.StatusCode.PERMISSION_DENIED),
    ("404", errors.UpstreamNotFoundError, grpc.StatusCode.NOT_FOUND),
    ("400", errors.UpstreamInvalidRequestError, grpc.StatusCode.INVALID_ARGUMENT),
    ("context", errors.ContextLengthExceededError, grpc.StatusCode.INVALID_ARGUMENT),
    ("quota", errors.QuotaExhaustedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    ("429", errors.RateLimitedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    ("500", errors.UpstreamServerError, grpc.StatusCode.UNAVAILABLE),
    ("503", errors.OverloadedError, grpc.StatusCode.UNAVAILABLE),
    ("malformed", errors.MalformedResponseError, grpc.StatusCode.UNAVAILABLE),
]


@pytest.mark.parametrize(("fault", "cls", "code"), FAULTS, ids=[f[0] for f in FAULTS])
async def test_unary_faults(
    make: Make, fault: str, cls: type[errors.UpstreamError], code: grpc.StatusCode
) -> None:
    with pytest.raises(errors.UpstreamError) as caught:
        await make().complete(call(f"sim-model+fault={fault}+retry_after=2"))
    error = caught.value
    assert isinstance(error, cls), f"{type(error).__name__}: {error.message}"
    assert error.code == code
    assert SECRET not in error.message
    if fault == "429":
        assert error.retry_after_seconds == 2.0
        assert error.retryable


async def test_upstream_request_id_is_kept(make: Make) -> None:
    with pytest.raises(errors.UpstreamError) as caught:
        await make().complete(call("sim-model+fault=500"))
    assert caught.value.upstream_request_id.startswith("sim-")


@pytest.mark.parametrize("fault", ["drop", "stream_error", "malformed"])
async def test_stream_faults_after_some_tokens(make: Make, fault: str) -> None:
    received: list[str] = []
    with pytest.raises(errors.UpstreamError) as caught:
        await texts(make().stream(call(f"sim-model+fault={fault}+after=3+tokens=10")), received)
    assert caught.value.retryable
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert len(received) == 3
    assert SECRET not in caught.value.message


async def test_stream_fault_before_any_token(make: Make) -> None:
    with pytest.raises(errors.RateLimitedError):
        async for _ in make().stream(call("sim-model+fault=429+retry_after=1")):
            pass


async def test_hang_hits_the_provider_timeout(make: Make) -> None:
    with pytest.raises(errors.UpstreamTimeoutError):
        await make(total_timeout=0.3).complete(call("sim-model+fault=hang"))


async def test_cancel_reaches_the_upstream(make: Make, sim: RunningSim) -> None:
    stream = make().stream(call("sim-model+itl=30+tokens=200"))
    seen = 0
    async for chunk in stream:
        if isinstance(chunk, TextDelta):
            seen += 1
            if seen == 3:
                break
    await stream.aclose()
    for _ in range(100):
        if sim.simulator.served and sim.simulator.served[-1].disconnected:
            break
        await asyncio.sleep(0.02)
    served = sim.simulator.served[-1]
    assert served.disconnected
    assert not served.completed
    assert served.pieces_sent < 200
