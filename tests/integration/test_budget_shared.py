"""One budget, two gateway servers, spend counted in one Redis: what one server spends, the other enforces.

Both in-process servers define the same budget in their settings and keep their
spend counters in the local Redis under a key prefix of the test's own; each has
its own SQLite ledger, so the only thing they share is Redis. Costs are checked
against the configured price, computed here from the tokens of each reply.
"""

from __future__ import annotations

import dataclasses
from fractions import Fraction
from pathlib import Path

import grpc
import pytest
import redis.asyncio as redis
from google.rpc import error_details_pb2
from grpc import aio

from omnirelay.app import App
from omnirelay.config import Settings
from omnirelay.config.routing import PricingSettings
from omnirelay.usage.ledger import BudgetScope, BudgetSpec, UsageQuery
from omnirelay_client.v1 import completion_pb2, completion_pb2_grpc, usage_pb2, usage_pb2_grpc
from tests.conftest import StartServer, with_usage_in
from tests.helpers import request, rich_status

# `prefix` (unique per test) and `raw` (deletes every key under it afterwards) come from
# tests/integration/conftest.py; `raw` is asked for first so its cleanup runs after the servers stop.

PRICE = PricingSettings(input=2.5, output=10.0, source="test", as_of="2026-11-01")
BUDGET_ID = "shared-harbor"
# A local call costs a few hundred micro-USD at PRICE: the limit takes a handful of calls to reach.
LIMIT = 1_000
SPEC = BudgetSpec(BUDGET_ID, BudgetScope(project="harbor"), LIMIT, "total", thresholds=(1.0,))


def expected_cost(input_tokens: int, output_tokens: int) -> int:
    """Micro-USD from the tokens, apart from the gateway: USD per million, rounded half up."""
    exact = Fraction(str(PRICE.input)) * input_tokens + Fraction(str(PRICE.output)) * output_tokens
    return int(exact + Fraction(1, 2))


def replica(
    settings: Settings, directory: Path, redis_url: str, key_prefix: str, spec: BudgetSpec = SPEC
) -> Settings:
    """Settings of one replica: its own ledger, local-small priced, budgets counted in the shared Redis."""
    s = with_usage_in(settings, directory)
    small = dataclasses.replace(s.models["local-small"], pricing=PRICE)
    budgets = dataclasses.replace(
        s.budgets, counters="redis", redis_url=redis_url, key_prefix=key_prefix, limits=(spec,)
    )
    return dataclasses.replace(s, models={**s.models, "local-small": small}, budgets=budgets)


def billed(text: str, project: str = "harbor") -> completion_pb2.CompleteRequest:
    req = request(text)
    req.attribution.project = project
    return req


async def complete(app: App, channel: aio.Channel, req: completion_pb2.CompleteRequest) -> int:
    """Make the call, wait for its budget settlement, return its cost (checked against the tokens)."""
    reply = await completion_pb2_grpc.CompletionServiceStub(channel).Complete(req)
    assert reply.usage.cost_micros == expected_cost(reply.usage.input_tokens, reply.usage.output_tokens) > 0
    assert await app.usage_layer.drain() == 0
    return int(reply.usage.cost_micros)


async def spent(channel: aio.Channel, limit: int = LIMIT) -> int:
    (budget,) = (
        await usage_pb2_grpc.UsageServiceStub(channel).ListBudgets(usage_pb2.ListBudgetsRequest())
    ).budgets
    assert (budget.id, budget.limit_micros, budget.period) == (
        BUDGET_ID,
        limit,
        usage_pb2.BUDGET_PERIOD_TOTAL,
    )
    return int(budget.spent_micros)


def quota_subjects(error: grpc.aio.AioRpcError) -> list[str]:
    quota = error_details_pb2.QuotaFailure()
    for detail in rich_status(error).details:
        if detail.Is(quota.DESCRIPTOR):
            detail.Unpack(quota)
    return [v.subject for v in quota.violations]


async def test_spend_on_one_server_exhausts_the_budget_on_the_other(
    raw: redis.Redis,
    prefix: str,
    redis_url: str,
    start_server: StartServer,
    settings: Settings,
    tmp_path: Path,
) -> None:
    key_prefix = f"{prefix}:"
    app_a, channel_a = await start_server(replica(settings, tmp_path / "a", redis_url, key_prefix))
    app_b, channel_b = await start_server(replica(settings, tmp_path / "b", redis_url, key_prefix))
    assert (await spent(channel_a), await spent(channel_b)) == (0, 0)

    costs: list[int] = []
    refusal: grpc.aio.AioRpcError | None = None
    for i in range(50):
        try:
            costs.append(await complete(app_a, channel_a, billed(f"spend on server a, call {i}")))
        except grpc.aio.AioRpcError as exc:
            refusal = exc
            break
        # B sees every call A made, as A settles it.
        assert await spent(channel_b) == sum(costs)
    assert refusal is not None, "server A never refused"
    assert refusal.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # A refused exactly once the spend had reached the limit, not before.
    assert len(costs) >= 2
    assert sum(costs[:-1]) < LIMIT <= sum(costs)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await completion_pb2_grpc.CompletionServiceStub(channel_b).Complete(billed("now through server b"))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert quota_subjects(caught.value) == [f"budget:{BUDGET_ID}"]
    assert BUDGET_ID in (caught.value.details() or "")

    # Out of the budget's scope, B still serves.
    await complete(app_b, channel_b, billed("another project", project="dock"))
    assert await spent(channel_b) == await spent(channel_a) == sum(costs)
    # The spend lives in Redis under the test's prefix, not in either server.
    assert int(await raw.get(f"{key_prefix}spend:{BUDGET_ID}:total")) == sum(costs)

    # B's own ledger holds only its own calls: the refusal (no cost) and the out-of-scope call.
    await app_b.usage.recorder.flush()
    b_records = [r async for r in app_b.usage.ledger.records(UsageQuery())]
    assert sorted((r.project, r.status_code) for r in b_records) == [
        ("dock", 0),
        ("harbor", grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]),
    ]
    assert [r.usage.cost_micros for r in b_records if r.project == "harbor"] == [0]


async def test_both_servers_add_to_one_spend(
    raw: redis.Redis,
    prefix: str,
    redis_url: str,
    start_server: StartServer,
    settings: Settings,
    tmp_path: Path,
) -> None:
    key_prefix = f"{prefix}:"
    roomy = dataclasses.replace(SPEC, limit_micros=1_000_000)
    servers = [
        await start_server(replica(settings, tmp_path / name, redis_url, key_prefix, roomy))
        for name in ("a", "b")
    ]
    costs: list[int] = []
    for i in range(3):
        for app, channel in servers:
            costs.append(await complete(app, channel, billed(f"alternate {i} on {app.address}")))
            assert [await spent(c, roomy.limit_micros) for _, c in servers] == [sum(costs)] * 2
    assert len(costs) == 6
    assert int(await raw.get(f"{key_prefix}spend:{BUDGET_ID}:total")) == sum(costs)
