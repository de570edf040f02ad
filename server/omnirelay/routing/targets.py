"""Deployments as routing sees them at run time: provider, weight, price, breaker, live load and latency.

A ``Target`` is a deployment in one model's route; its breaker and statistics
belong to the deployment (``provider/provider_model``) and are shared by every
route through it, so they reflect all of its traffic.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from omnirelay.config.routing import BreakerSettings, PricingSettings, RetrySettings
from omnirelay.domain import Deployment
from omnirelay.providers.base import ChatProvider
from omnirelay.resilience.breaker import AsyncBreaker, BreakerState, StateListener
from omnirelay.resilience.retry import RetryPolicy
from omnirelay.usage.pricing import Price


class DeploymentStats:
    """Live load and latency of one deployment. Mutable on purpose: it is the routing statistics."""

    __slots__ = ("in_flight", "ttft_ewma")

    def __init__(self) -> None:
        self.in_flight = 0
        self.ttft_ewma: float | None = None

    def observe_ttft(self, seconds: float, alpha: float) -> None:
        previous = self.ttft_ewma
        self.ttft_ewma = seconds if previous is None else previous + alpha * (seconds - previous)


@dataclass(frozen=True, slots=True)
class Target:
    """A deployment in one model's route: its knobs there, and the state it shares across routes."""

    deployment: Deployment
    provider: ChatProvider
    breaker: AsyncBreaker
    retry: RetryPolicy
    stats: DeploymentStats
    weight: float = 1.0
    priority: int = 0
    # Input + output price per million orders lowest_cost; an unknown price sorts last.
    unit_price: float = float("inf")
    # What its tokens cost (None: unknown; such calls are recorded at cost 0).
    price: Price | None = None


def unit_price(pricing: PricingSettings | None) -> float:
    return pricing.input + pricing.output if pricing is not None else float("inf")


class TargetPool:
    """Creates each deployment's breaker and retry policy once, from its provider's settings."""

    def __init__(
        self,
        breaker_for: Callable[[str], BreakerSettings],
        retry_for: Callable[[str], RetrySettings],
        listener: StateListener | None = None,
    ) -> None:
        self._breaker_for = breaker_for
        self._retry_for = retry_for
        self._listener = listener
        self._breakers: dict[str, AsyncBreaker] = {}
        self._retries: dict[str, RetryPolicy] = {}
        self._stats: dict[str, DeploymentStats] = {}

    def target(
        self,
        deployment: Deployment,
        provider: ChatProvider,
        *,
        weight: float = 1.0,
        priority: int = 0,
        pricing: PricingSettings | None = None,
    ) -> Target:
        stats = self._stats.get(deployment.name)
        if stats is None:
            stats = self._stats[deployment.name] = DeploymentStats()
        return Target(
            deployment,
            provider,
            self.breaker(deployment),
            self.retry(deployment.provider),
            stats,
            weight,
            priority,
            unit_price(pricing),
            None if pricing is None else Price.of(pricing),
        )

    def breaker(self, deployment: Deployment) -> AsyncBreaker:
        found = self._breakers.get(deployment.name)
        if found is None:
            found = AsyncBreaker(deployment.name, self._breaker_for(deployment.provider), self._listener)
            self._breakers[deployment.name] = found
        return found

    def retry(self, provider: str) -> RetryPolicy:
        found = self._retries.get(provider)
        if found is None:
            found = RetryPolicy(self._retry_for(provider))
            self._retries[provider] = found
        return found

    def any_available(self) -> bool:
        """Can some deployment take a call now? (True before any deployment exists.)"""
        return not self._breakers or any(b.available() for b in self._breakers.values())

    def breakers_of(self, provider: str) -> list[AsyncBreaker]:
        return [b for name, b in self._breakers.items() if name.partition("/")[0] == provider]

    def states(self) -> Iterator[tuple[str, BreakerState]]:
        for name, breaker in sorted(self._breakers.items()):
            yield name, breaker.state
