"""The ledgers' one schema: versioned migrations per dialect and the row forms both dialects store.

A record is one row of scalar columns, which queries filter and sum on and the
record is rebuilt from, plus ``attempts`` as JSON. Writing happens for every
call, so the row is cheap to build: the common attempt list, one success that
repeats the record's own route and usage, is stored as "" and rebuilt from the
columns; only fallbacks, failures and retries spell their attempts out.

Migrations are append-only: a released version is never edited, a change is a
new version. Each runs once, inside the transaction that records it in
``schema_migrations``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from omnirelay.domain import TokenUsage
from omnirelay.usage.ledger import BudgetScope, BudgetSpec, UsageQuery
from omnirelay.usage.records import BilledAttempt, UsageRecord, attempts_from_json, attempts_json


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema version: the statements that reach it from the version before, per dialect."""

    version: int
    description: str
    sqlite: tuple[str, ...]
    postgres: tuple[str, ...]


# Created before any migration runs, so the set of applied versions can be read first.
MIGRATIONS_TABLE = "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY)"

# The column is ``user_name``, not ``user``: unquoted ``user`` is a Postgres keyword that
# evaluates to the session's role, so a forgotten quote would silently compare against that.
_INDEXES = (
    "CREATE INDEX usage_records_time ON usage_records (time)",
    "CREATE INDEX usage_records_project_time ON usage_records (project, time)",
    "CREATE INDEX usage_records_user_time ON usage_records (user_name, time)",
    "CREATE INDEX usage_records_model_time ON usage_records (resolved_model, time)",
    "CREATE INDEX usage_records_provider_time ON usage_records (provider, time)",
    "CREATE INDEX usage_records_deployment_time ON usage_records (deployment, time)",
    "CREATE INDEX usage_records_status_time ON usage_records (status_code, time)",
    # For "the most expensive calls" reports, which sort on cost rather than filter on it.
    "CREATE INDEX usage_records_cost ON usage_records (cost_micros)",
)

# SQLite writes on the gateway's own core, and each index costs every insert about a microsecond:
# the embedded ledger keeps the time index only (reports and budget totals read a time range and
# filter the rest as they scan). PostgreSQL does its index work on its own server.
_SQLITE_INDEXES = _INDEXES[:1]

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        version=1,
        description="usage records and budget definitions",
        sqlite=(
            """
            CREATE TABLE usage_records (
                record_id TEXT PRIMARY KEY,
                request_id TEXT NOT NULL,
                trace_id TEXT NOT NULL,
                time REAL NOT NULL,
                project TEXT NOT NULL,
                user_name TEXT NOT NULL,
                tenant TEXT NOT NULL,
                requested_model TEXT NOT NULL,
                resolved_model TEXT NOT NULL,
                provider TEXT NOT NULL,
                deployment TEXT NOT NULL,
                status_code INTEGER NOT NULL,
                operation TEXT NOT NULL,
                streamed INTEGER NOT NULL,
                fallback_used INTEGER NOT NULL,
                cache TEXT NOT NULL,
                attempt_count INTEGER NOT NULL,
                latency_seconds REAL NOT NULL,
                ttft_seconds REAL,
                input_tokens INTEGER NOT NULL,
                output_tokens INTEGER NOT NULL,
                cached_input_tokens INTEGER NOT NULL,
                cache_write_input_tokens INTEGER NOT NULL,
                reasoning_tokens INTEGER NOT NULL,
                estimated INTEGER NOT NULL,
                cost_micros INTEGER NOT NULL,
                saved_cost_micros INTEGER NOT NULL,
                price_table_version TEXT NOT NULL,
                tags TEXT NOT NULL,
                attempts TEXT
            )
            """,
            *_SQLITE_INDEXES,
            "CREATE TABLE budgets (id TEXT PRIMARY KEY, body TEXT NOT NULL)",
        ),
        postgres=(
            """
            CREATE TABLE usage_records (
                record_id TEXT PRIMARY KEY,
                request_id TEXT NOT NULL,
                trace_id TEXT NOT NULL,
                time DOUBLE PRECISION NOT NULL,
                project TEXT NOT NULL,
                user_name TEXT NOT NULL,
                tenant TEXT NOT NULL,
                requested_model TEXT NOT NULL,
                resolved_model TEXT NOT NULL,
                provider TEXT NOT NULL,
                deployment TEXT NOT NULL,
                status_code INTEGER NOT NULL,
                operation TEXT NOT NULL,
                streamed BOOLEAN NOT NULL,
                fallback_used BOOLEAN NOT NULL,
                cache TEXT NOT NULL,
                attempt_count INTEGER NOT NULL,
                latency_seconds DOUBLE PRECISION NOT NULL,
                ttft_seconds DOUBLE PRECISION,
                input_tokens BIGINT NOT NULL,
                output_tokens BIGINT NOT NULL,
                cached_input_tokens BIGINT NOT NULL,
                cache_write_input_tokens BIGINT NOT NULL,
                reasoning_tokens BIGINT NOT NULL,
                estimated BOOLEAN NOT NULL,
                cost_micros BIGINT NOT NULL,
                saved_cost_micros BIGINT NOT NULL,
                price_table_version TEXT NOT NULL,
                tags JSONB NOT NULL,
                attempts TEXT
            )
            """,
            *_INDEXES,
            # jsonb_path_ops: smaller than the default opclass and serves exactly the @> that tag filters use.
            "CREATE INDEX usage_records_tags ON usage_records USING GIN (tags jsonb_path_ops)",
            "CREATE TABLE budgets (id TEXT PRIMARY KEY, body TEXT NOT NULL)",
        ),
    ),
)


