"""Building routed settings over the provider simulator, for routing and resilience tests."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from omnirelay.config import HttpProviderSettings, ModelSettings, Settings
from omnirelay.config.routing import (
    BreakerSettings,
    DeploymentSettings,
    ModelRoutingSettings,
    PricingSettings,
    RetryBudgetSettings,
    RetrySettings,
    RoutingSettings,
)
from omnirelay.sim.server import RunningSim

# Retries without waiting, a budget that never refuses, breakers that never open: each test
# turns on only the behaviour it is about.
FAST_RETRY = RetrySettings(max_attempts=1, base_delay_seconds=0.0, max_delay_seconds=0.0)
OPEN_BUDGET = RetryBudgetSettings(ratio=10.0, min_retries_per_second=1000.0, window_seconds=10.0)
NEVER_OPEN = BreakerSettings(failure_threshold=1_000_000, reset_timeout_seconds=60.0)
SECRET = "sk-routing-secret-never-shown"
_PATHS = {"openai": "/v1", "azure": "", "anthropic": "", "gemini": "", "ollama": ""}


def sim_provider(name: str, sim: RunningSim, kind: str = "openai", **changes: object) -> HttpProviderSettings:
    """A provider named ``name`` speaking ``kind``'s wire format to the simulator."""
    base = HttpProviderSettings(
        name=name,
        kind=kind,
        base_url=sim.base_url + _PATHS[kind],
        api_key=SECRET,
        api_version="2024-10-21" if kind == "azure" else "",
        read_timeout=5.0,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def model(
    name: str,
    *deployments: DeploymentSettings | tuple[str, str],
    capabilities: Iterable[str] = ("streaming", "tools"),
    context_window: int = 128_000,
    aliases: Iterable[str] = (),
    pricing: PricingSettings | None = None,
    routing: ModelRoutingSettings | None = None,
) -> ModelSettings:
    """A model served by ``deployments`` ((provider, provider_model) pairs or DeploymentSettings)."""
    placed = tuple(d if isinstance(d, DeploymentSettings) else DeploymentSettings(*d) for d in deployments)
    return ModelSettings(
        name=name,
        family=name,
        aliases=tuple(aliases),
        capabilities=tuple(capabilities),
        context_window=context_window,
        max_output_tokens=4096,
        presets={},
        deployments=placed,
        pricing=pricing,
        routing=routing or ModelRoutingSettings(),
    )


def routed(
    settings: Settings,
    providers: Iterable[HttpProviderSettings],
    models: Iterable[ModelSettings],
    *,
    routing: RoutingSettings | None = None,
    retry: RetrySettings = FAST_RETRY,
    budget: RetryBudgetSettings = OPEN_BUDGET,
    breaker: BreakerSettings = NEVER_OPEN,
) -> Settings:
    """``settings`` plus these providers and models, with the given routing and resilience."""
    resilience = dataclasses.replace(settings.resilience, retry=retry, retry_budget=budget, breaker=breaker)
    return dataclasses.replace(
        settings,
        providers={**settings.providers, **{p.name: p for p in providers}},
        models={**settings.models, **{m.name: m for m in models}},
        routing=routing or settings.routing,
        resilience=resilience,
    )
