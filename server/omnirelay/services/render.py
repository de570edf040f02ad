"""Domain results into protobuf responses and stream events."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from contextvars import ContextVar

from google.protobuf import duration_pb2

from omnirelay import domain as d
from omnirelay.config.routing import PricingSettings
from omnirelay.config.schema import ModelSettings
from omnirelay.errors import attempt_proto
from omnirelay_client.v1 import completion_pb2, stream_pb2, types_pb2

# Set by the cache layer for a call it let through (BYPASS): the route facts report it.
cache_outcome: ContextVar[int] = ContextVar("omnirelay_cache_outcome", default=0)

_FINISH = {
    d.FinishReason.UNKNOWN: types_pb2.FINISH_REASON_UNSPECIFIED,
    d.FinishReason.STOP: types_pb2.FINISH_REASON_STOP,
    d.FinishReason.LENGTH: types_pb2.FINISH_REASON_LENGTH,
    d.FinishReason.TOOL_CALLS: types_pb2.FINISH_REASON_TOOL_CALLS,
    d.FinishReason.CONTENT_FILTER: types_pb2.FINISH_REASON_CONTENT_FILTER,
    d.FinishReason.REFUSAL: types_pb2.FINISH_REASON_REFUSAL,
    d.FinishReason.CANCELLED: types_pb2.FINISH_REASON_CANCELLED,
    d.FinishReason.ERROR: types_pb2.FINISH_REASON_ERROR,
}
CAPABILITIES = {
    "streaming": types_pb2.CAPABILITY_STREAMING,
    "tools": types_pb2.CAPABILITY_TOOLS,
    "json_mode": types_pb2.CAPABILITY_JSON_MODE,
    "json_schema": types_pb2.CAPABILITY_JSON_SCHEMA,
    "vision": types_pb2.CAPABILITY_VISION,
    "reasoning": types_pb2.CAPABILITY_REASONING,
    "embeddings": types_pb2.CAPABILITY_EMBEDDINGS,
}


def duration(seconds: float) -> duration_pb2.Duration:
    whole = int(seconds)
    # Rounded: 0.003 s is 2999999.9999 ns as a float and must read back as 3 ms.
    return duration_pb2.Duration(seconds=whole, nanos=min(round((seconds - whole) * 1e9), 999_999_999))


def usage(u: d.TokenUsage) -> types_pb2.Usage:
    out = types_pb2.Usage()
    _fill_usage(out, u)
    return out


def _fill_usage(out: types_pb2.Usage, u: d.TokenUsage) -> None:
    # Zero is proto3's default: setting only what is non-zero saves a field write each.
    out.input_tokens = u.input_tokens
    out.output_tokens = u.output_tokens
    if u.cached_input_tokens:
        out.cached_input_tokens = u.cached_input_tokens
    if u.reasoning_tokens:
        out.reasoning_tokens = u.reasoning_tokens
    if u.cache_write_input_tokens:
        out.cache_write_input_tokens = u.cache_write_input_tokens
    if u.cost_micros:
        out.cost_micros = u.cost_micros
    if u.estimated:
        out.estimated = True


def set_duration(target: duration_pb2.Duration, seconds: float) -> None:
    # Set in place: about half the cost of building a Duration and copying it in. A zero
    # ``seconds`` (most latencies) is left at proto3's default: one field write fewer.
    whole = int(seconds)
    if whole:
        target.seconds = whole
    target.nanos = int((seconds - whole) * 1e9)


def route_facts(r: d.RouteInfo) -> types_pb2.RouteFacts:
    facts = types_pb2.RouteFacts()
    _fill_route(facts, r)
    return facts


# The route facts every first-try success on one route shares (its models, provider and
# deployment, and its one attempt's), serialized once: merging them in is one call into protobuf
# where setting them was eight, about 1k instructions each on average (callgrind). Bounded, since
# requested names come from callers.
SHARED_FACTS_ROUTES = 1024


@functools.lru_cache(maxsize=SHARED_FACTS_ROUTES)
def _shared_facts(requested_model: str, resolved_model: str, deployment: d.Deployment) -> bytes:
    facts = types_pb2.RouteFacts(
        requested_model=requested_model,
        resolved_model=resolved_model,
        provider=deployment.provider,
        deployment=deployment.name,
    )
    facts.attempts.add(
        model=resolved_model,
        provider=deployment.provider,
        deployment=deployment.name,
        outcome=types_pb2.ATTEMPT_OUTCOME_SUCCESS,
    )
    return facts.SerializeToString()


def _fill_route(facts: types_pb2.RouteFacts, r: d.RouteInfo, upstream_request_id: str = "") -> None:
    if r.attempts:
        deployment = r.deployment
        facts.requested_model = r.requested_model
        facts.resolved_model = r.resolved_model
        facts.provider = deployment.provider
        facts.deployment = deployment.name
        facts.attempts.extend([attempt_proto(a) for a in r.attempts])
    else:
        # A first-try success: its one attempt is the route itself.
        facts.MergeFromString(_shared_facts(r.requested_model, r.resolved_model, r.deployment))
        first = facts.attempts[0]
        if upstream_request_id:
            first.upstream_request_id = upstream_request_id
        set_duration(first.latency, r.latency_seconds)
    facts.request_id = r.request_id
    if r.fallback_used:
        facts.fallback_used = True
    outcome = cache_outcome.get()
    if outcome:
        facts.cache = outcome  # type: ignore[assignment]
    if r.dropped_parameters:
        facts.dropped_parameters.extend(r.dropped_parameters)
    set_duration(facts.latency, r.latency_seconds)
    if r.ttft_seconds is not None:
        set_duration(facts.time_to_first_token, r.ttft_seconds)


def _logprobs(items: tuple[d.TokenLogprob, ...]) -> types_pb2.Logprobs:
    return types_pb2.Logprobs(
        tokens=[types_pb2.TokenLogprob(token=t.token, logprob=t.logprob) for t in items]
    )


def _fill_choice(out: types_pb2.Choice, c: d.Choice) -> None:
    # Filled in place inside the response: building sub-messages and passing them in copies each.
    if c.index:  # proto3's default is 0: the first choice writes nothing
        out.index = c.index
    out.finish_reason = _FINISH[c.finish_reason]
    if c.reasoning:
        out.reasoning = c.reasoning
    if c.refusal:
        out.refusal = c.refusal
    message = out.message
    message.role = types_pb2.ROLE_ASSISTANT
    if c.text:
        message.content.add(text=c.text)
    for t in c.tool_calls:
        message.tool_calls.add(id=t.id, name=t.name, arguments_json=t.arguments_json)
    if c.logprobs is not None:
        out.logprobs.tokens.extend(
            [types_pb2.TokenLogprob(token=t.token, logprob=t.logprob) for t in c.logprobs]
        )


def complete_response(c: d.Completion) -> completion_pb2.CompleteResponse:
    result = c.result
    response = completion_pb2.CompleteResponse()
    _fill_usage(response.usage, result.usage)
    _fill_route(response.route, c.route, result.upstream_request_id)
    add = response.choices.add
    for x in result.choices:
        _fill_choice(add(), x)
    return response


def route_started(r: d.RouteInfo, attempt: int) -> stream_pb2.StreamCompleteResponse:
    return stream_pb2.StreamCompleteResponse(
        route_started=stream_pb2.RouteStarted(
            model=r.resolved_model,
            provider=r.deployment.provider,
            deployment=r.deployment.name,
            attempt=attempt,
        )
    )


def stream_event(e: d.GatewayEvent) -> stream_pb2.StreamCompleteResponse:
    """One stream event per gateway event (text deltas first: they are the hot path)."""
    if isinstance(e, d.TextDelta):
        return stream_pb2.StreamCompleteResponse(
            text_delta=stream_pb2.TextDelta(
                choice_index=e.choice_index, text=e.text, reasoning=e.reasoning, refusal=e.refusal
            )
        )
    if isinstance(e, d.ToolCallDelta):
        return stream_pb2.StreamCompleteResponse(
            tool_call_delta=stream_pb2.ToolCallDelta(
                choice_index=e.choice_index,
                index=e.index,
                id=e.id,
                name=e.name,
                arguments_delta=e.arguments_delta,
            )
        )
    if isinstance(e, d.FinishChunk):
        finish = stream_pb2.Finish(choice_index=e.choice_index, finish_reason=_FINISH[e.reason])
        if e.logprobs is not None:
            finish.logprobs.CopyFrom(_logprobs(e.logprobs))
        return stream_pb2.StreamCompleteResponse(finish=finish)
    if isinstance(e, d.UsageChunk):
        return stream_pb2.StreamCompleteResponse(usage=usage(e.usage))
    if isinstance(e, d.RouteStart):
        return route_started(e.route, e.attempt)
    if isinstance(e, d.RouteChange):
        return stream_pb2.StreamCompleteResponse(
            route_changed=stream_pb2.RouteChanged(
                **{"from": route_started(e.previous, e.attempt - 1).route_started},
                to=route_started(e.route, e.attempt).route_started,
                reason=e.reason,
            )
        )
    return stream_pb2.StreamCompleteResponse(done=stream_pb2.Done(route=route_facts(e.route)))


def _per_million(usd: float | None) -> int:
    return round((usd or 0.0) * 1_000_000)


def pricing(p: PricingSettings | None) -> types_pb2.Pricing:
    if p is None:
        return types_pb2.Pricing()
    return types_pb2.Pricing(
        input_per_million_micros=_per_million(p.input),
        output_per_million_micros=_per_million(p.output),
        cached_input_per_million_micros=_per_million(p.cached_input),
        cache_write_per_million_micros=_per_million(p.cache_write),
        reasoning_per_million_micros=_per_million(p.reasoning),
        source=p.source,
        as_of=p.as_of,
        known=True,
    )


def model_info(m: ModelSettings, deployments: Sequence[d.Deployment] | None) -> types_pb2.ModelInfo:
    """A registry model; ``deployments`` None means no configured provider serves it here."""
    if deployments is None:
        providers = sorted({p.provider for p in m.deployments})
    else:
        providers = sorted({p.provider for p in deployments})
    return types_pb2.ModelInfo(
        name=m.name,
        family=m.family,
        aliases=m.aliases,
        providers=providers,
        capabilities=[CAPABILITIES[c] for c in m.capabilities],
        context_window=m.context_window,
        max_output_tokens=m.max_output_tokens,
        pricing=pricing(m.pricing),
        available=deployments is not None,
        deployments=[x.name for x in deployments or ()],
        deprecation_date=m.deprecation_date,
    )
