"""The validated settings: frozen dataclasses, and the one pass that builds them (see ``reader``)."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from omnirelay import grpc_io, helper_threads
from omnirelay.config.cache import CacheSettings, ModelCacheSettings, cache_settings, model_cache_settings
from omnirelay.config.reader import MISSING, ConfigError, ConfigProblem, Section
from omnirelay.config.routing import (
    BreakerSettings,
    DeploymentSettings,
    ModelRoutingSettings,
    PricingSettings,
    ResilienceSettings,
    RetrySettings,
    RoutingSettings,
    breaker_settings,
    deployments,
    model_routing,
    pricing,
    resilience_settings,
    retry_settings,
    routing_settings,
)
from omnirelay.config.telemetry import (
    LoggingSettings,
    MetricsSettings,
    TracingSettings,
    logging_settings,
    metrics_settings,
    tracing_settings,
)
from omnirelay.config.usage import BudgetSettings, UsageSettings, budget_settings, usage_settings
from omnirelay.domain import Sampling

__all__ = ["MISSING", "ConfigError", "ConfigProblem", "LoggingSettings"]

PROFILES = ("development", "staging", "production")
CAPABILITIES = ("streaming", "tools", "json_mode", "json_schema", "vision", "reasoning", "embeddings")
PROVIDER_KINDS = ("local", "openai", "azure", "anthropic", "gemini", "ollama")
# OpenAI-compatible servers whose small differences the openai adapter knows.
OPENAI_FLAVORS = (
    "",
    "vllm",
    "llamacpp",
    "ollama",
    "groq",
    "deepseek",
    "mistral",
    "together",
    "openrouter",
    "xai",
)
# Keys whose values are secrets (matched at the end of the name: `max_output_tokens` is not one).
# A webhook URL is a credential of its own (chat-style hooks carry their token in the path).
SECRET_KEYS = ("api_key", "token", "secret", "password", "redis_url", "dsn", "webhook_url")


@dataclass(frozen=True, slots=True)
class ServerSettings:
    host: str
    port: int
    reflection: bool
    max_receive_message_bytes: int
    max_send_message_bytes: int
    keepalive_time_ms: int
    keepalive_timeout_ms: int
    keepalive_permit_without_calls: bool
    shutdown_drain_seconds: float
    shutdown_grace_seconds: float
    # "uvloop" (libuv's event loop: less loop overhead on every call) or "asyncio" (the standard one).
    event_loop: str = "uvloop"
    # "poller" (gRPC's socket work on the thread polling grpc.aio's queue: one thread hop fewer per
    # call) or "event_engine" (grpcio's default); see omnirelay.grpc_io.
    grpc_io: str = "poller"
    # "batch" (every thread but the event loop's under SCHED_BATCH, so gRPC's wake-ups wait for the
    # loop instead of preempting it) or "normal"; see omnirelay.helper_threads.
    helper_threads: str = "batch"


@dataclass(frozen=True, slots=True)
class LocalProviderSettings:
    """The offline ``local`` provider. Zero latency knobs mean "as fast as possible"."""

    name: str
    ttft_ms: float = 0.0
    tokens_per_second: float = 0.0
    default_output_tokens: int = 24
    embedding_dimensions: int = 64
    api_key: str = field(default="", repr=False)
    kind: str = "local"
    retry: RetrySettings | None = None
    breaker: BreakerSettings | None = None


@dataclass(frozen=True, slots=True)
class HttpProviderSettings:
    """An upstream reached over HTTP: where, with which key, and how patiently."""

    name: str
    kind: str
    base_url: str
    api_key: str = field(default="", repr=False)
    flavor: str = ""
    # Azure's api-version query parameter; Anthropic's anthropic-version header.
    api_version: str = ""
    connect_timeout: float = 5.0
    read_timeout: float = 120.0
    total_timeout: float = 600.0
    max_connections: int = 100
    max_keepalive_connections: int = 100
    http2: bool = False
    strict_parameters: bool = False
    headers: tuple[tuple[str, str], ...] = ()
    # This provider's own retry and breaker settings (None: the [resilience] ones).
    retry: RetrySettings | None = None
    breaker: BreakerSettings | None = None


ProviderSettings = LocalProviderSettings | HttpProviderSettings


@dataclass(frozen=True, slots=True)
class ModelSettings:
    """A model of the registry: what it is, what it costs, where it runs, how it is routed."""

    name: str
    family: str
    aliases: tuple[str, ...]
    capabilities: tuple[str, ...]
    context_window: int
    max_output_tokens: int
    presets: Mapping[str, Sampling]
    deployments: tuple[DeploymentSettings, ...]
    pricing: PricingSettings | None = None
    deprecation_date: str = ""
    routing: ModelRoutingSettings = field(default_factory=ModelRoutingSettings)
    cache: ModelCacheSettings = field(default_factory=ModelCacheSettings)


@dataclass(frozen=True, slots=True)
class Settings:
    profile: str
    default_model: str
    server: ServerSettings
    logging: LoggingSettings
    providers: Mapping[str, ProviderSettings]
    models: Mapping[str, ModelSettings]
    presets: Mapping[str, Sampling]
    routing: RoutingSettings = field(default_factory=RoutingSettings)
    resilience: ResilienceSettings = field(default_factory=ResilienceSettings)
    cache: CacheSettings = field(default_factory=CacheSettings)
    usage: UsageSettings = field(default_factory=UsageSettings)
    budgets: BudgetSettings = field(default_factory=BudgetSettings)
    tracing: TracingSettings = field(default_factory=TracingSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)


def build_settings(raw: Mapping[str, Any], profile: str) -> Settings:
    """Validate ``raw`` (already merged for ``profile``) into Settings, or raise ConfigError."""
    problems: list[ConfigProblem] = []
    if profile not in PROFILES:
        problems.append(ConfigProblem("profile", profile, f"expected one of {', '.join(PROFILES)}"))
    top = Section(raw, "", problems)
    server = _server(top.section("server"))
    logging = logging_settings(top.section("logging"))
    tracing = tracing_settings(top.section("tracing"))
    metrics = metrics_settings(top.section("metrics"))
    routing = routing_settings(top.section("routing"))
    resilience = resilience_settings(top.section("resilience"))
    cache = cache_settings(top.section("cache"))
    usage = usage_settings(top.section("usage"))
    budgets = budget_settings(top.section("budgets"))
    providers = {name: _provider(name, s, resilience) for name, s in top.tables("providers").items()}
    presets = {name: _sampling(s) for name, s in top.tables("presets").items()}
    tables = _model_tables(top, routing.shipped_models)
    models = {name: _model(name, s, providers) for name, s in tables.items()}
    default_model = top.get_str("default_model")
    known = set(models) | {a for m in models.values() for a in m.aliases}
    if default_model and default_model not in known and "/" not in default_model:
        top.problem(
            "default_model", default_model, f"expected a configured model: {', '.join(sorted(known))}"
        )
    _check_aliases(models, problems)
    _check_fallbacks(models, known, problems)
    # Dynaconf's own switches arrive as settings keys; they are not ours to validate.
    top.reject_unknown(ignore=("env", "load_dotenv", "config", "secrets"))
    if problems:
        raise ConfigError(problems)
    return Settings(
        profile,
        default_model,
        server,
        logging,
        providers,
        models,
        presets,
        routing,
        resilience,
        cache,
        usage,
        budgets,
        tracing,
        metrics,
    )


EVENT_LOOPS = ("uvloop", "asyncio")


def _server(s: Section) -> ServerSettings:
    result = ServerSettings(
        host=s.get_str("host"),
        port=s.get_int("port", 0, 65535),
        reflection=s.get_bool("reflection"),
        max_receive_message_bytes=s.get_int("max_receive_message_bytes", 1024, 2**31 - 1),
        max_send_message_bytes=s.get_int("max_send_message_bytes", 1024, 2**31 - 1),
        keepalive_time_ms=s.get_int("keepalive_time_ms", 1000, 86_400_000),
        keepalive_timeout_ms=s.get_int("keepalive_timeout_ms", 100, 3_600_000),
        keepalive_permit_without_calls=s.get_bool("keepalive_permit_without_calls"),
        shutdown_drain_seconds=s.get_float("shutdown_drain_seconds", 0.0, 600.0),
        shutdown_grace_seconds=s.get_float("shutdown_grace_seconds", 0.0, 3600.0),
        event_loop=s.get_str("event_loop", EVENT_LOOPS, default="uvloop"),
        grpc_io=s.get_str("grpc_io", grpc_io.CHOICES, default="poller"),
        helper_threads=s.get_str("helper_threads", helper_threads.CHOICES, default="batch"),
    )
    s.reject_unknown()
    return result


def _overrides(s: Section, base: ResilienceSettings) -> tuple[RetrySettings | None, BreakerSettings | None]:
    retry = retry_settings(s.section("retry"), base.retry) if s.has("retry") else None
    breaker = breaker_settings(s.section("breaker"), base.breaker) if s.has("breaker") else None
    return retry, breaker


def _provider(name: str, s: Section, resilience: ResilienceSettings) -> ProviderSettings:
    kind = s.get_str("kind", PROVIDER_KINDS)
    retry, breaker = _overrides(s, resilience)
    if kind != "local":
        return _http_provider(name, kind, s, retry, breaker)
    result = LocalProviderSettings(
        name=name,
        ttft_ms=s.get_float("ttft_ms", 0.0, 600_000.0, default=0.0),
        tokens_per_second=s.get_float("tokens_per_second", 0.0, 1e9, default=0.0),
        default_output_tokens=s.get_int("default_output_tokens", 1, 1_000_000, default=24),
        embedding_dimensions=s.get_int("embedding_dimensions", 1, 65_536, default=64),
        api_key=s.get_str("api_key", default=""),
        retry=retry,
        breaker=breaker,
    )
    s.reject_unknown()
    return result


_DEFAULT_URLS = {
    "openai": "https://api.openai.com/v1",
    "anthropic": "https://api.anthropic.com",
    "gemini": "https://generativelanguage.googleapis.com",
    "ollama": "http://127.0.0.1:11434",
}


def _http_provider(
    name: str, kind: str, s: Section, retry: RetrySettings | None, breaker: BreakerSettings | None
) -> HttpProviderSettings:
    base_url = s.get_str("base_url", default=_DEFAULT_URLS.get(kind, ""))
    if not base_url.startswith(("http://", "https://")):
        s.problem("base_url", base_url, "expected an http:// or https:// URL")
    api_key = s.get_str("api_key", default="")
    key_env = s.get_str("api_key_env", default="")
    if key_env and not api_key:
        # Keys stay out of files: name the variable that holds it.
        api_key = os.environ.get(key_env, "")
    result = HttpProviderSettings(
        name=name,
        kind=kind,
        base_url=base_url.rstrip("/"),
        api_key=api_key,
        flavor=s.get_str("flavor", OPENAI_FLAVORS if kind == "openai" else ("",), default=""),
        api_version=s.get_str("api_version", default=""),
        connect_timeout=s.get_float("connect_timeout", 0.01, 600.0, default=5.0),
        read_timeout=s.get_float("read_timeout", 0.01, 3600.0, default=120.0),
        total_timeout=s.get_float("total_timeout", 0.01, 86_400.0, default=600.0),
        max_connections=s.get_int("max_connections", 1, 100_000, default=100),
        # As many idle connections as total ones: httpcore closes pooled connections beyond the
        # keep-alive count after each request, which under load means a new TLS handshake per call.
        max_keepalive_connections=s.get_int("max_keepalive_connections", 0, 100_000, default=100),
        http2=s.get_bool("http2", default=False),
        strict_parameters=s.get_bool("strict_parameters", default=False),
        headers=s.get_str_map("headers"),
        retry=retry,
        breaker=breaker,
    )
    if kind == "azure" and not result.api_version:
        s.problem("api_version", "", "required for kind azure, e.g. 2024-10-21")
    s.reject_unknown()
    return result


def _model(name: str, s: Section, providers: Mapping[str, ProviderSettings]) -> ModelSettings:
    placed = deployments(s, name)
    for i, d in enumerate(placed):
        # A provider kind with no provider of that kind configured is allowed: the shipped
        # registry names every kind, and such a deployment is simply not routable here.
        if d.provider not in providers and d.provider not in PROVIDER_KINDS:
            s.problem(
                f"deployments[{i}].provider" if s.has("deployments") else "provider",
                d.provider,
                f"expected a configured provider ({', '.join(sorted(providers))}) or a provider kind",
            )
    result = ModelSettings(
        name=name,
        family=s.get_str("family", default=name),
        aliases=s.get_str_list("aliases", default=[]),
        capabilities=s.get_str_list("capabilities", CAPABILITIES, default=[]),
        context_window=s.get_int("context_window", 1, 100_000_000),
        max_output_tokens=s.get_int("max_output_tokens", 1, 100_000_000),
        presets={preset: _sampling(p) for preset, p in s.tables("presets").items()},
        deployments=placed,
        pricing=pricing(s),
        deprecation_date=s.get_str("deprecation_date", default=""),
        routing=model_routing(s),
        cache=model_cache_settings(s),
    )
    s.reject_unknown()
    return result


def _shipped_models() -> dict[str, Any]:
    with resources.files("omnirelay.routing").joinpath("models.toml").open("rb") as f:
        models: dict[str, Any] = tomllib.load(f)["models"]
    return models


def _model_tables(top: Section, shipped: bool) -> dict[str, Section]:
    """The configured models over the shipped registry: a configured key wins, per key."""
    configured = top.raw.get("models", {})
    if not shipped or not isinstance(configured, Mapping):
        return top.tables("models")
    merged: dict[str, Any] = _shipped_models()
    for name, table in configured.items():
        base = merged.get(str(name))
        if isinstance(base, Mapping) and isinstance(table, Mapping):
            own = {str(k).lower(): v for k, v in table.items()}
            if "provider" in own and "deployments" not in own:
                # The one-deployment shorthand replaces the shipped deployments, not adds to them.
                base = {k: v for k, v in base.items() if k != "deployments"}
            merged[str(name)] = {**base, **own}
        else:
            merged[str(name)] = table
    top.seen.add("models")
    return {name: Section(value, f"models.{name}", top.problems) for name, value in merged.items()}


def _sampling(s: Section) -> Sampling:
    def opt_float(key: str, lo: float, hi: float) -> float | None:
        return s.get_float(key, lo, hi) if key in s.raw else None

    def opt_int(key: str, lo: int, hi: int) -> int | None:
        return s.get_int(key, lo, hi) if key in s.raw else None

    result = Sampling(
        temperature=opt_float("temperature", 0.0, 2.0),
        top_p=opt_float("top_p", 0.0, 1.0),
        top_k=opt_int("top_k", 1, 1_000_000),
        max_tokens=opt_int("max_tokens", 1, 100_000_000),
        stop=s.get_str_list("stop", default=[]),
        seed=opt_int("seed", -(2**63), 2**63 - 1),
        n=opt_int("n", 1, 16),
        presence_penalty=opt_float("presence_penalty", -2.0, 2.0),
        frequency_penalty=opt_float("frequency_penalty", -2.0, 2.0),
    )
    s.reject_unknown()
    return result


def _check_aliases(models: Mapping[str, ModelSettings], problems: list[ConfigProblem]) -> None:
    owner: dict[str, str] = {}
    for model in models.values():
        for alias in model.aliases:
            if alias in models or owner.setdefault(alias, model.name) != model.name:
                other = owner.get(alias, alias)
                problems.append(
                    ConfigProblem(
                        f"models.{model.name}.aliases",
                        alias,
                        f"alias already names {other!r}; aliases must be unique",
                    )
                )


def _check_fallbacks(
    models: Mapping[str, ModelSettings], known: set[str], problems: list[ConfigProblem]
) -> None:
    for model in models.values():
        for target in model.routing.fallbacks:
            if target not in known and "/" not in target:
                problems.append(
                    ConfigProblem(
                        f"models.{model.name}.fallbacks", target, "expected a configured model or alias"
                    )
                )
