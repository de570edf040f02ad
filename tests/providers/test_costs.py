"""Cost accounting is exact for every provider, unary and streamed, on real recorded wire traffic.

Each case starts the gateway in-process with one provider kind pointed at a replay server
(tests/providers/replay.py) that answers with a recorded response from
../shared/fixtures/providers/, calls Complete or StreamComplete over a real grpc.aio channel,
and checks the usage the caller gets (and, for a stream, the one usage event) and the call's
record in the usage ledger against values computed here, independently, from the fixture's own
raw usage fields: the provider's numbers read with json.loads, normalised to the gateway's
convention (input includes cache reads and writes, output includes reasoning), priced with
fractions.Fraction at deliberately awkward prices and rounded half up to micro-USD.
Nothing here calls the gateway's pricing or parsing code to get an expected value.

The last test fails when a fixture is added to the shared directory without being placed here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import httpx
import pytest
from grpc import aio

from omnirelay.config import HttpProviderSettings, ModelSettings, Settings
from omnirelay.config.routing import DeploymentSettings, PricingSettings
from omnirelay_client.v1 import (
    completion_pb2,
    completion_pb2_grpc,
    stream_pb2,
    stream_pb2_grpc,
    types_pb2,
    usage_pb2,
    usage_pb2_grpc,
)
from tests.conftest import StartServer
from tests.helpers import request, stream_request, user
from tests.providers.conftest import FIXTURES, fixture_bytes, fixture_http
from tests.providers.replay import ReplayServer, kind_of, pieces

MODEL = "replay-model"
UPSTREAM_MODEL = "replay-upstream"
PROMPT = "How much did this answer cost, to the micro-dollar?"

# USD per million tokens. Distinct for every token kind, with enough decimals that almost no
# cost is a whole number of micro-dollars, so rounding is exercised on every case.
PRICES = {
    "input": "2.537",
    "output": "10.113",
    "cached_input": "0.2811",
    "cache_write": "3.1719",
    "reasoning": "13.0071",
}
# Only the two required prices: cached reads and cache writes fall back to input, reasoning to output.
PLAIN_PRICES = {"input": "2.537", "output": "10.113"}

# name -> (provider kind, base URL path, api_version, flavor)
PROVIDERS: Mapping[str, tuple[str, str, str, str]] = {
    "openai": ("openai", "/v1", "", ""),
    "azure": ("azure", "", "2024-10-21", ""),
    "anthropic": ("anthropic", "", "", ""),
    "gemini": ("gemini", "", "", ""),
    "ollama": ("ollama", "", "", ""),
    # Ollama's OpenAI-compatible /v1, through the OpenAI adapter's ollama flavor.
    "ollama-v1": ("openai", "/v1", "", "ollama"),
}
# How each provider name reports usage on the wire.
DIALECT = {
    "openai": "openai",
    "azure": "openai",
    "ollama-v1": "openai",
    "anthropic": "anthropic",
    "gemini": "gemini",
    "ollama": "ollama",
}
# Where the gateway must have sent the call, unary and streamed.
PATHS = {
    "openai": ("/v1/chat/completions", "/v1/chat/completions"),
    "azure": (
        f"/openai/deployments/{UPSTREAM_MODEL}/chat/completions",
        f"/openai/deployments/{UPSTREAM_MODEL}/chat/completions",
    ),
    "anthropic": ("/v1/messages", "/v1/messages"),
    "gemini": (
        f"/v1beta/models/{UPSTREAM_MODEL}:generateContent",
        f"/v1beta/models/{UPSTREAM_MODEL}:streamGenerateContent",
    ),
    "ollama": ("/api/chat", "/api/chat"),
    "ollama-v1": ("/v1/chat/completions", "/v1/chat/completions"),
}

# --- the fixtures, by what the gateway does with them ---------------------------------------------

UNARY = {
    "openai/chat_completion.json": "openai",
    "openai/chat_completion_finish_reason_length.json": "openai",
    "openai/chat_completion_tool_calls_strict.json": "openai",
    "openai/chat_completion_tool_calls_http_200.http": "openai",
    "azure/chat_completion_http_200.http": "azure",
    "anthropic/messages_response.json": "anthropic",
    "anthropic/messages_response_cache_usage.json": "anthropic",
    "anthropic/messages_response_stop_sequence.json": "anthropic",
    "anthropic/messages_response_tool_use.json": "anthropic",
    "gemini/generate_content.json": "gemini",
    "gemini/generate_content_function_call.json": "gemini",
    "gemini/generate_content_stop_sequence.json": "gemini",
    "ollama/chat_response.json": "ollama",
    "ollama/chat_response_docs.json": "ollama",
    "ollama/chat_response_tool_calls_docs.json": "ollama",
    "ollama/openai_compat_chat_response.json": "ollama-v1",
}
STREAMS = {
    "openai/chat_stream_finish_reason_length.sse": "openai",
    "openai/chat_stream_include_usage.sse": "openai",
    "openai/chat_stream_logprobs.sse": "openai",
    "openai/chat_stream_tool_call.sse": "openai",
    "openai/chat_stream_tool_call_include_usage_http_200.http": "openai",
    "anthropic/messages_stream.sse": "anthropic",
    "anthropic/messages_stream_docs_basic.sse": "anthropic",
    "anthropic/messages_stream_docs_tool_use.sse": "anthropic",
    "anthropic/messages_stream_thinking.sse": "anthropic",
    "anthropic/messages_stream_tool_use.sse": "anthropic",
    "gemini/stream_generate_content.sse": "gemini",
    "gemini/stream_generate_content_function_call.sse": "gemini",
    "gemini/stream_generate_content_thinking.sse": "gemini",
    "ollama/chat_stream.ndjson": "ollama",
    "ollama/chat_stream_tool_calls.ndjson": "ollama",
    "ollama/generate_stream_with_final_stats.ndjson": "ollama",
}
# Complete streams whose provider never reported usage: the gateway must estimate and say so.
STREAMS_WITHOUT_USAGE = {
    "azure/chat_stream_async_filter_passed.sse": "azure",
    "ollama/openai_compat_chat_stream.sse": "ollama-v1",
    "anthropic/messages_stream_docs_thinking.sse": "anthropic",
    "ollama/generate_stream.ndjson": "ollama",
}
EMBEDDINGS = {"openai/embeddings_response_base64.json": "openai"}
# Fixtures that are no cost case, and why.
NOT_COST_CASES = {
    "ollama/generate_response.json": "a unary /api/generate answer; the gateway only calls /api/chat",
    "gemini/stream_generate_content_json_array.json": "streamGenerateContent without alt=sse; "
    "the gateway always asks for SSE",
    "anthropic/messages_stream_error_event_docs.sse": "an in-stream error, no answer",
    "anthropic/stream_error_event_payload_observed.json": "an error payload, no answer",
    "gemini/error_503_unavailable_stream_array.json": "an error, no answer",
}


def _not_a_cost_case(relative: str) -> bool:
    name = relative.rsplit("/", 1)[-1]
    return name.startswith(("error_", "request_")) or relative in NOT_COST_CASES


# --- expected values, from the fixtures' raw JSON ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Tokens:
    """Token counts in the gateway's convention, read from a fixture by this test's own rules."""

    input: int
    output: int
    cached: int = 0
    cache_write: int = 0
    reasoning: int = 0


def fixture_body(relative: str) -> bytes:
    if kind_of(relative) == ".http":
        return fixture_http(relative)[2]
    return fixture_bytes(relative)


def sse_payloads(body: bytes) -> list[Any]:
    """The JSON of every SSE event's data (``[DONE]`` left out)."""
    out: list[Any] = []
    for block in re.split(r"\r\n\r\n|\n\n", body.decode()):
        data = [
            line[5:].removeprefix(" ") for line in re.split(r"\r\n|\n", block) if line.startswith("data:")
        ]
        if data and data != ["[DONE]"]:
            out.append(json.loads("\n".join(data)))
    return out


