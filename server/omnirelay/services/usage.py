"""omnirelay.v1.UsageService: usage reports, exports and forecasts from the ledger; budgets.

Thin translation: protos in, the ledger, the aggregator, the forecaster and the
budget book do the work, protos out. Reads never touch a request's path.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import AsyncIterator
from typing import Any

from google.protobuf import timestamp_pb2
from grpc import aio

from omnirelay.errors import FieldViolation, InvalidArgumentError, NotFoundError, UnavailableError
from omnirelay.services import render
from omnirelay.usage.forecast import DailySpend, forecast
from omnirelay.usage.ledger import BudgetScope, BudgetSpec, LedgerUnavailableError, UsageQuery
from omnirelay.usage.query import Dimension, Group, Percentiles, aggregate
from omnirelay.usage.records import UsageRecord
from omnirelay.usage.runtime import UsageRuntime
from omnirelay_client.v1 import types_pb2, usage_pb2, usage_pb2_grpc

Context = aio.ServicerContext[Any, Any]
MAX_PAGE = 1000
_DIMENSIONS = {
    usage_pb2.USAGE_DIMENSION_PROJECT: Dimension.PROJECT,
    usage_pb2.USAGE_DIMENSION_USER: Dimension.USER,
    usage_pb2.USAGE_DIMENSION_MODEL: Dimension.MODEL,
    usage_pb2.USAGE_DIMENSION_PROVIDER: Dimension.PROVIDER,
    usage_pb2.USAGE_DIMENSION_DEPLOYMENT: Dimension.DEPLOYMENT,
    usage_pb2.USAGE_DIMENSION_STATUS: Dimension.STATUS,
    usage_pb2.USAGE_DIMENSION_MINUTE: Dimension.MINUTE,
    usage_pb2.USAGE_DIMENSION_HOUR: Dimension.HOUR,
    usage_pb2.USAGE_DIMENSION_DAY: Dimension.DAY,
    usage_pb2.USAGE_DIMENSION_WEEK: Dimension.WEEK,
    usage_pb2.USAGE_DIMENSION_MONTH: Dimension.MONTH,
    usage_pb2.USAGE_DIMENSION_TAG: Dimension.TAG,
}
_PERIODS = {
    usage_pb2.BUDGET_PERIOD_DAILY: "day",
    usage_pb2.BUDGET_PERIOD_WEEKLY: "week",
    usage_pb2.BUDGET_PERIOD_MONTHLY: "month",
    usage_pb2.BUDGET_PERIOD_TOTAL: "total",
}
_PERIOD_ENUMS = {v: k for k, v in _PERIODS.items()}
_CACHE = {
    "hit": types_pb2.CACHE_OUTCOME_HIT,
    "miss": types_pb2.CACHE_OUTCOME_MISS,
    "coalesced": types_pb2.CACHE_OUTCOME_COALESCED,
    "bypass": types_pb2.CACHE_OUTCOME_BYPASS,
    "refresh": types_pb2.CACHE_OUTCOME_REFRESH,
}
_OUTCOMES = {
    name.removeprefix("ATTEMPT_OUTCOME_").lower(): value for name, value in types_pb2.AttemptOutcome.items()
}


class UsageService(usage_pb2_grpc.UsageServiceServicer):
    def __init__(self, runtime: UsageRuntime) -> None:
        self._runtime = runtime
        self._ledger = runtime.ledger
        self._book = runtime.book

    # --- reports ------------------------------------------------------------------------------

    async def QueryUsage(  # noqa: N802
        self, request: usage_pb2.QueryUsageRequest, context: Context
    ) -> usage_pb2.QueryUsageResponse:
        bad: list[FieldViolation] = []
        query = usage_query(request.filter, "filter.", bad)
        group_by = []
        for i, value in enumerate(request.group_by):
            dim = _DIMENSIONS.get(value)
            if dim is None:
                bad.append(FieldViolation(f"group_by[{i}]", "unknown or unspecified dimension"))
            else:
                group_by.append(dim)
        if Dimension.TAG in group_by and not request.group_by_tag:
            bad.append(FieldViolation("group_by_tag", "required when grouping by USAGE_DIMENSION_TAG"))
        if request.page_size < 0:
            bad.append(FieldViolation("page_size", "must not be negative"))
        offset = 0
        if request.page_token:
            token = request.page_token
            if token.isascii() and token.isdecimal():
                offset = int(token)
            else:
                bad.append(FieldViolation("page_token", "not a token from a previous response"))
        if bad:
            raise InvalidArgumentError(bad)
        groups = await aggregate(_records(self._runtime, query), group_by, request.group_by_tag)
        size = min(request.page_size or MAX_PAGE, MAX_PAGE)
        page = groups[offset : offset + size]
        more = offset + size < len(groups)
        return usage_pb2.QueryUsageResponse(
            groups=[_group(g) for g in page], next_page_token=str(offset + size) if more else ""
        )

    async def ExportUsage(  # noqa: N802
        self, request: usage_pb2.ExportUsageRequest, context: Context
    ) -> AsyncIterator[usage_pb2.ExportUsageResponse]:
        bad: list[FieldViolation] = []
        query = usage_query(request.filter, "filter.", bad)
        if bad:
            raise InvalidArgumentError(bad)
        async for record in _records(self._runtime, query):
            yield usage_pb2.ExportUsageResponse(record=record_proto(record))

    async def ForecastCost(  # noqa: N802
        self, request: usage_pb2.ForecastCostRequest, context: Context
    ) -> usage_pb2.ForecastCostResponse:
        bad: list[FieldViolation] = []
        query = usage_query(request.filter, "filter.", bad)
        horizon = request.horizon.ToTimedelta() if request.HasField("horizon") else dt.timedelta(days=30)
        if horizon <= dt.timedelta(0) or horizon > dt.timedelta(days=3660):
            bad.append(FieldViolation("horizon", "must be between 1 second and 10 years"))
        if bad:
            raise InvalidArgumentError(bad)
        spend = DailySpend()
        async for record in _records(self._runtime, query):
            spend.add(record)
        daily = spend.by_day()
        # The window's first and last days count as days, with zero spend where nothing was
        # recorded: a project that stopped spending must not be forecast at its old rate.
        end = query.end if query.end is not None else dt.datetime.now(dt.UTC).timestamp()
        last_day = dt.datetime.fromtimestamp(end - 1e-6, dt.UTC).date()  # the end is exclusive
        daily.setdefault(last_day, 0)
        if query.start is not None:
            daily.setdefault(dt.datetime.fromtimestamp(query.start, dt.UTC).date(), 0)
        days = max(1, math.ceil(horizon / dt.timedelta(days=1)))
        result = forecast(daily, last_day + dt.timedelta(days=1), days)
        return usage_pb2.ForecastCostResponse(
            forecast_cost_micros=result.total_micros,
            low_cost_micros=result.low_micros,
            high_cost_micros=result.high_micros,
            history_records=spend.records,
            method=result.method,
            history_days=result.history_days,
            daily_forecast_micros=result.daily_micros,
        )

    # --- budgets ------------------------------------------------------------------------------

    async def SetBudget(  # noqa: N802
        self, request: usage_pb2.SetBudgetRequest, context: Context
    ) -> usage_pb2.SetBudgetResponse:
        spec = budget_spec(request.budget)
        try:
            await self._ledger.put_budget(spec)
        except LedgerUnavailableError as exc:
            raise UnavailableError(
                f"the budget was not stored: {exc}; retry when the ledger is back"
            ) from None
        await self._runtime.refresh_budgets()
        return usage_pb2.SetBudgetResponse(budget=await self._budget(spec))

    async def ListBudgets(  # noqa: N802
        self, request: usage_pb2.ListBudgetsRequest, context: Context
    ) -> usage_pb2.ListBudgetsResponse:
        specs = [s for s in self._book.specs() if not request.project or s.scope.project == request.project]
        return usage_pb2.ListBudgetsResponse(budgets=[await self._budget(s) for s in specs])

    async def DeleteBudget(  # noqa: N802
        self, request: usage_pb2.DeleteBudgetRequest, context: Context
    ) -> usage_pb2.DeleteBudgetResponse:
        known = {s.id: s for s in self._book.specs()}
        if request.id not in known:
            raise NotFoundError(
                f"no budget {request.id!r}; ListBudgets shows the ids", metadata={"budget": request.id}
            )
        if request.id in {b.id for b in self._runtime.budget_settings.limits}:
            raise InvalidArgumentError(
                [FieldViolation("id", "this budget is defined in the server's config; remove it there")]
            )
        shown = await self._budget(known[request.id])
        try:
            await self._ledger.delete_budget(request.id)
        except LedgerUnavailableError as exc:
            raise UnavailableError(
                f"the budget was not deleted: {exc}; retry when the ledger is back"
            ) from None
        await self._runtime.refresh_budgets()
        return usage_pb2.DeleteBudgetResponse(budget=shown)

    async def _budget(self, spec: BudgetSpec) -> usage_pb2.Budget:
        spent, start, end = await self._book.status(spec)
        out = usage_pb2.Budget(
            id=spec.id,
            scope=usage_pb2.UsageFilter(
                project=spec.scope.project,
                user=spec.scope.user,
                model=spec.scope.model,
                tags=dict(spec.scope.tags),
            ),
            limit_micros=spec.limit_micros,
            period=_PERIOD_ENUMS[spec.period],
            alert_thresholds=spec.thresholds,
            spent_micros=spent,
            reserve=spec.reserve,
        )
        _set_time(out.period_start, start)
        if end is not None:
            _set_time(out.period_end, end)
        return out


async def _records(runtime: UsageRuntime, query: UsageQuery) -> AsyncIterator[UsageRecord]:
    """The matching records; the recorder's queue is flushed first so a report includes the latest calls."""
    await runtime.recorder.flush()
    try:
        async for record in runtime.ledger.records(query):
            yield record
    except LedgerUnavailableError as exc:
        raise UnavailableError(
            f"usage ledger unavailable: {exc}; retry shortly", retry_after_seconds=1.0
        ) from None


