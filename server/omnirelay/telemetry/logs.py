"""Logs: one JSON object per line in production, readable text in development, secrets masked.

Every line carries the request id of the call it belongs to, and every
formatted line passes through the secret mask (configured keys, tokens and
credential shapes), library and exception text included. Each completion call
leaves one structured line on ``omnirelay.access`` (``RequestLog``), built from
its usage record; prompts and completions appear in it only with content
logging on, and then with personal data masked. Nothing logs per token.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

from omnirelay.config.telemetry import LoggingSettings
from omnirelay.interceptors.edge import current_request_id
from omnirelay.telemetry.redact import Secrets
from omnirelay.telemetry.spans import retries, status_name
from omnirelay.usage.records import UsageRecord

ACCESS_LOGGER = "omnirelay.access"
Redact = Callable[[str], str]


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = current_request_id()
        return True


# One encoder for every line: json.dumps with options builds a new one per call.
_ENCODE = json.JSONEncoder(ensure_ascii=False).encode


class JsonFormatter(logging.Formatter):
    def __init__(self, redact: Redact) -> None:
        super().__init__()
        self._redact = redact
        self._second = -1
        self._stamp = ""

    def _time(self, created: float, msecs: float) -> str:
        second = int(created)
        if second != self._second:  # lines come many per second: format the date once per second
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._stamp}.{int(msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self._time(record.created, record.msecs),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = getattr(record, "request_id", "")
        if rid:
            entry["request_id"] = rid
        fields = getattr(record, "fields", None)
        if fields:
            entry.update(fields)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return self._redact(_ENCODE(entry))


class TextFormatter(logging.Formatter):
    def __init__(self, redact: Redact) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s %(message)s")
        self._redact = redact

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "fields", None)
        if fields:
            line += " " + " ".join(f"{k}={_text(v)}" for k, v in fields.items() if v not in ("", None))
        return self._redact(line)


def _text(value: object) -> str:
    if not isinstance(value, str):
        return str(value)
    # Quoted (and escaped) whenever the bare value could be misread: a caller's model name
    # with a newline or "k=v" inside must not forge a second line or field.
    if value and value.isprintable() and not any(ch in value for ch in ' "='):
        return value
    return json.dumps(value, ensure_ascii=False)


def configure(settings: LoggingSettings, secrets: Iterable[str]) -> None:
    """Route every log line through one handler: the configured format, levels and secret mask."""
    redact = Secrets(secrets)
    # No line shows the caller's file, thread or process: skip finding them for every record
    # (the logging module's documented switches for this).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RequestIdFilter())
    if settings.format == "json":
        handler.setFormatter(JsonFormatter(redact))
    else:
        handler.setFormatter(TextFormatter(redact))
    root = logging.getLogger("omnirelay")
    root.handlers[:] = [handler]
    root.setLevel(settings.level)
    root.propagate = False
    # Libraries (asyncpg's reconnect warnings, grpc, httpx) log through the same handler, so every
    # line has the configured format and mask; only their warnings and worse, unless ``levels``
    # names them.
    libraries = logging.getLogger()
    libraries.handlers[:] = [handler]
    libraries.setLevel(logging.WARNING)
    for name, level in settings.levels:
        logging.getLogger(name).setLevel(level)
    # The request lines follow the main level unless ``levels`` says otherwise; off means off.
    access = logging.getLogger(ACCESS_LOGGER)
    if not settings.requests:
        access.setLevel(logging.CRITICAL + 1)


class RequestLog:
    """One structured line per completion call, from its usage record."""

    def __init__(self, content: bool, mask_personal: Redact) -> None:
        self._log = logging.getLogger(ACCESS_LOGGER)
        self._content = content
        self._mask = mask_personal

    def observe(self, record: UsageRecord, prompt: str, completion: str | None) -> None:
        log = self._log
        if not log.isEnabledFor(logging.INFO):
            return
        usage = record.usage
        # The fields every line has; the rest only when they say something (shorter lines, less
        # encoding per call).
        fields: dict[str, Any] = {
            "request_id": record.request_id,
            "method": "StreamComplete" if record.streamed else "Complete",
            "model": record.requested_model,
            "resolved_model": record.resolved_model,
            "provider": record.provider,
            "deployment": record.deployment,
            "status": status_name(record.status_code),
            "latency_ms": round(record.latency_seconds * 1000, 3),
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "cost_micros": usage.cost_micros,
            "cache": record.cache or "none",
            "retries": 0,
            "fallback": record.fallback_used,
        }
        if record.trace_id:
            fields["trace_id"] = record.trace_id
        if record.ttft_seconds is not None:
            fields["ttft_ms"] = round(record.ttft_seconds * 1000, 3)
        if usage.cached_input_tokens:
            fields["cached_input_tokens"] = usage.cached_input_tokens
        if usage.reasoning_tokens:
            fields["reasoning_tokens"] = usage.reasoning_tokens
        if usage.estimated:
            fields["tokens_estimated"] = True
        if len(record.attempts) > 1:
            fields["attempts"] = len(record.attempts)
            fields["retries"] = retries(record)
        if record.project:
            fields["project"] = record.project
        if self._content:
            fields["prompt"] = self._mask(prompt)
            fields["completion"] = self._mask(completion or "")
        log.info("request", extra={"fields": fields})
