"""Prometheus metrics: the GenAI client histograms and the gateway's own counters and gauges.

Per call the work is one ``observe`` of the finished usage record (the same
record the ledger gets), on a label set looked up once per distinct route and
status and then reused, into plain numbers (``telemetry.series``: no lock per
increment); nothing is counted per token. Values that other parts
already keep (in-flight calls, breaker states, recorder and cache counters) are
read only when Prometheus scrapes. Label values are bounded: models are the
configured names (anything else is "other"), projects are capped at
``max_projects`` distinct values, and no request or user id is ever a label.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator
from typing import NamedTuple, Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from omnirelay.cache.layer import CacheCounters
from omnirelay.resilience.breaker import BreakerState
from omnirelay.telemetry.series import Count, CounterFamily, Families, Histogram, HistogramFamily
from omnirelay.telemetry.spans import status_name
from omnirelay.usage.recorder import RecorderCounters
from omnirelay.usage.records import UsageRecord

OTHER = "other"
# Seconds, from a cache hit (a millisecond) to a long generation (ten minutes).
DURATION_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
    320.0,
    600.0,
)
# Tokens per call: the GenAI semantic conventions' advisory boundaries (powers of 4).
TOKEN_BUCKETS = tuple(float(4**i) for i in range(14))
# Attempt outcomes that are not upstream errors.
_NOT_ERRORS = frozenset(("success", "circuit_open", "cancelled"))
_GENAI = (
    "gen_ai_operation_name",
    "gen_ai_provider_name",
    "gen_ai_request_model",
    "gen_ai_response_model",
)


class InFlightCount(Protocol):
    count: int


class SpanCounts(Protocol):
    """What tracing knows of its sampled spans (``tracing.ExportTally``)."""

    @property
    def ended(self) -> int: ...
    @property
    def exported(self) -> int: ...
    @property
    def failed(self) -> int: ...


class _Series(NamedTuple):
    """One label set's children, bound once and reused for every call that has it."""

    requests: Count
    duration: Histogram
    ttft: Histogram
    input_tokens: Histogram
    output_tokens: Histogram


