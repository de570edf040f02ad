"""The standard grpc.health.v1 service, with Watch streams that end when the server stops.

The stock servicer's Watch streams never finish; a Kubernetes or Envoy probe
holding one would keep every shutdown waiting for the whole grace period.
Once the server stops taking calls (after watchers have seen NOT_SERVING),
``close_watches`` ends them with OK so only real calls use the grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from grpc import aio
from grpc_health.v1 import health, health_pb2


class HealthService(health.aio.HealthServicer):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self._closed = asyncio.Event()

    async def Watch(  # noqa: N802 (gRPC method name)
        self, request: health_pb2.HealthCheckRequest, context: aio.ServicerContext[Any, Any]
    ) -> None:
        watch = asyncio.ensure_future(super().Watch(request, context))
        closed = asyncio.ensure_future(self._closed.wait())
        try:
            await asyncio.wait({watch, closed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closed.cancel()
            if not watch.done():
                watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch

    def close_watches(self) -> None:
        self._closed.set()
