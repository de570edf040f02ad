"""Settings for routing and resilience: deployments, prices, strategies, fallback, breakers, retries."""

from __future__ import annotations

from dataclasses import dataclass, field

from omnirelay.config.reader import Section

STRATEGIES = ("priority", "weighted", "least_in_flight", "lowest_latency", "lowest_cost", "sticky")
# Failure classes a route may fall back on. Invalid requests and authentication failures are
# not among them: another deployment would refuse the same request or the same key.
FAILURE_CLASSES = (
    "rate_limited",
    "overloaded",
    "server_error",
    "timeout",
    "connection",
    "quota",
    "context_length",
    "content_filter",
    "not_found",
)
DEFAULT_FALLBACK_ON = (
    "rate_limited",
    "overloaded",
    "server_error",
    "timeout",
    "connection",
    "context_length",
)
# What a stream does when its upstream fails after chunks reached the caller.
STREAM_RECOVERY = ("error", "continue")


@dataclass(frozen=True, slots=True)
class PricingSettings:
    """List prices in USD per million tokens, with where and when they were read."""

    input: float
    output: float
    cached_input: float | None = None
    # Prompt-cache writes (Anthropic's cache_creation), where priced apart from input.
    cache_write: float | None = None
    # Reasoning tokens, where priced apart from output.
    reasoning: float | None = None
    source: str = ""
    as_of: str = ""


@dataclass(frozen=True, slots=True)
class DeploymentSettings:
    """One place a model is served: a provider (by configured name or kind) and its model id."""

    provider: str
    provider_model: str
    weight: float = 1.0
    priority: int = 0
    # This deployment's own prices (a reseller's, a discount), over the model's list prices.
    pricing: PricingSettings | None = None


@dataclass(frozen=True, slots=True)
class ModelRoutingSettings:
    """A model's own routing choices; empty/None values mean "the [routing] default"."""

    strategy: str = ""
    fallbacks: tuple[str, ...] = ()
    fallback_on: tuple[str, ...] | None = None
    deadline_seconds: float | None = None
    ttft_timeout_seconds: float | None = None
    attempt_timeout_seconds: float | None = None


@dataclass(frozen=True, slots=True)
class RoutingSettings:
    strategy: str = "priority"
    fallback_on: tuple[str, ...] = DEFAULT_FALLBACK_ON
    stream_recovery: str = "error"
    # Bounds a call whose caller set no gRPC deadline (0: unbounded).
    default_deadline_seconds: float = 600.0
    # Per attempt; 0 means no bound beyond the call's deadline.
    ttft_timeout_seconds: float = 0.0
    attempt_timeout_seconds: float = 0.0
    # Weight of the newest time-to-first-token sample in the lowest_latency average.
    latency_ewma_alpha: float = 0.3
    shipped_models: bool = True


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    failure_threshold: int = 5
    reset_timeout_seconds: float = 30.0
    success_threshold: int = 1


@dataclass(frozen=True, slots=True)
class RetrySettings:
    """Attempts per deployment, exponential backoff with full jitter, capped."""

    max_attempts: int = 2
    base_delay_seconds: float = 0.25
    max_delay_seconds: float = 8.0
    # An upstream asking for a longer wait than this is not retried here: the route moves on.
    max_retry_after_seconds: float = 30.0


@dataclass(frozen=True, slots=True)
class RetryBudgetSettings:
    """Retries are at most ``ratio`` of the requests in the last ``window_seconds``, plus a floor."""

    ratio: float = 0.2
    min_retries_per_second: float = 1.0
    window_seconds: float = 10.0


@dataclass(frozen=True, slots=True)
class ProbeSettings:
    """Active health probes on free model-listing endpoints (never completions)."""

    enabled: bool = False
    interval_seconds: float = 30.0
    timeout_seconds: float = 5.0


@dataclass(frozen=True, slots=True)
class ResilienceSettings:
    breaker: BreakerSettings = field(default_factory=BreakerSettings)
    retry: RetrySettings = field(default_factory=RetrySettings)
    retry_budget: RetryBudgetSettings = field(default_factory=RetryBudgetSettings)
    probes: ProbeSettings = field(default_factory=ProbeSettings)


def routing_settings(s: Section) -> RoutingSettings:
    d = RoutingSettings()
    result = RoutingSettings(
        strategy=s.get_str("strategy", STRATEGIES, default=d.strategy),
        fallback_on=s.get_str_list("fallback_on", FAILURE_CLASSES, default=list(d.fallback_on)),
        stream_recovery=s.get_str("stream_recovery", STREAM_RECOVERY, default=d.stream_recovery),
        default_deadline_seconds=s.get_float(
            "default_deadline_seconds", 0.0, 86_400.0, default=d.default_deadline_seconds
        ),
        ttft_timeout_seconds=s.get_float("ttft_timeout_seconds", 0.0, 86_400.0, default=0.0),
        attempt_timeout_seconds=s.get_float("attempt_timeout_seconds", 0.0, 86_400.0, default=0.0),
        latency_ewma_alpha=s.get_float("latency_ewma_alpha", 0.01, 1.0, default=d.latency_ewma_alpha),
        shipped_models=s.get_bool("shipped_models", default=True),
    )
    s.reject_unknown()
    return result


