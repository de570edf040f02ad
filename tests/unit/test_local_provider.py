"""The local provider: deterministic, honours its parameters, counts honestly."""

from __future__ import annotations

import asyncio
import time

import pytest

from omnirelay.config import LocalProviderSettings
from omnirelay.domain import (
    CompletionRequest,
    Deployment,
    FinishChunk,
    FinishReason,
    Message,
    ProviderCall,
    Role,
    Sampling,
    TextDelta,
    TextPart,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    ToolChoiceMode,
    ToolSpec,
    UsageChunk,
)
from omnirelay.providers import tokenizer
from omnirelay.providers.local import LocalProvider

DEPLOYMENT = Deployment("local/small", "local", "small")


def call(prompt: str = "tell me a story", **sampling: object) -> ProviderCall:
    request = CompletionRequest(model="local-small", messages=(Message(Role.USER, (TextPart(prompt),)),))
    return ProviderCall(request, Sampling(**sampling), DEPLOYMENT)  # type: ignore[arg-type]


def provider(**knobs: float) -> LocalProvider:
    return LocalProvider(LocalProviderSettings(name="local", **knobs))  # type: ignore[arg-type]


async def test_same_request_same_text_and_different_seed_or_temperature_differ() -> None:
    p = provider()
    base = (await p.complete(call(seed=1, temperature=0.5))).choices[0].text
    assert base == (await p.complete(call(seed=1, temperature=0.5))).choices[0].text
    assert base != (await p.complete(call(seed=2, temperature=0.5))).choices[0].text
    assert base != (await p.complete(call(seed=1, temperature=0.9))).choices[0].text
    assert base != (await p.complete(call("another prompt", seed=1, temperature=0.5))).choices[0].text


async def test_max_tokens_bounds_output_and_usage_is_honest() -> None:
    result = await provider().complete(call(max_tokens=7))
    choice = result.choices[0]
    assert choice.finish_reason is FinishReason.LENGTH
    assert tokenizer.count_text(choice.text) == 7
    assert result.usage.output_tokens == 7
    prompt = call().request.messages
    assert result.usage.input_tokens == tokenizer.count_messages(prompt) > 0


async def test_default_length_ends_with_stop() -> None:
    result = await provider(default_output_tokens=5).complete(call())
    assert result.choices[0].finish_reason is FinishReason.STOP
    assert result.usage.output_tokens == 5


async def test_stop_sequence_cuts_text_before_it() -> None:
    p = provider()
    full = (await p.complete(call(max_tokens=30))).choices[0].text
    words = full.split()
    stop = " " + words[10]
    expected = full[: full.find(stop)]
    result = (await p.complete(call(max_tokens=30, stop=(stop,)))).choices[0]
    assert result.text == expected
    assert stop not in result.text
    assert result.finish_reason is FinishReason.STOP


async def test_stream_never_shows_text_past_a_stop_sequence() -> None:
    p = provider()
    full = (await p.complete(call(max_tokens=40))).choices[0].text
    # A stop spanning two tokens: the stream must hold back the first until it knows.
    first, second = full.split()[20:22]
    stop = f"{first} {second}"
    expected = full[: full.find(stop)]
    streamed = "".join(
        [c.text async for c in p.stream(call(max_tokens=40, stop=(stop,))) if isinstance(c, TextDelta)]
    )
    assert streamed == expected


async def test_n_choices_differ_and_stream_interleaves_them() -> None:
    p = provider()
    result = await p.complete(call(n=3, max_tokens=5))
    assert [c.index for c in result.choices] == [0, 1, 2]
    assert len({c.text for c in result.choices}) == 3
    assert result.usage.output_tokens == 15
    chunks = [c async for c in p.stream(call(n=3, max_tokens=5))]
    deltas = [c.choice_index for c in chunks if isinstance(c, TextDelta)]
    assert deltas[:3] == [0, 1, 2]
    per_choice = {
        i: "".join(c.text for c in chunks if isinstance(c, TextDelta) and c.choice_index == i)
        for i in range(3)
    }
    assert per_choice == {c.index: c.text for c in result.choices}
    assert [c.choice_index for c in chunks if isinstance(c, FinishChunk)] == [0, 1, 2]
    assert isinstance(chunks[-1], UsageChunk)
    assert chunks[-1].usage == result.usage


