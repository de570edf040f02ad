"""The composition root: settings in, a wired gRPC server out; start and graceful stop.

Nothing else in the code base builds long-lived objects or reads settings
beyond its own frozen section; this is where every choice of implementation
(provider kinds, later cache stores, ledgers, limiters) is made.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

from google.protobuf.descriptor import ServiceDescriptor
from grpc import aio
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection

from omnirelay.cache.layer import CacheLayer
from omnirelay.cache.stores import build_store
from omnirelay.config.routing import BreakerSettings, RetrySettings
from omnirelay.config.schema import Settings
from omnirelay.gateway import Gateway
from omnirelay.interceptors.edge import Edge
from omnirelay.providers.registry import ProviderRegistry
from omnirelay.resilience.breaker import BreakerState
from omnirelay.resilience.deadlines import DeadlineReaper
from omnirelay.resilience.health import DEPLOYMENT_SERVICE_PREFIX, RouteHealth
from omnirelay.resilience.probes import Prober
from omnirelay.resilience.retry import RetryBudget
from omnirelay.routing.catalog import ModelCatalog
from omnirelay.routing.router import Router
from omnirelay.routing.strategies import default_strategies
from omnirelay.routing.targets import TargetPool
from omnirelay.services.cache_admin import CacheService
from omnirelay.services.completion import CompletionService
from omnirelay.services.health import HealthService
from omnirelay.services.pending import BenchmarkService
from omnirelay.services.registry import register
from omnirelay.services.stream import StreamCompletionService
from omnirelay.services.usage import UsageService
from omnirelay.telemetry import logs
from omnirelay.telemetry.admin import AdminServer
from omnirelay.telemetry.logs import RequestLog
from omnirelay.telemetry.metrics import GatewayMetrics, StateCollector
from omnirelay.telemetry.redact import Pii
from omnirelay.telemetry.spans import Upstream, genai_system
from omnirelay.usage.layer import CallObserver, UsageLayer
from omnirelay.usage.pricing import PriceTable, price_rows
from omnirelay.usage.runtime import UsageRuntime
from omnirelay_client.v1 import (
    benchmark_pb2,
    cache_pb2,
    completion_pb2,
    stream_pb2,
    usage_pb2,
)

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

    from omnirelay.telemetry.tracing import Tracing

log = logging.getLogger("omnirelay.app")

SERVICE_NAMES = (
    completion_pb2.DESCRIPTOR.services_by_name["CompletionService"].full_name,
    stream_pb2.DESCRIPTOR.services_by_name["StreamCompletionService"].full_name,
    benchmark_pb2.DESCRIPTOR.services_by_name["BenchmarkService"].full_name,
    usage_pb2.DESCRIPTOR.services_by_name["UsageService"].full_name,
    cache_pb2.DESCRIPTOR.services_by_name["CacheService"].full_name,
)
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
# Services whose health follows the routes: NOT_SERVING when no deployment can take a call.
ROUTED_SERVICES = SERVICE_NAMES[:2]
# The request path's methods, by service: the only ones registered with gRPC's core
# (services/registry.py says why); every other method is served through the generic handlers.
REQUEST_PATH: dict[str, tuple[str, ...]] = {
    "CompletionService": ("Complete", "Embed"),
    "StreamCompletionService": ("StreamComplete",),
}


@dataclass
class App:
    """A wired server. ``start`` listens; ``shutdown`` drains and stops."""

    settings: Settings
    server: aio.Server
    health: HealthService
    gateway: Gateway
    providers: ProviderRegistry
    pool: TargetPool
    route_health: RouteHealth
    prober: Prober | None
    cache: CacheLayer | None
    usage: UsageRuntime
    usage_layer: UsageLayer
    prices: PriceTable
    edge: Edge
    host: str
    port: int
    tracing: Tracing | None = None
    metrics: GatewayMetrics | None = None
    admin: AdminServer | None = None
    # The servicer as registered (edge, usage and cache wrappers in place), for in-process callers
    # such as bench/inprocess.py.
    completion: CompletionService | None = None
    _stopped: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def start(self) -> None:
        # The ledger first: a call served before it is ready would still be recorded (queued),
        # but budgets must be loaded before the first admission.
        await self.usage.start()
        if self.admin is not None:
            await self.admin.start()
        await self.server.start()
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        for deployment, state in self.pool.states():
            serving = state is not BreakerState.OPEN
            status = (
                health_pb2.HealthCheckResponse.SERVING
                if serving
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            await self.health.set(DEPLOYMENT_SERVICE_PREFIX + deployment, status)
        if self.prober is not None:
            self.prober.start()
        log.info("serving on %s (profile %s)", self.address, self.settings.profile)

    async def shutdown(self, grace: float | None = None) -> None:
        """NOT_SERVING, then the drain delay, then refuse new calls and give in-flight ones ``grace``."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        server_settings = self.settings.server
        grace = server_settings.shutdown_grace_seconds if grace is None else grace
        await self.health.enter_graceful_shutdown()
        log.info("health NOT_SERVING; draining for %.1fs", server_settings.shutdown_drain_seconds)
        if server_settings.shutdown_drain_seconds > 0:
            await asyncio.sleep(server_settings.shutdown_drain_seconds)
        log.info("refusing new calls; %d in-flight calls have %.1fs to finish", self.edge.in_flight, grace)
        stopping = asyncio.ensure_future(self.server.stop(grace))
        self.health.close_watches()
        await stopping
        if self.prober is not None:
            await self.prober.stop()
        self.route_health.close()
        self.gateway.reaper.close()
        if self.cache is not None:
            await self.cache.aclose()
        # Every call has ended, so every record is queued: write them all, or spill them (the
        # recorder logs which).
        unsettled = await self.usage_layer.drain()
        if unsettled:
            log.warning("%d budget settlements did not finish before shutdown", unsettled)
        await self.usage.close()
        await self.providers.aclose()
        if self.tracing is not None:
            # Every call has ended, so every span has ended: export them (bounded by the export
            # timeout), off the event loop, which may still be serving the admin port.
            await asyncio.to_thread(self.tracing.shutdown)
        if self.admin is not None:
            await self.admin.stop()
        log.info("stopped")
        # Lines wait in the log sink for at most a moment; a stopped server has none left behind.
        logs.flush()