def pending(applied: set[int]) -> list[Migration]:
    """Migrations not yet applied, in order. Versions newer than this code knows are left alone:
    an older replica in a rolling deploy keeps running against the newer, additive schema."""
    return [m for m in MIGRATIONS if m.version not in applied]


# Columns of usage_records in the order ``record_row`` fills them.
RECORD_COLUMNS: tuple[str, ...] = (
    "record_id",
    "request_id",
    "trace_id",
    "time",
    "project",
    "user_name",
    "tenant",
    "requested_model",
    "resolved_model",
    "provider",
    "deployment",
    "status_code",
    "operation",
    "streamed",
    "fallback_used",
    "cache",
    "attempt_count",
    "latency_seconds",
    "ttft_seconds",
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "cache_write_input_tokens",
    "reasoning_tokens",
    "estimated",
    "cost_micros",
    "saved_cost_micros",
    "price_table_version",
    "tags",
    "attempts",
)


NO_TAGS = "{}"


def _plain_attempts(r: UsageRecord) -> bool:
    """Is the attempt list the one the columns imply: one success on the record's own route?"""
    if len(r.attempts) != 1:
        return False
    # Unpacked once: every record the ledger writes asks this (a descriptor call per field read).
    model, provider, deployment, outcome, detail, latency_seconds, upstream_request_id, usage = r.attempts[0]
    return (
        (usage is r.usage or usage == r.usage)
        and outcome == "success"
        and model == r.resolved_model
        and provider == r.provider
        and deployment == r.deployment
        and not detail
        and not upstream_request_id
        and not latency_seconds
    )


def tags_text(r: UsageRecord) -> str:
    """The ``tags`` column: the tags as JSON with sorted keys, ``NO_TAGS`` for none."""
    return json.dumps(dict(r.tags), separators=(",", ":"), sort_keys=True) if r.tags else NO_TAGS


def attempts_text(r: UsageRecord) -> str:
    """The ``attempts`` column: "" for none or the plain one the other columns imply, else JSON.

    "" rather than NULL: binding None goes through the SQLite driver's adapter lookup.
    """
    return "" if not r.attempts or _plain_attempts(r) else attempts_json(r.attempts)


def record_row(r: UsageRecord, flag: Callable[[bool], Any] = bool) -> tuple[Any, ...]:
    """One record as the values of RECORD_COLUMNS; ``tags`` and ``attempts`` as JSON text.

    ``flag`` renders the booleans: SQLite gets ints, because its driver tries to adapt a bool
    (a subclass of int) through the adapter protocol, two failed attribute lookups per value.
    """
    u = r.usage
    return (
        r.record_id,
        r.request_id,
        r.trace_id,
        r.time,
        r.project,
        r.user,
        r.tenant,
        r.requested_model,
        r.resolved_model,
        r.provider,
        r.deployment,
        r.status_code,
        r.operation,
        flag(r.streamed),
        flag(r.fallback_used),
        r.cache,
        len(r.attempts),
        r.latency_seconds,
        r.ttft_seconds,
        u.input_tokens,
        u.output_tokens,
        u.cached_input_tokens,
        u.cache_write_input_tokens,
        u.reasoning_tokens,
        flag(u.estimated),
        u.cost_micros,
        r.saved_cost_micros,
        r.price_table_version,
        tags_text(r),
        attempts_text(r),
    )


