"""A traced call's spans: the routing span per call, a CLIENT span per upstream attempt, events.

Made only when tracing is on (``telemetry.tracing`` builds the tracer); the
router finds the call's ``CallTrace`` through ``current()``, which is None with
tracing off, so an untraced call costs one context-variable read. Attributes
follow the OpenTelemetry GenAI semantic conventions; omnirelay's own facts
(cost, cache outcome, retries, fallback) are ``omnirelay.*``. Each attempt's
span context is sent upstream as ``traceparent`` (``providers.http.carry_trace``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from omnirelay.domain import Deployment, TokenUsage
from omnirelay.providers.http import carry_trace
from omnirelay.telemetry.content import prompt_messages
from omnirelay.usage.records import UsageRecord
from omnirelay_client.v1 import completion_pb2

_PROPAGATOR = TraceContextTextMapPropagator()
_OPERATION = "chat"
# Sampling parameters as GenAI attributes: (proto field, attribute).
_SAMPLING = (
    ("max_tokens", "gen_ai.request.max_tokens"),
    ("temperature", "gen_ai.request.temperature"),
    ("top_p", "gen_ai.request.top_p"),
    ("top_k", "gen_ai.request.top_k"),
    ("seed", "gen_ai.request.seed"),
)
_STATUS_NAMES = {
    0: "OK",
    1: "CANCELLED",
    2: "UNKNOWN",
    3: "INVALID_ARGUMENT",
    4: "DEADLINE_EXCEEDED",
    5: "NOT_FOUND",
    6: "ALREADY_EXISTS",
    7: "PERMISSION_DENIED",
    8: "RESOURCE_EXHAUSTED",
    9: "FAILED_PRECONDITION",
    10: "ABORTED",
    11: "OUT_OF_RANGE",
    12: "UNIMPLEMENTED",
    13: "INTERNAL",
    14: "UNAVAILABLE",
    15: "DATA_LOSS",
    16: "UNAUTHENTICATED",
}


def status_name(code: int) -> str:
    # Not .get(code, str(code)): that formats the number on every call, known code or not.
    return _STATUS_NAMES.get(code) or str(code)


# gen_ai.provider.name per provider kind, and per OpenAI-compatible flavor where the
# conventions name the vendor.
_SYSTEMS = {
    "openai": "openai",
    "azure": "azure.ai.openai",
    "anthropic": "anthropic",
    "gemini": "gcp.gemini",
    "ollama": "ollama",
    "local": "omnirelay.local",
}
_FLAVORS = {"groq": "groq", "deepseek": "deepseek", "mistral": "mistral_ai", "xai": "x_ai"}


def genai_system(kind: str, flavor: str = "") -> str:
    if flavor:
        return _FLAVORS.get(flavor, flavor)
    return _SYSTEMS.get(kind, kind)


@dataclass(frozen=True, slots=True)
class Upstream:
    """What a span says about a configured provider: its GenAI name and where it listens."""

    system: str  # gen_ai.provider.name: openai, anthropic, gcp.gemini, ...
    address: str = ""
    port: int = 0


_current: ContextVar[CallTrace | None] = ContextVar("omnirelay_call_trace", default=None)


def current() -> CallTrace | None:
    """The traced call being served, or None (tracing off, or outside a call)."""
    return _current.get()


class SpanSource:
    """What every span of the process shares: the tracer, upstream facts, content settings."""

    __slots__ = ("content", "redact", "tracer", "upstreams")

    def __init__(
        self,
        tracer: trace.Tracer,
        upstreams: Mapping[str, Upstream],
        content: bool,
        redact: Callable[[str], str],
    ) -> None:
        self.tracer = tracer
        self.upstreams = upstreams
        self.content = content
        self.redact = redact

    def upstream(self, provider: str) -> Upstream:
        return self.upstreams.get(provider) or Upstream(provider)

    def begin(self, request: completion_pb2.CompleteRequest, streamed: bool) -> CallTrace:
        """Start the call's span (a child of the server span) and make it current."""
        model = request.model
        span = self.tracer.start_span(f"{_OPERATION} {model}", kind=SpanKind.INTERNAL)
        if span.is_recording():
            span.set_attributes(_request_attributes(request, streamed))
            if self.content:
                span.set_attribute("gen_ai.input.messages", self.redact(_input_messages(request)))
        call = CallTrace(self, span)
        _current.set(call)
        return call