def breaker_settings(s: Section, base: BreakerSettings) -> BreakerSettings:
    result = BreakerSettings(
        failure_threshold=s.get_int("failure_threshold", 1, 1_000_000, default=base.failure_threshold),
        reset_timeout_seconds=s.get_float(
            "reset_timeout_seconds", 0.001, 86_400.0, default=base.reset_timeout_seconds
        ),
        success_threshold=s.get_int("success_threshold", 1, 1_000, default=base.success_threshold),
    )
    s.reject_unknown()
    return result


def retry_settings(s: Section, base: RetrySettings) -> RetrySettings:
    result = RetrySettings(
        max_attempts=s.get_int("max_attempts", 1, 20, default=base.max_attempts),
        base_delay_seconds=s.get_float("base_delay_seconds", 0.0, 600.0, default=base.base_delay_seconds),
        max_delay_seconds=s.get_float("max_delay_seconds", 0.0, 3600.0, default=base.max_delay_seconds),
        max_retry_after_seconds=s.get_float(
            "max_retry_after_seconds", 0.0, 3600.0, default=base.max_retry_after_seconds
        ),
    )
    s.reject_unknown()
    return result


def resilience_settings(s: Section) -> ResilienceSettings:
    d = ResilienceSettings()
    budget = s.section("retry_budget")
    retry_budget = RetryBudgetSettings(
        ratio=budget.get_float("ratio", 0.0, 10.0, default=d.retry_budget.ratio),
        min_retries_per_second=budget.get_float(
            "min_retries_per_second", 0.0, 1e6, default=d.retry_budget.min_retries_per_second
        ),
        window_seconds=budget.get_float("window_seconds", 0.1, 3600.0, default=d.retry_budget.window_seconds),
    )
    budget.reject_unknown()
    p = s.section("probes")
    probes = ProbeSettings(
        enabled=p.get_bool("enabled", default=False),
        interval_seconds=p.get_float("interval_seconds", 0.05, 86_400.0, default=d.probes.interval_seconds),
        timeout_seconds=p.get_float("timeout_seconds", 0.01, 600.0, default=d.probes.timeout_seconds),
    )
    p.reject_unknown()
    result = ResilienceSettings(
        breaker=breaker_settings(s.section("breaker"), d.breaker),
        retry=retry_settings(s.section("retry"), d.retry),
        retry_budget=retry_budget,
        probes=probes,
    )
    s.reject_unknown()
    return result


def deployments(s: Section, model: str) -> tuple[DeploymentSettings, ...]:
    """``deployments = [{provider, provider_model, weight, priority}]``, or the one-deployment shorthand."""
    if not s.has("deployments"):
        provider = s.get_str("provider")
        return (DeploymentSettings(provider, s.get_str("provider_model", default=model)),)
    out = []
    for d in s.table_list("deployments"):
        out.append(
            DeploymentSettings(
                provider=d.get_str("provider"),
                provider_model=d.get_str("provider_model"),
                weight=d.get_float("weight", 0.0, 1e6, default=1.0),
                priority=d.get_int("priority", -1_000_000, 1_000_000, default=0),
                pricing=pricing(d),
            )
        )
        d.reject_unknown()
    if not out:
        s.problem("deployments", [], "expected at least one deployment")
    return tuple(out)


def pricing(s: Section) -> PricingSettings | None:
    if not s.has("pricing"):
        return None
    p = s.section("pricing")
    result = PricingSettings(
        input=p.get_float("input", 0.0, 1e6),
        output=p.get_float("output", 0.0, 1e6),
        cached_input=p.get_float("cached_input", 0.0, 1e6) if p.has("cached_input") else None,
        cache_write=p.get_float("cache_write", 0.0, 1e6) if p.has("cache_write") else None,
        reasoning=p.get_float("reasoning", 0.0, 1e6) if p.has("reasoning") else None,
        source=p.get_str("source", default=""),
        as_of=p.get_str("as_of", default=""),
    )
    p.reject_unknown()
    return result


def model_routing(s: Section) -> ModelRoutingSettings:
    def opt_seconds(key: str) -> float | None:
        return s.get_float(key, 0.0, 86_400.0) if s.has(key) else None

    return ModelRoutingSettings(
        strategy=s.get_str("strategy", ("", *STRATEGIES), default=""),
        fallbacks=s.get_str_list("fallbacks", default=[]),
        fallback_on=s.get_str_list("fallback_on", FAILURE_CLASSES) if s.has("fallback_on") else None,
        deadline_seconds=opt_seconds("deadline_seconds"),
        ttft_timeout_seconds=opt_seconds("ttft_timeout_seconds"),
        attempt_timeout_seconds=opt_seconds("attempt_timeout_seconds"),
    )