async def test_forced_tool_call_fills_schema_properties() -> None:
    tool = ToolSpec("lookup", "find a thing", {"type": "object", "properties": {"city": {"type": "string"}}})
    base = call(max_tokens=5)
    request = CompletionRequest(
        model="local-small",
        messages=base.request.messages,
        tools=(tool,),
        tool_choice=ToolChoice(ToolChoiceMode.REQUIRED),
    )
    p = provider()
    result = await p.complete(ProviderCall(request, base.sampling, DEPLOYMENT))
    choice = result.choices[0]
    assert choice.finish_reason is FinishReason.TOOL_CALLS
    assert choice.tool_calls[0].name == "lookup"
    assert choice.tool_calls[0].arguments_json.startswith('{"city":')
    chunks = [c async for c in p.stream(ProviderCall(request, base.sampling, DEPLOYMENT))]
    args = "".join(c.arguments_delta for c in chunks if isinstance(c, ToolCallDelta))
    assert args == choice.tool_calls[0].arguments_json


async def test_logprobs_are_one_per_token_when_asked() -> None:
    result = await provider().complete(call(max_tokens=6, logprobs=True))
    logprobs = result.choices[0].logprobs
    assert logprobs is not None
    assert len(logprobs) == 6
    assert all(lp.logprob <= 0 for lp in logprobs)
    assert (await provider().complete(call(max_tokens=6))).choices[0].logprobs is None


async def test_latency_knobs_delay_first_token_and_pace_the_rest() -> None:
    p = provider(ttft_ms=80, tokens_per_second=100)
    started = time.perf_counter()
    arrivals = []
    async for chunk in p.stream(call(max_tokens=5)):
        if isinstance(chunk, TextDelta):
            arrivals.append(time.perf_counter() - started)
    assert arrivals[0] >= 0.08
    # Four more tokens at 100/s take at least 40 ms after the first.
    assert arrivals[-1] - arrivals[0] >= 0.04


async def test_closing_the_stream_stops_generation() -> None:
    p = provider(tokens_per_second=200)
    stream = p.stream(call(max_tokens=1000))
    async for chunk in stream:
        if isinstance(chunk, TextDelta) and p.tokens_generated >= 3:
            break
    await stream.aclose()
    generated = p.tokens_generated
    assert p.active_streams == 0
    await asyncio.sleep(0.05)
    assert p.tokens_generated == generated < 10


@pytest.mark.parametrize("dimensions", [0, 16])
async def test_embeddings_are_unit_vectors_and_deterministic(dimensions: int) -> None:
    p = provider(embedding_dimensions=32)
    first = await p.embed(DEPLOYMENT, ["alpha", "beta"], dimensions)
    again = await p.embed(DEPLOYMENT, ["alpha", "beta"], dimensions)
    assert first.vectors == again.vectors
    assert len(first.vectors[0]) == (dimensions or 32)
    assert abs(sum(v * v for v in first.vectors[0]) - 1.0) < 1e-9
    assert first.vectors[0] != first.vectors[1]
    assert first.usage.input_tokens == 2


async def test_a_repeated_plain_call_reuses_its_answer_and_still_counts_what_it_generated() -> None:
    p = provider()
    first = await p.complete(call(seed=3, max_tokens=6))
    generated = p.tokens_generated
    again = await p.complete(call(seed=3, max_tokens=6))
    assert again.choices == first.choices
    assert again.usage == first.usage
    assert p.tokens_generated == 2 * generated == 12
    # What the answer depends on is part of what is reused: length and choice count change it.
    longer = await p.complete(call(seed=3, max_tokens=9))
    assert tokenizer.count_text(longer.choices[0].text) == 9
    assert longer.choices[0].text.startswith(first.choices[0].text)
    two = await p.complete(call(seed=3, max_tokens=6, n=2))
    assert len(two.choices) == 2
    assert two.usage.output_tokens == 12


async def test_tool_calls_in_the_prompt_are_counted_even_when_the_text_is_the_same() -> None:
    p = provider()
    asked = Message(Role.USER, (TextPart("tell me a story"),))

    async def input_tokens(arguments: str) -> int:
        answered = Message(Role.ASSISTANT, (), tool_calls=(ToolCall("call_1", "lookup", arguments),))
        request = CompletionRequest(model="local-small", messages=(asked, answered))
        result = await p.complete(ProviderCall(request, Sampling(seed=4, max_tokens=3), DEPLOYMENT))
        assert result.usage.input_tokens == tokenizer.count_messages(request.messages)
        return result.usage.input_tokens

    # The same roles and texts, so the same text is generated; the usage still differs.
    assert await input_tokens('{"city":"Paris"}') < await input_tokens('{"city":"Paris and Lyon and Nice"}')
