"""Budgets over gRPC: SetBudget/ListBudgets/DeleteBudget, admission refusals, and reserve mode."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2

from omnirelay.app import App
from omnirelay.config import LocalProviderSettings, Settings
from omnirelay.config.routing import PricingSettings
from omnirelay.usage.ledger import UsageQuery
from omnirelay_client.v1 import completion_pb2, completion_pb2_grpc, usage_pb2, usage_pb2_grpc
from tests.conftest import StartServer
from tests.helpers import request, rich_status

PRICE = PricingSettings(input=2.5, output=10.0, source="test", as_of="2026-11-01")


def priced(settings: Settings, **local: float) -> Settings:
    provider = settings.providers["local"]
    assert isinstance(provider, LocalProviderSettings)
    small = dataclasses.replace(settings.models["local-small"], pricing=PRICE)
    return dataclasses.replace(
        settings,
        providers={**settings.providers, "local": dataclasses.replace(provider, **local)},  # type: ignore[arg-type]
        models={**settings.models, "local-small": small},
    )


def budget(
    budget_id: str, limit_micros: int, *, project: str = "harbor", reserve: bool = False
) -> usage_pb2.Budget:
    return usage_pb2.Budget(
        id=budget_id,
        scope=usage_pb2.UsageFilter(project=project),
        limit_micros=limit_micros,
        period=usage_pb2.BUDGET_PERIOD_DAILY,
        alert_thresholds=[0.5, 1.0],
        reserve=reserve,
    )


def billed(text: str, project: str = "harbor", **sampling: Any) -> completion_pb2.CompleteRequest:
    req = request(text, **sampling)
    req.attribution.project = project
    return req


async def test_set_list_delete_budget(start_server: StartServer, settings: Settings) -> None:
    _, channel = await start_server(settings)
    usage = usage_pb2_grpc.UsageServiceStub(channel)
    stored = (
        await usage.SetBudget(usage_pb2.SetBudgetRequest(budget=budget("daily-harbor", 5_000_000)))
    ).budget
    assert (stored.id, stored.limit_micros, stored.spent_micros) == ("daily-harbor", 5_000_000, 0)
    assert stored.period_start.seconds <= time.time() < stored.period_end.seconds
    assert stored.period_end.seconds - stored.period_start.seconds == 86400
    await usage.SetBudget(usage_pb2.SetBudgetRequest(budget=budget("other", 1, project="dock")))
    listed = await usage.ListBudgets(usage_pb2.ListBudgetsRequest())
    assert [b.id for b in listed.budgets] == ["daily-harbor", "other"]
    only = await usage.ListBudgets(usage_pb2.ListBudgetsRequest(project="dock"))
    assert [b.id for b in only.budgets] == ["other"]
    deleted = await usage.DeleteBudget(usage_pb2.DeleteBudgetRequest(id="other"))
    assert deleted.budget.id == "other"
    assert [b.id for b in (await usage.ListBudgets(usage_pb2.ListBudgetsRequest())).budgets] == [
        "daily-harbor"
    ]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await usage.DeleteBudget(usage_pb2.DeleteBudgetRequest(id="other"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_invalid_budget_names_each_bad_field(start_server: StartServer, settings: Settings) -> None:
    _, channel = await start_server(settings)
    bad = usage_pb2.Budget(limit_micros=-1, alert_thresholds=[1.5])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await usage_pb2_grpc.UsageServiceStub(channel).SetBudget(usage_pb2.SetBudgetRequest(budget=bad))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    fields = set()
    for detail in rich_status(caught.value).details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            found = error_details_pb2.BadRequest()
            detail.Unpack(found)
            fields = {v.field for v in found.field_violations}
    assert fields == {"budget.id", "budget.limit_micros", "budget.period", "budget.alert_thresholds[0]"}


async def test_spent_budget_refuses_with_quota_failure_and_retry_info(
    start_server: StartServer, settings: Settings
) -> None:
    app, channel = await start_server(priced(settings))
    usage = usage_pb2_grpc.UsageServiceStub(channel)
    stub = completion_pb2_grpc.CompletionServiceStub(channel)
    first = await stub.Complete(billed("a first call to the harbor"))
    # A limit the first call alone spent: the next call in scope is refused.
    await usage.SetBudget(usage_pb2.SetBudgetRequest(budget=budget("daily-harbor", first.usage.cost_micros)))
    await stub.Complete(billed("another project is not limited", project="dock"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Complete(billed("one more"))
    error = caught.value
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "daily-harbor" in (error.details() or "")
    quota = error_details_pb2.QuotaFailure()
    retry = error_details_pb2.RetryInfo()
    for detail in rich_status(error).details:
        if detail.Is(quota.DESCRIPTOR):
            detail.Unpack(quota)
        if detail.Is(retry.DESCRIPTOR):
            detail.Unpack(retry)
    assert [v.subject for v in quota.violations] == ["budget:daily-harbor"]
    seconds_to_midnight = 86400 - time.time() % 86400
    assert abs(retry.retry_delay.seconds - seconds_to_midnight) < 5
    listed = (await usage.ListBudgets(usage_pb2.ListBudgetsRequest())).budgets
    assert listed[0].spent_micros == first.usage.cost_micros
    # The refusal is a call too: it has its record, with its status and no cost.
    await app.usage.recorder.flush()
    statuses = sorted([r.status_code async for r in app.usage.ledger.records(UsageQuery(project="harbor"))])
    assert statuses == [0, grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]]


async def test_reserve_mode_bounds_spend_under_100_concurrent_calls(
    start_server: StartServer, settings: Settings
) -> None:
    app, channel = await start_server(priced(settings, ttft_ms=50.0))
    usage = usage_pb2_grpc.UsageServiceStub(channel)
    stub = completion_pb2_grpc.CompletionServiceStub(channel)
    # Each call may cost at most (prompt + 20 output tokens) at these prices; the limit fits some.
    limit = 2_000
    await usage.SetBudget(usage_pb2.SetBudgetRequest(budget=budget("tight", limit, reserve=True)))

    results = await asyncio.gather(
        *(stub.Complete(billed(f"reserve me {i}", max_tokens=20)) for i in range(100)), return_exceptions=True
    )
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert all(r.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for r in refused)
    served = [r.usage.cost_micros for r in results if not isinstance(r, BaseException)]
    assert len(served) + len(refused) == 100
    assert 0 < len(served) < 100
    assert sum(served) <= limit
    await app.usage_layer.drain()
    spent = (await usage.ListBudgets(usage_pb2.ListBudgetsRequest())).budgets[0].spent_micros
    assert spent == sum(served)


async def test_without_reserve_overshoot_is_bounded_by_calls_in_flight(
    start_server: StartServer, settings: Settings
) -> None:
    app, channel = await start_server(priced(settings, ttft_ms=50.0))
    usage = usage_pb2_grpc.UsageServiceStub(channel)
    stub = completion_pb2_grpc.CompletionServiceStub(channel)
    one = (await stub.Complete(billed("measure one call", project="probe", max_tokens=20))).usage.cost_micros
    await usage.SetBudget(usage_pb2.SetBudgetRequest(budget=budget("loose", 3 * one)))
    results = await asyncio.gather(
        *(stub.Complete(billed("measure one call", max_tokens=20)) for _ in range(10)), return_exceptions=True
    )
    served = [r for r in results if not isinstance(r, BaseException)]
    # All ten were admitted together before any settled: the overshoot is what was in flight.
    assert len(served) == 10
    await app.usage_layer.drain()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Complete(billed("now it is spent"))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    spent = (await usage.ListBudgets(usage_pb2.ListBudgetsRequest())).budgets[0].spent_micros
    assert spent == 10 * one
    assert spent <= 3 * one + 10 * one


async def test_config_budgets_are_enforced_and_cannot_be_deleted(
    start_server: StartServer, settings: Settings
) -> None:
    from omnirelay.usage.ledger import BudgetScope, BudgetSpec

    spec = BudgetSpec("from-config", BudgetScope(project="harbor"), 0, "month")
    s = dataclasses.replace(settings, budgets=dataclasses.replace(settings.budgets, limits=(spec,)))
    app, channel = await start_server(s)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await completion_pb2_grpc.CompletionServiceStub(channel).Complete(billed("zero budget"))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await usage_pb2_grpc.UsageServiceStub(channel).DeleteBudget(
            usage_pb2.DeleteBudgetRequest(id="from-config")
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert isinstance(app, App)