class CallTrace:
    """One call's routing span, its attempt spans and its events."""

    __slots__ = ("_source", "span")

    def __init__(self, source: SpanSource, span: trace.Span) -> None:
        self._source = source
        self.span = span

    def attempt(self, deployment: Deployment, attempt: int) -> AttemptTrace:
        """Start an attempt's CLIENT span and send its context upstream with the HTTP request."""
        facts = self._source.upstream(deployment.provider)
        upstream_model = deployment.provider_model
        parent = trace.set_span_in_context(self.span)
        span = self._source.tracer.start_span(
            f"{_OPERATION} {upstream_model}", context=parent, kind=SpanKind.CLIENT
        )
        if span.is_recording():
            attributes: dict[str, Any] = {
                "gen_ai.operation.name": _OPERATION,
                "gen_ai.provider.name": facts.system,
                "gen_ai.request.model": upstream_model,
                "omnirelay.deployment": deployment.name,
                "omnirelay.attempt": attempt,
            }
            if facts.address:
                attributes["server.address"] = facts.address
                attributes["server.port"] = facts.port
            span.set_attributes(attributes)
        headers: dict[str, str] = {}
        _PROPAGATOR.inject(headers, trace.set_span_in_context(span))
        carry_trace(headers)
        return AttemptTrace(span)

    def retry(self, deployment: Deployment, attempt: int, delay: float, error_type: str) -> None:
        self.span.add_event(
            "retry",
            {
                "omnirelay.deployment": deployment.name,
                "omnirelay.attempt": attempt,
                "omnirelay.delay_seconds": delay,
                "error.type": error_type,
            },
        )

    def breaker_rejected(self, deployment: Deployment) -> None:
        self.span.add_event("breaker_rejected", {"omnirelay.deployment": deployment.name})

    def fallback(self, previous: str, deployment: Deployment, model: str) -> None:
        self.span.add_event(
            "fallback",
            {
                "omnirelay.from_deployment": previous,
                "omnirelay.to_deployment": deployment.name,
                "omnirelay.to_model": model,
            },
        )

    def end(self, record: UsageRecord, finish_reasons: Sequence[str], completion: str | None) -> None:
        span = self.span
        if span.is_recording():
            attributes = _usage_attributes(record.usage)
            attributes.update(
                {
                    "omnirelay.request_id": record.request_id,
                    "omnirelay.cost_micros": record.usage.cost_micros,
                    "omnirelay.cache": record.cache or "none",
                    "omnirelay.retries": retries(record),
                    "omnirelay.fallback": record.fallback_used,
                    "omnirelay.attempts": len(record.attempts),
                    "rpc.grpc.status_code": record.status_code,
                }
            )
            if record.resolved_model:
                attributes["gen_ai.response.model"] = record.resolved_model
            if record.provider:
                attributes["gen_ai.provider.name"] = self._source.upstream(record.provider).system
            if finish_reasons:
                attributes["gen_ai.response.finish_reasons"] = tuple(finish_reasons)
            if record.ttft_seconds is not None:
                attributes["omnirelay.time_to_first_chunk_seconds"] = record.ttft_seconds
            if completion is not None and self._source.content:
                attributes["gen_ai.output.messages"] = self._source.redact(_output_messages(completion))
            if record.status_code:
                attributes["error.type"] = status_name(record.status_code)
                span.set_status(Status(StatusCode.ERROR, status_name(record.status_code)))
            span.set_attributes(attributes)
        span.end()


class AttemptTrace:
    __slots__ = ("span",)

    def __init__(self, span: trace.Span) -> None:
        self.span = span

    def succeeded(
        self, usage: TokenUsage, response_model: str, finish_reasons: Sequence[str], response_id: str
    ) -> None:
        span = self.span
        if span.is_recording():
            attributes = _usage_attributes(usage)
            attributes["gen_ai.response.model"] = response_model
            if finish_reasons:
                attributes["gen_ai.response.finish_reasons"] = tuple(finish_reasons)
            if response_id:
                attributes["gen_ai.response.id"] = response_id
            span.set_attributes(attributes)
        span.end()

    def failed(self, error_type: str, message: str) -> None:
        span = self.span
        span.set_attribute("error.type", error_type)
        span.set_status(Status(StatusCode.ERROR, message))
        span.end()


def retries(record: UsageRecord) -> int:
    """Attempts that repeated the previous attempt's deployment (breaker skips excluded)."""
    count = 0
    previous = ""
    for a in record.attempts:
        if a.outcome == "circuit_open":
            continue
        if a.deployment == previous:
            count += 1
        previous = a.deployment
    return count


def _request_attributes(request: completion_pb2.CompleteRequest, streamed: bool) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": _OPERATION,
        "gen_ai.request.model": request.model,
        "omnirelay.streamed": streamed,
    }
    if request.HasField("sampling"):
        sampling = request.sampling
        for field_name, attribute in _SAMPLING:
            if sampling.HasField(field_name):  # type: ignore[arg-type]  # names from _SAMPLING
                attributes[attribute] = getattr(sampling, field_name)
        if sampling.stop:
            attributes["gen_ai.request.stop_sequences"] = tuple(sampling.stop)
    return attributes


def _usage_attributes(usage: TokenUsage) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "gen_ai.usage.input_tokens": usage.input_tokens,
        "gen_ai.usage.output_tokens": usage.output_tokens,
        "omnirelay.usage.estimated": usage.estimated,
    }
    if usage.cached_input_tokens:
        attributes["gen_ai.usage.cache_read.input_tokens"] = usage.cached_input_tokens
    if usage.reasoning_tokens:
        attributes["gen_ai.usage.reasoning.output_tokens"] = usage.reasoning_tokens
    return attributes


def _input_messages(request: completion_pb2.CompleteRequest) -> str:
    messages = [
        {"role": role, "parts": [{"type": "text", "content": text}]}
        for role, text in prompt_messages(request)
    ]
    return json.dumps(messages, ensure_ascii=False)


def _output_messages(completion: str) -> str:
    return json.dumps(
        [{"role": "assistant", "parts": [{"type": "text", "content": completion}]}], ensure_ascii=False
    )
