"""Settings for what operators see: logs, traces (OpenTelemetry, OTLP) and metrics (Prometheus)."""

from __future__ import annotations

from dataclasses import dataclass

from omnirelay.config.reader import Section

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("json", "text")
# Personal data that content logging masks (each a pattern in telemetry.redact).
REDACTIONS = ("email", "phone", "card")
TRACE_EXPORTERS = ("otlp_grpc", "otlp_http", "none")


@dataclass(frozen=True, slots=True)
class LoggingSettings:
    level: str = "INFO"
    format: str = "json"
    # One structured line per completion call (logger ``omnirelay.access``).
    requests: bool = True
    # Per-logger levels, e.g. {"omnirelay.router" = "DEBUG"}; the rest follow ``level``.
    levels: tuple[tuple[str, str], ...] = ()
    # Prompts and completions in request lines: off unless asked for, and masked by ``redact``.
    content: bool = False
    redact: tuple[str, ...] = REDACTIONS


@dataclass(frozen=True, slots=True)
class TracingSettings:
    # Off: no interceptor, no spans, no exporter: the hot path does no tracer work at all.
    enabled: bool = False
    exporter: str = "otlp_grpc"
    # OTLP/gRPC: host:port or http(s)://host:port; OTLP/HTTP: the base URL (/v1/traces is added).
    endpoint: str = "http://127.0.0.1:4317"
    # Sent with every export (an ingest token, say): masked wherever settings are shown.
    headers: tuple[tuple[str, str], ...] = ()
    # Share of new traces kept; a caller's sampled flag in traceparent is followed either way.
    sample_ratio: float = 1.0
    service_name: str = "omnirelay"
    # Batching: spans wait in a bounded queue and leave in batches, off the request path.
    max_queue_size: int = 2048
    max_export_batch_size: int = 512
    schedule_delay_seconds: float = 1.0
    export_timeout_seconds: float = 10.0
    # Prompts and completions as span attributes (gen_ai.input/output.messages), masked by the
    # logging section's ``redact`` patterns.
    content: bool = False


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    enabled: bool = True
    # The admin HTTP listener serving /metrics (Prometheus text format); port 0 picks a free one.
    # With ``serve --workers N`` worker i listens on port + i.
    host: str = "127.0.0.1"
    port: int = 9464
    # Distinct projects kept as label values; more are counted under "other".
    max_projects: int = 100


def logging_settings(s: Section) -> LoggingSettings:
    d = LoggingSettings()
    levels = s.get_str_map("levels")
    for name, level in levels:
        if level.upper() not in LOG_LEVELS:
            s.problem(f"levels.{name}", level, f"expected one of {', '.join(LOG_LEVELS)}")
    result = LoggingSettings(
        level=s.get_str("level", LOG_LEVELS, default=d.level),
        format=s.get_str("format", LOG_FORMATS, default=d.format),
        requests=s.get_bool("requests", default=d.requests),
        levels=tuple((name, level.upper()) for name, level in levels),
        content=s.get_bool("content", default=d.content),
        redact=s.get_str_list("redact", REDACTIONS, default=list(d.redact)),
    )
    s.reject_unknown()
    return result


def tracing_settings(s: Section) -> TracingSettings:
    d = TracingSettings()
    result = TracingSettings(
        enabled=s.get_bool("enabled", default=d.enabled),
        exporter=s.get_str("exporter", TRACE_EXPORTERS, default=d.exporter),
        endpoint=s.get_str("endpoint", default=d.endpoint),
        headers=s.get_str_map("headers"),
        sample_ratio=s.get_float("sample_ratio", 0.0, 1.0, default=d.sample_ratio),
        service_name=s.get_str("service_name", default=d.service_name),
        max_queue_size=s.get_int("max_queue_size", 1, 10_000_000, default=d.max_queue_size),
        max_export_batch_size=s.get_int("max_export_batch_size", 1, 100_000, default=d.max_export_batch_size),
        schedule_delay_seconds=s.get_float(
            "schedule_delay_seconds", 0.001, 3600.0, default=d.schedule_delay_seconds
        ),
        export_timeout_seconds=s.get_float(
            "export_timeout_seconds", 0.001, 3600.0, default=d.export_timeout_seconds
        ),
        content=s.get_bool("content", default=d.content),
    )
    if result.max_export_batch_size > result.max_queue_size:
        s.problem("max_export_batch_size", result.max_export_batch_size, "must not exceed max_queue_size")
    if result.enabled and result.exporter != "none" and not result.endpoint:
        s.problem("endpoint", result.endpoint, "an OTLP endpoint is required when tracing is enabled")
    s.reject_unknown()
    return result


def metrics_settings(s: Section) -> MetricsSettings:
    d = MetricsSettings()
    result = MetricsSettings(
        enabled=s.get_bool("enabled", default=d.enabled),
        host=s.get_str("host", default=d.host),
        port=s.get_int("port", 0, 65535, default=d.port),
        max_projects=s.get_int("max_projects", 1, 100_000, default=d.max_projects),
    )
    s.reject_unknown()
    return result