def record_from_row(row: Sequence[Any]) -> UsageRecord:
    """The record a RECORD_COLUMNS row (in that order) stores; tags may come back as text or a dict."""
    (
        record_id,
        request_id,
        trace_id,
        time,
        project,
        user,
        tenant,
        requested_model,
        resolved_model,
        provider,
        deployment,
        status_code,
        operation,
        streamed,
        fallback_used,
        cache,
        attempt_count,
        latency_seconds,
        ttft_seconds,
        input_tokens,
        output_tokens,
        cached_input_tokens,
        cache_write_input_tokens,
        reasoning_tokens,
        estimated,
        cost_micros,
        saved_cost_micros,
        price_table_version,
        tags,
        attempts,
    ) = row
    usage = TokenUsage(
        int(input_tokens),
        int(output_tokens),
        int(cached_input_tokens),
        int(reasoning_tokens),
        bool(estimated),
        int(cache_write_input_tokens),
        int(cost_micros),
    )
    tag_map = json.loads(tags) if isinstance(tags, str) else dict(tags or {})
    if attempts:
        billed = attempts_from_json(attempts)
    elif attempt_count:
        billed = (BilledAttempt(resolved_model, provider, deployment, "success", usage=usage),)
    else:
        billed = ()
    return UsageRecord(
        record_id=record_id,
        request_id=request_id,
        time=float(time),
        requested_model=requested_model,
        status_code=int(status_code),
        trace_id=trace_id,
        project=project,
        user=user,
        tags=tuple(sorted((str(k), str(v)) for k, v in tag_map.items())),
        tenant=tenant,
        resolved_model=resolved_model,
        provider=provider,
        deployment=deployment,
        attempts=billed,
        usage=usage,
        price_table_version=price_table_version,
        latency_seconds=float(latency_seconds),
        ttft_seconds=None if ttft_seconds is None else float(ttft_seconds),
        cache=cache,
        saved_cost_micros=int(saved_cost_micros),
        streamed=bool(streamed),
        fallback_used=bool(fallback_used),
        operation=operation,
    )


@dataclass(frozen=True, slots=True)
class Filter:
    """A query or a budget scope reduced to what both dialects render into a WHERE clause."""

    equal: tuple[tuple[str, str], ...] = ()  # (column, value) pairs; only non-empty values
    start: float | None = None  # time >= start
    end: float | None = None  # time < end
    status_codes: tuple[int, ...] = ()
    tags: tuple[tuple[str, str], ...] = ()  # every pair must be among the record's tags


def _equalities(**columns: str) -> tuple[tuple[str, str], ...]:
    return tuple((column, value) for column, value in columns.items() if value)


def query_filter(q: UsageQuery) -> Filter:
    return Filter(
        equal=_equalities(
            project=q.project,
            user_name=q.user,
            resolved_model=q.model,
            provider=q.provider,
            deployment=q.deployment,
        ),
        start=q.start,
        end=q.end,
        status_codes=tuple(q.status_codes),
        tags=tuple(q.tags),
    )


def scope_filter(scope: BudgetScope, since: float | None) -> Filter:
    return Filter(
        equal=_equalities(project=scope.project, user_name=scope.user, resolved_model=scope.model),
        start=since,
        tags=tuple(scope.tags),
    )


def budget_to_json(b: BudgetSpec) -> str:
    # Tags stay a list of pairs, not an object, so a spec reads back exactly as it was put.
    return json.dumps(
        {
            "id": b.id,
            "scope": {
                "project": b.scope.project,
                "user": b.scope.user,
                "model": b.scope.model,
                "tags": [list(pair) for pair in b.scope.tags],
            },
            "limit_micros": b.limit_micros,
            "period": b.period,
            "thresholds": list(b.thresholds),
            "reserve": b.reserve,
        },
        separators=(",", ":"),
        sort_keys=True,
    )


def budget_from_json(text: str) -> BudgetSpec:
    d = json.loads(text)
    scope = d.get("scope") or {}
    return BudgetSpec(
        id=str(d["id"]),
        scope=BudgetScope(
            project=str(scope.get("project", "")),
            user=str(scope.get("user", "")),
            model=str(scope.get("model", "")),
            tags=tuple((str(k), str(v)) for k, v in scope.get("tags") or ()),
        ),
        limit_micros=int(d["limit_micros"]),
        period=str(d["period"]),
        thresholds=tuple(float(t) for t in d.get("thresholds") or ()),
        reserve=bool(d.get("reserve", False)),
    )
