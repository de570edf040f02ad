"""Serving status from the breakers: a service is NOT_SERVING only when no deployment can take a call.

Each deployment is also a health service of its own
(``omnirelay.deployment/<provider>/<model>``), NOT_SERVING while its breaker is
open, so operators can watch breakers with any gRPC health client.

Readiness never spends tokens: it is computed from breaker state alone. An open
breaker becomes admissible again when its reset timeout passes, so a re-check is
scheduled then; otherwise a load balancer that stopped sending traffic would
never see the instance recover.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from omnirelay.resilience.breaker import BreakerState

log = logging.getLogger("omnirelay.health")

Publish = Callable[[bool], Awaitable[None]]
# (deployment, serving): each deployment's breaker as a health service of its own.
PublishDeployment = Callable[[str, bool], Awaitable[None]]
DEPLOYMENT_SERVICE_PREFIX = "omnirelay.deployment/"


class RouteHealth:
    def __init__(self, reset_timeout_of: Callable[[str], float]) -> None:
        self._reset_timeout_of = reset_timeout_of
        self._available: Callable[[], bool] = lambda: True
        self._publish: Publish | None = None
        self._publish_deployment: PublishDeployment | None = None
        self._serving = True
        self._tasks: set[asyncio.Task[None]] = set()
        self._timers: list[asyncio.TimerHandle] = []

    def bind(self, available: Callable[[], bool], publish: Publish, deployment: PublishDeployment) -> None:
        self._available = available
        self._publish = publish
        self._publish_deployment = deployment

    def on_change(self, name: str, old: BreakerState, new: BreakerState) -> None:
        """pybreaker's state-change callback (synchronous, on the event loop's thread)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        loop.call_soon(self._refresh)
        if self._publish_deployment is not None:
            # An open breaker is NOT_SERVING; half-open takes trial calls, so it counts as serving.
            self._spawn(self._publish_deployment(name, new is not BreakerState.OPEN))
        if new is BreakerState.OPEN:
            # A hair after the reset timeout, so the breaker reads as admissible.
            self._timers.append(loop.call_later(self._reset_timeout_of(name) + 0.01, self._refresh))

    def _refresh(self) -> None:
        self._timers = [
            t for t in self._timers if not t.cancelled() and t.when() > asyncio.get_running_loop().time()
        ]
        serving = self._available()
        if serving == self._serving or self._publish is None:
            return
        self._serving = serving
        log.warning(
            "routing health: %s", "SERVING" if serving else "NOT_SERVING (every deployment's breaker is open)"
        )
        self._spawn(self._publish(serving))

    def _spawn(self, publishing: Awaitable[None]) -> None:
        task = asyncio.ensure_future(publishing)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def close(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