def ndjson_objects(body: bytes) -> list[Any]:
    return [json.loads(line) for line in body.decode().splitlines() if line.strip()]


def _openai(usage: Mapping[str, Any]) -> Tokens:
    # prompt_tokens already include cached ones, completion_tokens already include reasoning.
    return Tokens(
        input=usage["prompt_tokens"],
        output=usage.get("completion_tokens", 0),
        cached=(usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0,
        reasoning=(usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0,
    )


def _anthropic(usage: Mapping[str, Any]) -> Tokens:
    # input_tokens excludes cache reads and cache writes; Anthropic reports no reasoning count.
    read = usage.get("cache_read_input_tokens") or 0
    write = usage.get("cache_creation_input_tokens") or 0
    return Tokens(
        input=usage["input_tokens"] + read + write,
        output=usage["output_tokens"],
        cached=read,
        cache_write=write,
    )


def _gemini(meta: Mapping[str, Any]) -> Tokens:
    # Thoughts are counted apart from the candidates: output is both, and the thoughts are reasoning.
    thoughts = meta.get("thoughtsTokenCount", 0)
    return Tokens(
        input=meta["promptTokenCount"] + meta.get("toolUsePromptTokenCount", 0),
        output=meta.get("candidatesTokenCount", 0) + thoughts,
        cached=meta.get("cachedContentTokenCount", 0),
        reasoning=thoughts,
    )


def _ollama(final: Mapping[str, Any]) -> Tokens | None:
    if "prompt_eval_count" not in final and "eval_count" not in final:
        return None
    return Tokens(input=final.get("prompt_eval_count", 0), output=final.get("eval_count", 0))


def reported_tokens(relative: str, provider: str) -> Tokens | None:
    """What the provider reported in the recorded response (None: it reported no usage)."""
    body = fixture_body(relative)
    dialect = DIALECT[provider]
    if relative in UNARY or relative in EMBEDDINGS:
        data = json.loads(body)
        if dialect == "openai":
            return _openai(data["usage"])
        if dialect == "anthropic":
            return _anthropic(data["usage"])
        if dialect == "gemini":
            return _gemini(data["usageMetadata"])
        return _ollama(data)
    if dialect == "ollama":
        final = [o for o in ndjson_objects(body) if o.get("done") is True]
        assert len(final) == 1, f"{relative}: expected one final done object"
        return _ollama(final[0])
    events = sse_payloads(body)
    if dialect == "openai":
        # The usage chunk (choices: []) at the end; every other chunk has none or "usage": null.
        usages = [e["usage"] for e in events if isinstance(e.get("usage"), dict)]
        return _openai(usages[-1]) if usages else None
    if dialect == "gemini":
        # Every chunk repeats usageMetadata; only the last one is final.
        metas = [e["usageMetadata"] for e in events if "usageMetadata" in e]
        return _gemini(metas[-1]) if metas else None
    # Anthropic: message_start carries the input side, message_delta the cumulative totals; a
    # counter a later event leaves out keeps its earlier value.
    merged: dict[str, int] = {}
    for event in events:
        if event.get("type") == "message_start":
            usage = event["message"].get("usage") or {}
        elif event.get("type") == "message_delta":
            usage = event.get("usage") or {}
        else:
            continue
        merged.update({k: v for k, v in usage.items() if isinstance(v, int)})
    return _anthropic(merged) if merged else None


def price_fractions(prices: Mapping[str, str]) -> dict[str, Fraction]:
    input_price = Fraction(prices["input"])
    output_price = Fraction(prices["output"])
    return {
        "input": input_price,
        "output": output_price,
        "cached_input": Fraction(prices.get("cached_input", prices["input"])),
        "cache_write": Fraction(prices.get("cache_write", prices["input"])),
        "reasoning": Fraction(prices.get("reasoning", prices["output"])),
    }


def half_up(value: Fraction) -> int:
    return math.floor(value + Fraction(1, 2))


def expected_cost(tokens: Tokens, prices: Mapping[str, str] | None) -> int:
    """Micro-USD: tokens x USD-per-million is micro-USD exactly; each kind at its own price."""
    if prices is None:
        return 0
    p = price_fractions(prices)
    micros = (
        (tokens.input - tokens.cached - tokens.cache_write) * p["input"]
        + tokens.cached * p["cached_input"]
        + tokens.cache_write * p["cache_write"]
        + (tokens.output - tokens.reasoning) * p["output"]
        + tokens.reasoning * p["reasoning"]
    )
    return half_up(micros)


def expected_usage(
    tokens: Tokens, prices: Mapping[str, str] | None, estimated: bool = False
) -> types_pb2.Usage:
    return types_pb2.Usage(
        input_tokens=tokens.input,
        output_tokens=tokens.output,
        cached_input_tokens=tokens.cached,
        cache_write_input_tokens=tokens.cache_write,
        reasoning_tokens=tokens.reasoning,
        cost_micros=expected_cost(tokens, prices),
        estimated=estimated,
    )


def tokens_of(usage: types_pb2.Usage) -> Tokens:
    return Tokens(
        usage.input_tokens,
        usage.output_tokens,
        usage.cached_input_tokens,
        usage.cache_write_input_tokens,
        usage.reasoning_tokens,
    )


# --- the gateway and the replay server --------------------------------------------------------------


def pricing(prices: Mapping[str, str] | None) -> PricingSettings | None:
    if prices is None:
        return None
    optional = {k: float(prices[k]) for k in ("cached_input", "cache_write", "reasoning") if k in prices}
    return PricingSettings(
        input=float(prices["input"]),
        output=float(prices["output"]),
        source="tests/providers/test_costs.py",
        as_of="2026-01-01",
        **optional,
    )


def replay_settings(
    settings: Settings,
    replay: ReplayServer,
    provider: str,
    prices: Mapping[str, str] | None = PRICES,
    list_prices: Mapping[str, str] | None = None,
) -> Settings:
    """``settings`` plus one provider aimed at the replay server and MODEL deployed on it.

    ``prices`` are the deployment's own; ``list_prices`` the model's (used where the deployment has none).
    """
    kind, path, version, flavor = PROVIDERS[provider]
    name = f"replay-{provider}"
    providers = {
        **settings.providers,
        name: HttpProviderSettings(
            name=name,
            kind=kind,
            base_url=replay.base_url + path,
            api_key="replay-key",
            api_version=version,
            flavor=flavor,
        ),
    }
    model = ModelSettings(
        name=MODEL,
        family="replay",
        aliases=(),
        capabilities=("streaming", "tools"),
        context_window=128_000,
        max_output_tokens=4096,
        presets={},
        deployments=(DeploymentSettings(name, UPSTREAM_MODEL, pricing=pricing(prices)),),
        pricing=pricing(list_prices),
    )
    # No response cache: every call must reach the replay server and be billed.
    cache = dataclasses.replace(settings.cache, backend="off")
    return dataclasses.replace(
        settings, providers=providers, models={**settings.models, MODEL: model}, cache=cache
    )


@pytest.fixture
async def replay() -> AsyncIterator[ReplayServer]:
    server = await ReplayServer().start()
    yield server
    await server.stop()


async def start_gateway(
    start_server: StartServer,
    settings: Settings,
    replay: ReplayServer,
    provider: str,
    prices: Mapping[str, str] | None = PRICES,
    list_prices: Mapping[str, str] | None = None,
) -> aio.Channel:
    _, channel = await start_server(replay_settings(settings, replay, provider, prices, list_prices))
    return channel


async def complete(channel: aio.Channel) -> completion_pb2.CompleteResponse:
    response: completion_pb2.CompleteResponse = await completion_pb2_grpc.CompletionServiceStub(
        channel
    ).Complete(request(PROMPT, MODEL))
    return response


async def stream(channel: aio.Channel) -> list[stream_pb2.StreamCompleteResponse]:
    call = stream_pb2_grpc.StreamCompletionServiceStub(channel).StreamComplete(stream_request(PROMPT, MODEL))
    return [event async for event in call]


def stream_usage(events: list[stream_pb2.StreamCompleteResponse]) -> types_pb2.Usage:
    """The stream's one usage event, after every finish and just before Done."""
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "route_started"
    assert kinds[-1] == "done", kinds
    assert kinds.count("usage") == 1, kinds
    assert kinds[-2] == "usage", kinds
    assert "finish" in kinds
    assert max(i for i, k in enumerate(kinds) if k == "finish") < kinds.index("usage")
    usage: types_pb2.Usage = events[-2].usage
    return usage


async def ledger_record(channel: aio.Channel, streamed: bool) -> usage_pb2.UsageRecord:
    """The call's usage record as the ledger keeps it (written after the call ends: polled)."""
    stub = usage_pb2_grpc.UsageServiceStub(channel)
    wanted = usage_pb2.ExportUsageRequest(filter=usage_pb2.UsageFilter(model=MODEL))
    for _ in range(100):
        records = [r.record async for r in stub.ExportUsage(wanted)]
        if records:
            assert len(records) == 1, records
            record: usage_pb2.UsageRecord = records[0]
            assert record.streamed is streamed
            assert record.status_code == 0
            return record
        await asyncio.sleep(0.05)
    raise AssertionError(f"no usage record for {MODEL} in the ledger")


def assert_recorded(record: usage_pb2.UsageRecord, usage: types_pb2.Usage) -> None:
    """The record's total and its one (serving) attempt carry exactly ``usage``."""
    assert record.usage == usage
    assert [a.usage for a in record.attempts] == [usage]
    assert record.attempts[0].attempt.outcome == types_pb2.ATTEMPT_OUTCOME_SUCCESS


def assert_called(replay: ReplayServer, provider: str, streamed: bool) -> None:
    """One upstream call, to the provider's own endpoint, asking for a stream exactly when streamed."""
    assert len(replay.requests) == 1, [r.path for r in replay.requests]
    seen = replay.requests[0]
    assert seen.method == "POST"
    assert seen.path == PATHS[provider][streamed]
    if provider == "gemini":
        assert (seen.query.get("alt") == "sse") is streamed
    else:
        assert bool(seen.json().get("stream")) is streamed


# --- the cost cases ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("fixture", "provider"), list(UNARY.items()), ids=list(UNARY))
async def test_complete_cost_is_exact(
    start_server: StartServer, settings: Settings, replay: ReplayServer, fixture: str, provider: str
) -> None:
    tokens = reported_tokens(fixture, provider)
    assert tokens is not None, f"{fixture} carries usage"
    replay.serve(fixture)
    channel = await start_gateway(start_server, settings, replay, provider)

    response = await complete(channel)

    expected = expected_usage(tokens, PRICES)
    assert response.usage == expected
    assert response.route.provider == f"replay-{provider}"
    assert_called(replay, provider, streamed=False)
    assert_recorded(await ledger_record(channel, streamed=False), expected)


@pytest.mark.parametrize(("fixture", "provider"), list(STREAMS.items()), ids=list(STREAMS))
async def test_stream_cost_is_exact(
    start_server: StartServer, settings: Settings, replay: ReplayServer, fixture: str, provider: str
) -> None:
    tokens = reported_tokens(fixture, provider)
    assert tokens is not None, f"{fixture} carries usage"
    replay.serve(fixture)
    channel = await start_gateway(start_server, settings, replay, provider)

    events = await stream(channel)

    expected = expected_usage(tokens, PRICES)
    assert stream_usage(events) == expected
    assert_called(replay, provider, streamed=True)
    assert_recorded(await ledger_record(channel, streamed=True), expected)


@pytest.mark.parametrize(
    ("fixture", "provider"),
    [pytest.param(fixture, provider, id=fixture) for fixture, provider in STREAMS_WITHOUT_USAGE.items()],
)
async def test_stream_without_reported_usage_is_estimated_and_priced(
    start_server: StartServer, settings: Settings, replay: ReplayServer, fixture: str, provider: str
) -> None:
    assert reported_tokens(fixture, provider) is None, f"{fixture} carries no usage"
    replay.serve(fixture)
    channel = await start_gateway(start_server, settings, replay, provider)

    events = await stream(channel)

    usage = stream_usage(events)
    assert usage.estimated
    # The prompt is estimated as the gateway estimates any prompt; the output from what was delivered.
    counted = await completion_pb2_grpc.CompletionServiceStub(channel).CountTokens(
        completion_pb2.CountTokensRequest(model=MODEL, messages=[user(PROMPT)])
    )
    assert counted.estimated
    assert usage.input_tokens == counted.input_tokens > 0
    delivered = "".join(
        e.text_delta.text + e.text_delta.reasoning for e in events if e.HasField("text_delta")
    )
    assert delivered
    assert usage.output_tokens > 0
    assert usage.cached_input_tokens == usage.cache_write_input_tokens == usage.reasoning_tokens == 0
    expected = expected_usage(tokens_of(usage), PRICES, estimated=True)
    assert usage == expected
    assert_recorded(await ledger_record(channel, streamed=True), expected)


# --- prices that are absent, inherited, or fall back -------------------------------------------------


@pytest.mark.parametrize(
    ("fixture", "provider"),
    [
        pytest.param(f, p, id=f)
        for f, p in (
            ("anthropic/messages_response_cache_usage.json", "anthropic"),
            ("gemini/generate_content.json", "gemini"),
            ("gemini/stream_generate_content_thinking.sse", "gemini"),
        )
    ],
)
async def test_unset_part_prices_fall_back_to_input_and_output(
    start_server: StartServer, settings: Settings, replay: ReplayServer, fixture: str, provider: str
) -> None:
    tokens = reported_tokens(fixture, provider)
    assert tokens is not None
    replay.serve(fixture)
    channel = await start_gateway(start_server, settings, replay, provider, prices=PLAIN_PRICES)

    streamed = fixture in STREAMS
    usage = stream_usage(await stream(channel)) if streamed else (await complete(channel)).usage

    expected = expected_usage(tokens, PLAIN_PRICES)
    assert usage == expected
    # The fallback really changed the bill: these fixtures carry cache or reasoning tokens.
    assert expected.cost_micros != expected_cost(tokens, PRICES)
    assert_recorded(await ledger_record(channel, streamed=streamed), expected)


@pytest.mark.parametrize(
    ("fixture", "provider"),
    [
        pytest.param(f, p, id=f)
        for f, p in (
            ("anthropic/messages_response_cache_usage.json", "anthropic"),
            ("openai/chat_completion.json", "openai"),
            ("gemini/stream_generate_content_thinking.sse", "gemini"),
            ("ollama/chat_stream.ndjson", "ollama"),
        )
    ],
)
async def test_unpriced_model_costs_zero_and_still_counts_tokens(
    start_server: StartServer, settings: Settings, replay: ReplayServer, fixture: str, provider: str
) -> None:
    tokens = reported_tokens(fixture, provider)
    assert tokens is not None
    replay.serve(fixture)
    channel = await start_gateway(start_server, settings, replay, provider, prices=None)

    streamed = fixture in STREAMS
    usage = stream_usage(await stream(channel)) if streamed else (await complete(channel)).usage

    expected = expected_usage(tokens, None)
    assert expected.cost_micros == 0
    assert expected.input_tokens > 0
    assert usage == expected
    assert_recorded(await ledger_record(channel, streamed=streamed), expected)


LIST_PRICES = {"input": "1.111", "output": "7.777", "cached_input": "0.111", "cache_write": "2.222"}


@pytest.mark.parametrize(
    ("deployment_prices", "billed_at"),
    [(None, LIST_PRICES), (PRICES, PRICES)],
    ids=["model-list-price", "deployment-price-overrides-list-price"],
)
async def test_deployment_price_overrides_the_model_list_price(
    start_server: StartServer,
    settings: Settings,
    replay: ReplayServer,
    deployment_prices: Mapping[str, str] | None,
    billed_at: Mapping[str, str],
) -> None:
    fixture = "anthropic/messages_response_cache_usage.json"
    tokens = reported_tokens(fixture, "anthropic")
    assert tokens is not None
    replay.serve(fixture)
    channel = await start_gateway(
        start_server, settings, replay, "anthropic", prices=deployment_prices, list_prices=LIST_PRICES
    )

    response = await complete(channel)

    assert response.usage == expected_usage(tokens, billed_at)
    assert expected_cost(tokens, LIST_PRICES) != expected_cost(tokens, PRICES)


# --- rounding -----------------------------------------------------------------------------------------


def openai_body(prompt_tokens: int, completion_tokens: int) -> bytes:
    return json.dumps(
        {
            "id": "chatcmpl-constructed",
            "object": "chat.completion",
            "created": 1767225600,
            "model": UPSTREAM_MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "ok", "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
    ).encode()


def openai_stream_body(prompt_tokens: int, completion_tokens: int) -> bytes:
    head = {"id": "chatcmpl-constructed", "object": "chat.completion.chunk", "created": 1767225600}
    frames = [
        {**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "ok"}}]},
        {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {
            **head,
            "choices": [],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        },
    ]
    return b"".join(b"data: " + json.dumps(f).encode() + b"\n\n" for f in frames) + b"data: [DONE]\n\n"


# (prompt tokens, completion tokens, input price, output price, cost in micro-USD, spelled out)
ROUNDING = [
    pytest.param(5, 0, "0.5", "1", 3, id="2.5-rounds-up-to-3-not-to-even-2"),
    pytest.param(3, 0, "0.5", "1", 2, id="1.5-rounds-up-to-2"),
    pytest.param(1, 1, "0.25", "0.25", 1, id="0.25+0.25-is-rounded-once-as-0.5-to-1"),
    pytest.param(1, 1, "0.25", "0.249999", 0, id="0.499999-rounds-down-to-0"),
    pytest.param(1, 1, "0.250001", "0.25", 1, id="0.500001-rounds-up-to-1"),
    pytest.param(7, 3, "0.5", "0.5", 5, id="exact-5-stays-5"),
]


@pytest.mark.parametrize("streamed", [False, True], ids=["complete", "stream"])
@pytest.mark.parametrize(("prompt", "completion", "input_price", "output_price", "micros"), ROUNDING)
async def test_cost_rounds_half_up_once_per_attempt(
    start_server: StartServer,
    settings: Settings,
    replay: ReplayServer,
    prompt: int,
    completion: int,
    input_price: str,
    output_price: str,
    micros: int,
    streamed: bool,
) -> None:
    prices = {"input": input_price, "output": output_price}
    assert expected_cost(Tokens(prompt, completion), prices) == micros  # the table agrees with the rule
    if streamed:
        replay.serve_body(openai_stream_body(prompt, completion), ".sse")
    else:
        replay.serve_body(openai_body(prompt, completion), ".json")
    channel = await start_gateway(start_server, settings, replay, "openai", prices=prices)

    usage = stream_usage(await stream(channel)) if streamed else (await complete(channel)).usage

    assert usage == types_pb2.Usage(input_tokens=prompt, output_tokens=completion, cost_micros=micros)


# --- embeddings -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("fixture", "provider"), list(EMBEDDINGS.items()), ids=list(EMBEDDINGS))
async def test_embed_cost_is_exact(
    start_server: StartServer, settings: Settings, replay: ReplayServer, fixture: str, provider: str
) -> None:
    tokens = reported_tokens(fixture, provider)
    assert tokens is not None
    replay.serve(fixture)
    channel = await start_gateway(start_server, settings, replay, provider)

    response = await completion_pb2_grpc.CompletionServiceStub(channel).Embed(
        completion_pb2.EmbedRequest(model=MODEL, inputs=["Hello, world!"])
    )

    assert len(response.embeddings) == 1
    assert response.usage == expected_usage(tokens, PRICES)


# --- the replay server itself ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fixture", "content_type", "writes"),
    [
        pytest.param(f, t, n, id=f)
        for f, t, n in (
            ("gemini/stream_generate_content.sse", "text/event-stream", 3),
            ("anthropic/messages_stream.sse", "text/event-stream", 10),
            ("ollama/chat_stream_tool_calls.ndjson", "application/x-ndjson", 2),
            ("openai/chat_stream_tool_call_include_usage_http_200.http", "text/event-stream", None),
        )
    ],
)
async def test_replay_streams_a_body_in_pieces_as_recorded(
    replay: ReplayServer, fixture: str, content_type: str, writes: int | None
) -> None:
    replay.serve(fixture)
    async with (
        httpx.AsyncClient(base_url=replay.base_url) as client,
        client.stream("POST", "/any/path?alt=sse", json={"stream": True}) as response,
    ):
        received = [piece async for piece in response.aiter_raw()]
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(content_type)
    assert b"".join(received) == fixture_body(fixture)
    assert len(received) > 1  # really streamed, not one buffer
    sent = pieces(fixture_body(fixture), content_type)
    assert b"".join(sent) == fixture_body(fixture)
    if writes is not None:
        assert len(sent) == writes
    assert replay.requests[-1].path == "/any/path"
    assert replay.requests[-1].query == {"alt": "sse"}


