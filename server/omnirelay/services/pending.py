"""Services whose contracts are published but whose implementation lands later.

They answer UNIMPLEMENTED with a message that says so, rather than the
generated stubs' bare "Method not implemented!".
"""

from __future__ import annotations

from typing import Any, NoReturn

from grpc import aio

from omnirelay.errors import UnimplementedError
from omnirelay_client.v1 import benchmark_pb2_grpc, usage_pb2_grpc

Context = aio.ServicerContext[Any, Any]


def _pending(method: str, capability: str) -> NoReturn:
    raise UnimplementedError(
        f"{method} is part of the v1 contract but {capability} is not served by this release yet"
    )


class BenchmarkService(benchmark_pb2_grpc.BenchmarkServiceServicer):
    async def RunBenchmark(self, request: Any, context: Context) -> Any:  # type: ignore[override]  # noqa: N802
        _pending("RunBenchmark", "benchmarking")

    async def EstimateCost(self, request: Any, context: Context) -> Any:  # noqa: N802
        _pending("EstimateCost", "cost estimation")


class UsageService(usage_pb2_grpc.UsageServiceServicer):
    async def QueryUsage(self, request: Any, context: Context) -> Any:  # noqa: N802
        _pending("QueryUsage", "the usage ledger")

    async def ExportUsage(self, request: Any, context: Context) -> Any:  # type: ignore[override]  # noqa: N802
        _pending("ExportUsage", "the usage ledger")

    async def ForecastCost(self, request: Any, context: Context) -> Any:  # noqa: N802
        _pending("ForecastCost", "cost forecasting")

    async def SetBudget(self, request: Any, context: Context) -> Any:  # noqa: N802
        _pending("SetBudget", "budgets")

    async def ListBudgets(self, request: Any, context: Context) -> Any:  # noqa: N802
        _pending("ListBudgets", "budgets")

    async def DeleteBudget(self, request: Any, context: Context) -> Any:  # noqa: N802
        _pending("DeleteBudget", "budgets")