def usage_query(f: usage_pb2.UsageFilter, prefix: str, bad: list[FieldViolation]) -> UsageQuery:
    start = _seconds(f.start_time) if f.HasField("start_time") else None
    end = _seconds(f.end_time) if f.HasField("end_time") else None
    if start is not None and end is not None and end <= start:
        bad.append(FieldViolation(prefix + "end_time", "must be after start_time"))
    return UsageQuery(
        start=start,
        end=end,
        project=f.project,
        user=f.user,
        model=f.model,
        provider=f.provider,
        deployment=f.deployment,
        tags=tuple(sorted(f.tags.items())),
        status_codes=tuple(f.status_codes),
    )


def budget_spec(b: usage_pb2.Budget) -> BudgetSpec:
    bad: list[FieldViolation] = []
    if not b.id or len(b.id) > 128 or not b.id.isprintable():
        bad.append(FieldViolation("budget.id", "required: 1 to 128 printable characters"))
    if b.limit_micros < 0:
        bad.append(FieldViolation("budget.limit_micros", "must not be negative"))
    period = _PERIODS.get(b.period)
    if period is None:
        bad.append(FieldViolation("budget.period", "required: DAILY, WEEKLY, MONTHLY or TOTAL"))
    for i, t in enumerate(b.alert_thresholds):
        if not 0 < t <= 1:
            bad.append(FieldViolation(f"budget.alert_thresholds[{i}]", "must be a fraction in (0, 1]"))
    scope = b.scope
    if (
        scope.HasField("start_time")
        or scope.HasField("end_time")
        or scope.provider
        or scope.deployment
        or scope.status_codes
    ):
        bad.append(FieldViolation("budget.scope", "a budget scope is project, user, model and tags only"))
    if bad:
        raise InvalidArgumentError(bad)
    return BudgetSpec(
        id=b.id,
        scope=BudgetScope(
            project=scope.project, user=scope.user, model=scope.model, tags=tuple(sorted(scope.tags.items()))
        ),
        limit_micros=b.limit_micros,
        period=period or "month",
        thresholds=tuple(sorted(set(b.alert_thresholds))) or (0.5, 0.8, 1.0),
        reserve=b.reserve,
    )