async def test_replay_answers_a_recorded_http_status_and_headers(replay: ReplayServer) -> None:
    replay.serve("openai/error_429_rate_limit_exceeded.json")
    async with httpx.AsyncClient(base_url=replay.base_url) as client:
        assert (await client.get("/x")).status_code == 200
        replay.serve("anthropic/error_429_rate_limit.http")
        response = await client.put("/v1/messages", content=b"{}")
    status, headers, body = fixture_http("anthropic/error_429_rate_limit.http")
    assert response.status_code == status == 429
    assert response.content == body
    for name in ("content-type", "x-should-retry"):
        assert response.headers[name] == headers[name]
    assert [r.method for r in replay.requests] == ["GET", "PUT"]


# --- every fixture is placed -----------------------------------------------------------------------------


def test_every_shared_fixture_is_a_cost_case_or_said_not_to_be() -> None:
    files = sorted(
        str(p.relative_to(FIXTURES))
        for p in FIXTURES.rglob("*")
        if p.is_file() and p.suffix in (".json", ".sse", ".ndjson", ".http", ".txt")
    )
    placed = {**UNARY, **STREAMS, **STREAMS_WITHOUT_USAGE, **EMBEDDINGS}
    unplaced = [f for f in files if f not in placed and not _not_a_cost_case(f)]
    assert unplaced == []
    assert all((FIXTURES / f).is_file() for f in (*placed, *NOT_COST_CASES))
    # Every success fixture that carries usage is priced by a test above.
    for fixture, provider in {**UNARY, **STREAMS, **EMBEDDINGS}.items():
        assert reported_tokens(fixture, provider) is not None, fixture