def _service(module: Any) -> ServiceDescriptor:
    """The one service a generated ``*_pb2`` module declares."""
    (descriptor,) = module.DESCRIPTOR.services_by_name.values()
    return cast(ServiceDescriptor, descriptor)


def _upstreams(settings: Settings) -> dict[str, Upstream]:
    """Each configured provider as spans name it: GenAI provider name, host and port."""
    found: dict[str, Upstream] = {}
    for name, p in settings.providers.items():
        base_url = getattr(p, "base_url", "")
        system = genai_system(p.kind, getattr(p, "flavor", ""))
        if base_url:
            parts = urlsplit(base_url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
            found[name] = Upstream(system, parts.hostname or "", port)
        else:
            found[name] = Upstream(system)
    return found


def build_app(
    settings: Settings,
    *,
    host: str | None = None,
    port: int | None = None,
    reuse_port: bool = False,
    span_exporter: SpanExporter | None = None,
) -> App:
    """Wire every object from settings. Call inside a running event loop (grpc.aio needs one).

    ``reuse_port`` is for ``serve --workers`` only: each worker binds the same port with SO_REUSEPORT.
    ``span_exporter`` replaces the configured OTLP exporter (tests keep spans in memory).
    """
    s = settings.server
    providers = ProviderRegistry.from_settings(settings.providers)
    resilience = settings.resilience

    def breaker_for(provider: str) -> BreakerSettings:
        own = settings.providers[provider].breaker if provider in settings.providers else None
        return own or resilience.breaker

    def retry_for(provider: str) -> RetrySettings:
        own = settings.providers[provider].retry if provider in settings.providers else None
        return own or resilience.retry

    route_health = RouteHealth(
        lambda deployment: breaker_for(deployment.partition("/")[0]).reset_timeout_seconds
    )
    upstreams = _upstreams(settings)
    metrics = (
        GatewayMetrics(
            _model_names(settings),
            lambda p: upstreams[p].system if p in upstreams else p,
            settings.metrics.max_projects,
        )
        if settings.metrics.enabled
        else None
    )

    def breaker_changed(deployment: str, old: BreakerState, new: BreakerState) -> None:
        route_health.on_change(deployment, old, new)
        if metrics is not None:
            metrics.breaker_changed(deployment, old, new)

    pool = TargetPool(breaker_for, retry_for, breaker_changed)
    catalog = ModelCatalog(
        settings.models,
        settings.presets,
        providers,
        settings.providers,
        settings.default_model,
        settings.routing,
        pool,
    )
    reaper = DeadlineReaper()
    router = Router(
        catalog, dict(default_strategies()), RetryBudget(resilience.retry_budget), settings.routing, reaper
    )
    gateway = Gateway(router, providers, reaper)

    edge = Edge()
    personal = Pii(settings.logging.redact)
    tracing: Tracing | None = None
    if settings.tracing.enabled:
        # Imported only when on: the SDK and the gRPC instrumentation are ~80 modules a server
        # with tracing off never needs in memory.
        from omnirelay.telemetry.tracing import Tracing

        tracing = Tracing(settings.tracing, upstreams, personal, span_exporter)
    server = aio.server(
        # Tracing off: no interceptor at all, so an untraced call does no tracer work.
        interceptors=[tracing.interceptor()] if tracing is not None else None,
        options=[
            ("grpc.max_receive_message_length", s.max_receive_message_bytes),
            ("grpc.max_send_message_length", s.max_send_message_bytes),
            ("grpc.keepalive_time_ms", s.keepalive_time_ms),
            ("grpc.keepalive_timeout_ms", s.keepalive_timeout_ms),
            ("grpc.keepalive_permit_without_calls", int(s.keepalive_permit_without_calls)),
            ("grpc.http2.min_ping_interval_without_data_ms", min(s.keepalive_time_ms, 10_000)),
            # One process per port unless `serve --workers` asks otherwise: two servers
            # silently sharing a port by accident is worse than a bind error.
            ("grpc.so_reuseport", 1 if reuse_port else 0),
        ],
    )
    completion = CompletionService(gateway)
    streaming = StreamCompletionService(gateway)
    store = build_store(settings.cache)
    cache = CacheLayer(settings.cache, store, gateway) if store is not None else None
    if cache is not None:
        # Inside the edge: the edge maps the cache layer's errors like any other.
        cache.guard(completion, streaming)
    prices = PriceTable(price_rows(settings.models, settings.providers))
    usage = UsageRuntime(settings.usage, settings.budgets)
    observers: list[CallObserver] = []
    if metrics is not None:
        observers.append(metrics)
    if settings.logging.requests:
        observers.append(RequestLog(settings.logging.content, personal))
    usage_layer = UsageLayer(
        usage.recorder if settings.usage.enabled else None,
        prices,
        catalog,
        usage.book,
        observers,
        tracing.spans if tracing is not None else None,
        capture=settings.logging.content or (tracing is not None and settings.tracing.content),
    )
    if settings.usage.enabled or observers or tracing is not None:
        # Outside the cache: hits and coalesced calls are recorded and admitted like any other call.
        usage_layer.guard(completion, streaming)
    usage.recorder.add_feeder(usage_layer.conclude_ended)
    for module, servicer in (
        (completion_pb2, completion),
        (stream_pb2, streaming),
        (cache_pb2, CacheService(cache, catalog)),
        (benchmark_pb2, BenchmarkService()),
        (usage_pb2, UsageService(usage)),
    ):
        service = _service(module)
        register(server, edge.guard(servicer, service), service, REQUEST_PATH.get(service.name, ()))
    health_servicer = HealthService()
    register(server, health_servicer, _service(health_pb2))

    async def publish(serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ROUTED_SERVICES:
            await health_servicer.set(name, status)

    async def publish_deployment(deployment: str, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        await health_servicer.set(DEPLOYMENT_SERVICE_PREFIX + deployment, status)

    route_health.bind(pool.any_available, publish, publish_deployment)
    prober = Prober(providers, pool, resilience.probes) if resilience.probes.enabled else None
    if s.reflection:
        reflection.enable_server_reflection((*SERVICE_NAMES, HEALTH_SERVICE, reflection.SERVICE_NAME), server)

    admin = None
    if metrics is not None:
        metrics.watch(
            StateCollector(
                edge.unary,
                edge.streams,
                pool.states,
                usage.recorder.counters if settings.usage.enabled else None,
                cache.counters if cache is not None else None,
                tracing.tally if tracing is not None else None,
            )
        )
        admin = AdminServer(
            metrics.registry, settings.metrics.host, settings.metrics.port, usage_layer.conclude_ended
        )
    bind_host = host if host is not None else s.host
    bind_port = port if port is not None else s.port
    bound = server.add_insecure_port(f"{bind_host}:{bind_port}")
    return App(
        settings,
        server,
        health_servicer,
        gateway,
        providers,
        pool,
        route_health,
        prober,
        cache,
        usage,
        usage_layer,
        prices,
        edge,
        bind_host,
        bound,
        tracing,
        metrics,
        admin,
        completion,
    )


def _model_names(settings: Settings) -> set[str]:
    """Names a metric label may carry: configured models and their aliases (the rest are "other")."""
    return set(settings.models) | {a for m in settings.models.values() for a in m.aliases}