def _set_time(out: timestamp_pb2.Timestamp, seconds: float) -> None:
    # Whole seconds apart from the fraction: seconds * 1e9 as a float is only good to 256 ns.
    whole = math.floor(seconds)
    out.seconds = whole
    out.nanos = min(round((seconds - whole) * 1e9), 999_999_999)


def _seconds(t: timestamp_pb2.Timestamp) -> float:
    return t.seconds + t.nanos / 1e9


def _percentiles(p: Percentiles) -> usage_pb2.DurationPercentiles:
    return usage_pb2.DurationPercentiles(
        p50=render.duration(p.p50), p95=render.duration(p.p95), p99=render.duration(p.p99), samples=p.samples
    )


def _group(g: Group) -> usage_pb2.UsageGroup:
    return usage_pb2.UsageGroup(
        keys=g.keys,
        calls=g.calls,
        failed_calls=g.failed_calls,
        usage=render.usage(g.usage),
        saved_cost_micros=g.saved_cost_micros,
        error_rate=g.error_rate,
        status_codes=dict(g.status_codes),
        cache_hits=g.cache_hits,
        cache_hit_rate=g.cache_hit_rate,
        fallback_calls=g.fallback_calls,
        fallback_rate=g.fallback_rate,
        latency=_percentiles(g.latency),
        time_to_first_token=_percentiles(g.ttft),
        estimated_calls=g.estimated_calls,
    )


def record_proto(r: UsageRecord) -> usage_pb2.UsageRecord:
    out = usage_pb2.UsageRecord(
        request_id=r.request_id,
        trace_id=r.trace_id,
        attribution=types_pb2.Attribution(project=r.project, user=r.user, tags=dict(r.tags)),
        tenant=r.tenant,
        requested_model=r.requested_model,
        resolved_model=r.resolved_model,
        provider=r.provider,
        deployment=r.deployment,
        attempts=[
            usage_pb2.UsageAttempt(
                attempt=types_pb2.Attempt(
                    model=a.model,
                    provider=a.provider,
                    deployment=a.deployment,
                    outcome=_OUTCOMES.get(a.outcome, 0),  # type: ignore[arg-type]
                    detail=a.detail,
                    latency=render.duration(a.latency_seconds),
                    upstream_request_id=a.upstream_request_id,
                ),
                usage=render.usage(a.usage),
            )
            for a in r.attempts
        ],
        usage=render.usage(r.usage),
        price_table_version=r.price_table_version,
        latency=render.duration(r.latency_seconds),
        status_code=r.status_code,
        cache=_CACHE.get(r.cache, types_pb2.CACHE_OUTCOME_UNSPECIFIED),
        saved_cost_micros=r.saved_cost_micros,
        streamed=r.streamed,
        fallback_used=r.fallback_used,
    )
    _set_time(out.time, r.time)
    if r.ttft_seconds is not None:
        out.time_to_first_token.CopyFrom(render.duration(r.ttft_seconds))
    return out