class GatewayMetrics:
    def __init__(
        self, models: Collection[str], system_of: Callable[[str], str], max_projects: int = 100
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._models = frozenset(models)
        self._system_of = system_of
        self._max_projects = max_projects
        self._projects: set[str] = set()
        self._series: dict[tuple[str, str, str, str, str, str, int], _Series] = {}
        self.duration = HistogramFamily(
            "gen_ai_client_operation_duration_seconds",
            "GenAI operation duration, from the call's arrival to its end (gen_ai.client.operation.duration)",
            (*_GENAI, "error_type"),
            DURATION_BUCKETS,
        )
        self.ttft = HistogramFamily(
            "gen_ai_client_operation_time_to_first_chunk_seconds",
            "Time to the first chunk of a streamed answer (gen_ai.client.operation.time_to_first_chunk)",
            _GENAI,
            DURATION_BUCKETS,
        )
        self.tokens = HistogramFamily(
            "gen_ai_client_token_usage",
            "Tokens used per call, by type (gen_ai.client.token.usage)",
            (*_GENAI, "gen_ai_token_type"),
            TOKEN_BUCKETS,
        )
        self.requests = CounterFamily(
            "omnirelay_requests",
            "Completion calls by model, provider, deployment and final gRPC status",
            ("method", "model", "provider", "deployment", "grpc_code"),
        )
        self.cost = CounterFamily(
            "omnirelay_cost_usd",
            "Upstream cost in US dollars, by model and project",
            ("model", "project"),
        )
        self.saved = CounterFamily(
            "omnirelay_cache_saved_usd",
            "Upstream cost the cache saved, in US dollars",
            ("model",),
        )
        self.cache = CounterFamily(
            "omnirelay_cache_requests",
            "Completion calls by cache outcome (hit, miss, coalesced, bypass, refresh)",
            ("model", "outcome"),
        )
        self.retries = CounterFamily(
            "omnirelay_retries",
            "Upstream attempts that retried a deployment",
            ("provider", "model"),
        )
        self.fallbacks = CounterFamily(
            "omnirelay_fallbacks",
            "Calls served by another deployment or model than the first choice",
            ("model",),
        )
        self.upstream_errors = CounterFamily(
            "omnirelay_upstream_errors",
            "Failed upstream attempts by provider and failure class",
            ("provider", "class"),
        )
        self.breaker_rejections = CounterFamily(
            "omnirelay_breaker_rejections",
            "Attempts not made because the deployment's circuit breaker was open",
            ("deployment",),
        )
        self.breaker_transitions = CounterFamily(
            "omnirelay_breaker_transitions",
            "Circuit breaker state changes",
            ("deployment", "from_state", "to_state"),
        )
        r.register(
            Families(
                self.duration,
                self.ttft,
                self.tokens,
                self.requests,
                self.cost,
                self.saved,
                self.cache,
                self.retries,
                self.fallbacks,
                self.upstream_errors,
                self.breaker_rejections,
                self.breaker_transitions,
            )
        )
        ProcessCollector(registry=r)

    # --- per call -------------------------------------------------------------------------

    def observe(self, record: UsageRecord, prompt: str = "", completion: str | None = None) -> None:
        """Count one finished call (a ``CallObserver``; content is never a label)."""
        model = self._model(record.resolved_model or record.requested_model)
        provider = record.provider or OTHER
        code = record.status_code
        # The requested name is part of the key: an alias is its own gen_ai_request_model.
        key = (
            record.operation,
            provider,
            model,
            record.deployment,
            record.resolved_model,
            record.requested_model,
            code,
        )
        series = self._series.get(key)
        if series is None:
            series = self._bind(record, model, provider)
            self._series[key] = series
        series.requests.value += 1
        series.duration.observe(record.latency_seconds)
        if record.ttft_seconds is not None and record.streamed:
            series.ttft.observe(record.ttft_seconds)
        usage = record.usage
        if usage.input_tokens or usage.output_tokens:
            series.input_tokens.observe(usage.input_tokens)
            series.output_tokens.observe(usage.output_tokens)
        if usage.cost_micros:
            self.cost.inc((model, self._project(record.project)), usage.cost_micros / 1e6)
        if record.cache:
            self.cache.inc((model, record.cache))
            if record.saved_cost_micros:
                self.saved.inc((model,), record.saved_cost_micros / 1e6)
        if len(record.attempts) > 1 or code:
            self._attempts(record, model)

    def _attempts(self, record: UsageRecord, model: str) -> None:
        if record.fallback_used:
            self.fallbacks.inc((model,))
        previous = ""
        for a in record.attempts:
            if a.outcome == "circuit_open":
                self.breaker_rejections.inc((a.deployment,))
                continue
            if a.deployment == previous:
                # A retry belongs to the provider it retried, not to whoever answered in the end.
                self.retries.inc((a.provider or OTHER, model))
            previous = a.deployment
            if a.outcome not in _NOT_ERRORS:
                self.upstream_errors.inc((a.provider, a.outcome))

    def _bind(self, record: UsageRecord, model: str, provider: str) -> _Series:
        operation = "chat"
        system = self._system_of(provider) if record.provider else OTHER
        response_model = self._model(record.resolved_model) if record.resolved_model else OTHER
        genai = (operation, system, self._model(record.requested_model), response_model)
        error = status_name(record.status_code) if record.status_code else ""
        method = "StreamComplete" if record.streamed else "Complete"
        series = _Series(
            self.requests.child(
                (method, model, provider, record.deployment or OTHER, status_name(record.status_code))
            ),
            self.duration.child((*genai, error)),
            self.ttft.child(genai),
            self.tokens.child((*genai, "input")),
            self.tokens.child((*genai, "output")),
        )
        return series

    def _model(self, name: str) -> str:
        return name if name in self._models else OTHER

    def _project(self, project: str) -> str:
        if not project:
            return ""
        if project in self._projects:
            return project
        if len(self._projects) < self._max_projects:
            self._projects.add(project)
            return project
        return OTHER

    # --- events from elsewhere ------------------------------------------------------------

    def breaker_changed(self, deployment: str, old: BreakerState, new: BreakerState) -> None:
        self.breaker_transitions.inc((deployment, old.name.lower(), new.name.lower()))

    def watch(self, collector: Collector) -> None:
        """Add a collector read at scrape time (state that other parts already keep)."""
        self.registry.register(collector)


class StateCollector(Collector):
    """Gauges and counters read from live objects when Prometheus scrapes."""

    def __init__(
        self,
        unary: InFlightCount,
        streams: InFlightCount,
        breakers: Callable[[], Iterable[tuple[str, BreakerState]]],
        recorder: RecorderCounters | None,
        cache: CacheCounters | None,
        spans: Callable[[], SpanCounts] | None = None,
    ) -> None:
        self._unary = unary
        self._streams = streams
        self._breakers = breakers
        self._recorder = recorder
        self._cache = cache
        self._spans = spans

    def collect(self) -> Iterator[Metric]:
        in_flight = GaugeMetricFamily(
            "omnirelay_in_flight", "Calls being served, unary and streams", labels=("kind",)
        )
        in_flight.add_metric(("unary",), self._unary.count)
        in_flight.add_metric(("stream",), self._streams.count)
        yield in_flight
        breaker = GaugeMetricFamily(
            "omnirelay_breaker_state",
            "Circuit breaker state per deployment (1 for the current state)",
            labels=("deployment", "state"),
        )
        for deployment, state in self._breakers():
            for each in BreakerState:
                breaker.add_metric((deployment, each.name.lower()), 1.0 if each is state else 0.0)
        yield breaker
        if self._recorder is not None:
            yield from _recorder_metrics(self._recorder)
        if self._cache is not None:
            yield from _cache_metrics(self._cache)
        if self._spans is not None:
            yield _span_metrics(self._spans())


def _span_metrics(t: SpanCounts) -> Metric:
    spans = CounterMetricFamily(
        "omnirelay_trace_spans",
        "Sampled spans by what became of them (ended - exported - failed: queued or dropped)",
        labels=("state",),
    )
    for state, value in (("ended", t.ended), ("exported", t.exported), ("failed", t.failed)):
        spans.add_metric((state,), float(value))
    return spans


def _recorder_metrics(c: RecorderCounters) -> Iterator[Metric]:
    records = CounterMetricFamily(
        "omnirelay_usage_records",
        "Usage records by what became of them (queued = submitted to the recorder)",
        labels=("state",),
    )
    for state, attribute in (
        ("queued", "submitted"),
        ("written", "written"),
        ("spilled", "spilled"),
        ("replayed", "replayed"),
        ("lost", "lost"),
    ):
        records.add_metric((state,), float(getattr(c, attribute)))  # a field of RecorderCounters
    yield records
    yield GaugeMetricFamily(
        "omnirelay_usage_queue_depth", "Usage records waiting to be written", value=c.queue_depth
    )
    yield GaugeMetricFamily(
        "omnirelay_usage_ledger_up", "1 while the usage ledger takes writes", value=float(c.ledger_up)
    )
    yield CounterMetricFamily(
        "omnirelay_usage_write_failures", "Failed ledger writes", value=float(c.write_failures)
    )


def _cache_metrics(c: CacheCounters) -> Iterator[Metric]:
    yield CounterMetricFamily(
        "omnirelay_cache_stored", "Answers written to the cache store", value=float(c.stored)
    )
    yield CounterMetricFamily(
        "omnirelay_cache_backend_errors",
        "Cache store operations that failed or timed out (the call went upstream)",
        value=float(c.backend_errors),
    )
