"""What the ledger keeps: one ``UsageRecord`` per call, with every attempt it made and what each cost.

Records are plain immutable values so they can be queued, batched, spilled to
a file and replayed without reference to the call that made them. They are
NamedTuples rather than frozen dataclasses because one is built for every call:
a frozen dataclass of this size takes 4 us to construct (each field through
``object.__setattr__``), a NamedTuple 0.5 us. The JSON form
(``to_json``/``from_json``) is the spill file's and ``usage export --format
jsonl``'s: one object per line, stable keys, times as Unix seconds.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, NamedTuple

from omnirelay.domain import TokenUsage

NO_USAGE = TokenUsage()


class BilledAttempt(NamedTuple):
    """One upstream attempt as billed: its route, outcome and the tokens it consumed (if any)."""

    model: str
    provider: str
    deployment: str
    outcome: str  # an AttemptOutcome value: success, rate_limited, stream_broken...
    detail: str = ""
    latency_seconds: float = 0.0
    upstream_request_id: str = ""
    usage: TokenUsage = NO_USAGE


class UsageRecord(NamedTuple):
    """One call, as the ledger keeps it. ``usage`` is the sum over ``attempts`` (cost included)."""

    record_id: str  # unique per record; the ledger ignores a replayed duplicate
    request_id: str  # the caller's or the gateway's; a caller may reuse one, so not unique
    time: float  # Unix seconds when the call started
    requested_model: str
    status_code: int  # final gRPC status code, 0 = OK
    trace_id: str = ""
    project: str = ""
    user: str = ""
    tags: tuple[tuple[str, str], ...] = ()
    tenant: str = ""
    resolved_model: str = ""
    provider: str = ""
    deployment: str = ""
    attempts: tuple[BilledAttempt, ...] = ()
    usage: TokenUsage = NO_USAGE
    price_table_version: str = ""
    latency_seconds: float = 0.0
    ttft_seconds: float | None = None
    cache: str = ""  # "", hit, miss, coalesced, bypass or refresh
    saved_cost_micros: int = 0
    streamed: bool = False
    fallback_used: bool = False
    # Which RPC: "complete" or "stream" (embeddings and token counts are not billed through here).
    operation: str = "complete"

    @property
    def failed(self) -> bool:
        return self.status_code != 0

    def to_json(self) -> str:
        return json.dumps(to_dict(self), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, line: str) -> UsageRecord:
        return from_dict(json.loads(line))


_USAGE_KEYS = (
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "cache_write_input_tokens",
    "reasoning_tokens",
    "cost_micros",
    "estimated",
)


def usage_dict(u: TokenUsage) -> dict[str, Any]:
    return {k: getattr(u, k) for k in _USAGE_KEYS}


def usage_from(d: Mapping[str, Any]) -> TokenUsage:
    return TokenUsage(
        input_tokens=int(d.get("input_tokens", 0)),
        output_tokens=int(d.get("output_tokens", 0)),
        cached_input_tokens=int(d.get("cached_input_tokens", 0)),
        cache_write_input_tokens=int(d.get("cache_write_input_tokens", 0)),
        reasoning_tokens=int(d.get("reasoning_tokens", 0)),
        cost_micros=int(d.get("cost_micros", 0)),
        estimated=bool(d.get("estimated", False)),
    )


def _attempt_dict(a: BilledAttempt) -> dict[str, Any]:
    return {
        "model": a.model,
        "provider": a.provider,
        "deployment": a.deployment,
        "outcome": a.outcome,
        "detail": a.detail,
        "latency_seconds": a.latency_seconds,
        "upstream_request_id": a.upstream_request_id,
        "usage": usage_dict(a.usage),
    }


def _attempt_from(a: Mapping[str, Any]) -> BilledAttempt:
    return BilledAttempt(
        model=str(a.get("model", "")),
        provider=str(a.get("provider", "")),
        deployment=str(a.get("deployment", "")),
        outcome=str(a.get("outcome", "")),
        detail=str(a.get("detail", "")),
        latency_seconds=float(a.get("latency_seconds", 0.0)),
        upstream_request_id=str(a.get("upstream_request_id", "")),
        usage=usage_from(a.get("usage") or {}),
    )


def attempts_json(attempts: tuple[BilledAttempt, ...]) -> str:
    return json.dumps([_attempt_dict(a) for a in attempts], separators=(",", ":"), sort_keys=True)


def attempts_from_json(text: str) -> tuple[BilledAttempt, ...]:
    return tuple(_attempt_from(a) for a in json.loads(text))


def to_dict(r: UsageRecord) -> dict[str, Any]:
    return {
        "record_id": r.record_id,
        "request_id": r.request_id,
        "trace_id": r.trace_id,
        "time": r.time,
        "project": r.project,
        "user": r.user,
        "tags": dict(r.tags),
        "tenant": r.tenant,
        "requested_model": r.requested_model,
        "resolved_model": r.resolved_model,
        "provider": r.provider,
        "deployment": r.deployment,
        "attempts": [_attempt_dict(a) for a in r.attempts],
        "usage": usage_dict(r.usage),
        "price_table_version": r.price_table_version,
        "latency_seconds": r.latency_seconds,
        "ttft_seconds": r.ttft_seconds,
        "status_code": r.status_code,
        "cache": r.cache,
        "saved_cost_micros": r.saved_cost_micros,
        "streamed": r.streamed,
        "fallback_used": r.fallback_used,
        "operation": r.operation,
    }


def from_dict(d: Mapping[str, Any]) -> UsageRecord:
    ttft = d.get("ttft_seconds")
    return UsageRecord(
        record_id=str(d["record_id"]),
        request_id=str(d.get("request_id", "")),
        trace_id=str(d.get("trace_id", "")),
        time=float(d["time"]),
        project=str(d.get("project", "")),
        user=str(d.get("user", "")),
        tags=tuple(sorted((str(k), str(v)) for k, v in dict(d.get("tags") or {}).items())),
        tenant=str(d.get("tenant", "")),
        requested_model=str(d.get("requested_model", "")),
        resolved_model=str(d.get("resolved_model", "")),
        provider=str(d.get("provider", "")),
        deployment=str(d.get("deployment", "")),
        attempts=tuple(_attempt_from(a) for a in d.get("attempts") or ()),
        usage=usage_from(d.get("usage") or {}),
        price_table_version=str(d.get("price_table_version", "")),
        latency_seconds=float(d.get("latency_seconds", 0.0)),
        ttft_seconds=None if ttft is None else float(ttft),
        status_code=int(d.get("status_code", 0)),
        cache=str(d.get("cache", "")),
        saved_cost_micros=int(d.get("saved_cost_micros", 0)),
        streamed=bool(d.get("streamed", False)),
        fallback_used=bool(d.get("fallback_used", False)),
        operation=str(d.get("operation", "complete")),
    )
