"""Logs: one JSON object per line in production, readable text in development, secrets masked.

Every line carries the request id of the call it belongs to, and every
formatted line passes through the secret mask (configured keys, tokens and
credential shapes), library and exception text included. Each completion call
leaves one structured line on ``omnirelay.access`` (``RequestLog``), built from
its usage record; prompts and completions appear in it only with content
logging on, and then with personal data masked. Nothing logs per token. Lines
reach the stream through a ``LineSink``, which batches the writes (sink.py).
"""

from __future__ import annotations

import functools
import json
import logging
import re
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import orjson

from omnirelay.config.telemetry import LoggingSettings
from omnirelay.interceptors.edge import current_request_id
from omnirelay.telemetry.redact import Secrets
from omnirelay.telemetry.sink import LineSink, SinkHandler
from omnirelay.telemetry.spans import retries, status_name
from omnirelay.usage.records import UsageRecord

ROOT_LOGGER = "omnirelay"
# How many routes' names ``RequestLog`` remembers as checked (the least recently used go first).
_NAMES_MAX = 1024
ACCESS_LOGGER = "omnirelay.access"
SPAN_BATCHER_LOGGER = "opentelemetry.sdk._shared_internal"
Redact = Callable[[str], str]


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = current_request_id()
        return True


def _encode(entry: dict[str, Any]) -> str:
    # Anything orjson does not know (an exception object passed as a field, say) as its str().
    return orjson.dumps(entry, default=str).decode()


class _Stamp:
    """A line's time, with the date part formatted once per second (lines come many per second)
    and the milliseconds taken from a table: formatting them was 5k instructions a line."""

    def __init__(self, pattern: str, convert: Callable[[float], time.struct_time], millis: str) -> None:
        self._pattern = pattern
        self._convert = convert
        self._millis = tuple(millis.format(ms) for ms in range(1000))
        self._second = -1
        self._stamp = ""

    def __call__(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime(self._pattern, self._convert(second))
        return self._stamp + self._millis[min(int((created - second) * 1000), 999)]


class Line(NamedTuple):
    """What a log line says, before a formatter gives it its form."""

    created: float  # Unix seconds
    level: str
    logger: str
    msg: str
    request_id: str = ""
    fields: dict[str, Any] | None = None
    extra: str = ""  # an exception's or a stack's text


class LineFormatter(logging.Formatter):
    """Formats a record, or a ``Line`` made without one.

    ``RequestLog`` builds its lines with ``line`` (a record and the logging module's handler
    chain cost more than the line itself); every other line comes through ``format``, so the
    two look the same.
    """

    def __init__(self, redact: Redact) -> None:
        super().__init__()
        self._redact = redact

    def line(self, p: Line) -> str:
        raise NotImplementedError

    def clean(self, text: str) -> bool:
        """Whether ``text`` holds nothing the secret mask looks for."""
        redact = self._redact
        if isinstance(redact, Secrets):
            return redact.absent(text)
        return redact(text) == text

    def format(self, record: logging.LogRecord) -> str:
        extra = self.formatException(record.exc_info) if record.exc_info else ""
        if record.stack_info:
            extra = (extra + "\n" if extra else "") + self.formatStack(record.stack_info)
        return self.line(
            Line(
                record.created,
                record.levelname,
                record.name,
                record.getMessage(),
                getattr(record, "request_id", ""),
                getattr(record, "fields", None),
                extra,
            )
        )


class JsonFormatter(LineFormatter):
    def __init__(self, redact: Redact) -> None:
        super().__init__(redact)
        self._time = _Stamp("%Y-%m-%dT%H:%M:%S", time.gmtime, ".{:03d}Z")

    def line(self, p: Line) -> str:
        return self._redact(self.unmasked(p))

    def unmasked(self, p: Line) -> str:
        """``line`` without the mask's pass over it, for a line whose strings are known ``clean``
        (``RequestLog``'s common line)."""
        entry: dict[str, Any] = {
            "ts": self._time(p.created),
            "level": p.level,
            "logger": p.logger,
            "msg": p.msg,
        }
        if p.request_id:
            entry["request_id"] = p.request_id
        if p.fields:
            entry.update(p.fields)
        if p.extra:
            entry["exc"] = p.extra
        return _encode(entry)


class TextFormatter(LineFormatter):
    """``2026-11-22 10:00:00,123 INFO    omnirelay.access request k=v ...`` (local time)."""

    def __init__(self, redact: Redact) -> None:
        super().__init__(redact)
        self._time = _Stamp("%Y-%m-%d %H:%M:%S", time.localtime, ",{:03d}")

    def line(self, p: Line) -> str:
        # logging.Formatter.format with "%(asctime)s ..." costs a strftime and a %-format per line.
        text = f"{self._time(p.created)} {_padded(p.level)} {p.logger} {p.msg}"
        if p.fields:
            text += " " + _pairs(p.fields)
        if p.extra:
            text += "\n" + p.extra
        return self._redact(text)

    def with_pairs(self, created: float, level: str, logger: str, msg: str, pairs: str) -> str:
        """``line`` for fields already in their ``k=v`` form and known ``clean`` (``RequestLog``'s
        common line): the mask is not run again over the whole line."""
        return f"{self._time(created)} {_padded(level)} {logger} {msg} {pairs}"


# Level names as a text line shows them, padded to one width (a format spec per line costs more).
_PADDED = {name: f"{name:<7}" for name in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")}


def _padded(level: str) -> str:
    return _PADDED.get(level) or f"{level:<7}"


# Printable ASCII but space, '"' and '=': such a value cannot be misread, so it goes bare.
_BARE = re.compile(r"[!#-<>-~]*")


def _bare(text: str) -> bool:
    return _BARE.fullmatch(text) is not None


def _pairs(fields: dict[str, Any]) -> str:
    """``k=v k=v``, empty and None values left out (one pass: a request line has 14 fields).

    A string outside ``_BARE`` is quoted and escaped: a caller's model name with a newline or
    "k=v" inside must not forge a second line or field.
    """
    parts = []
    for k, v in fields.items():
        if type(v) is str:
            if v:
                parts.append(f"{k}={v}" if _bare(v) else f"{k}={json.dumps(v, ensure_ascii=False)}")
        elif v is not None:
            parts.append(f"{k}={v}")
    return " ".join(parts)


def configure(settings: LoggingSettings, secrets: Iterable[str]) -> None:
    """Route every log line through one handler: the configured format, levels and secret mask."""
    redact = Secrets(secrets)
    # No line shows the caller's file, thread or process: skip finding them for every record
    # (the logging module's documented switches for this).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    earlier = _sink_handler()
    if earlier is not None:
        earlier.flush()
    handler = SinkHandler(LineSink(sys.stderr))
    handler.addFilter(_RequestIdFilter())
    if settings.format == "json":
        handler.setFormatter(JsonFormatter(redact))
    else:
        handler.setFormatter(TextFormatter(redact))
    root = logging.getLogger(ROOT_LOGGER)
    root.handlers[:] = [handler]
    root.setLevel(settings.level)
    root.propagate = False
    # Libraries (asyncpg's reconnect warnings, grpc, httpx) log through the same handler, so every
    # line has the configured format and mask; only their warnings and worse, unless ``levels``
    # names them.
    libraries = logging.getLogger()
    libraries.handlers[:] = [handler]
    libraries.setLevel(logging.WARNING)
    # The span batcher warns once per span it drops when its queue is full: a line per call
    # just when the collector lags. omnirelay_trace_spans and the shutdown summary count them.
    logging.getLogger(SPAN_BATCHER_LOGGER).setLevel(logging.ERROR)
    for name, level in settings.levels:
        logging.getLogger(name).setLevel(level)
    # The request lines follow the main level unless ``levels`` says otherwise; off means off.
    access = logging.getLogger(ACCESS_LOGGER)
    if not settings.requests:
        access.setLevel(logging.CRITICAL + 1)


def _sink_handler() -> SinkHandler | None:
    """The handler ``configure`` installed, if it is still installed."""
    for handler in logging.getLogger(ROOT_LOGGER).handlers:
        if isinstance(handler, SinkHandler):
            return handler
    return None


def flush() -> None:
    """Write every line still waiting in the configured sink (the server calls it as it stops)."""
    handler = _sink_handler()
    if handler is not None:
        handler.sink.flush()


class RequestLog:
    """One structured line per completion call, from its usage record.

    The usage layer tells it of calls in batches, off the calls' path (``BATCH_SECONDS``), so
    the line is formatted there; the sink then writes many lines at once.
    """

    def __init__(self, content: bool, mask_personal: Redact) -> None:
        self._log = logging.getLogger(ACCESS_LOGGER)
        self._content = content
        self._mask = mask_personal
        # With ``configure``'s handler in place the line goes straight to its sink, formatted as
        # the handler would, without the logging module's record and handler chain. Without it
        # (a test capturing records), through the logger like any line.
        handler = _sink_handler()
        formatter = handler.formatter if handler is not None else None
        self._sink = handler.sink if handler is not None and isinstance(formatter, LineFormatter) else None
        self._formatter = formatter if isinstance(formatter, LineFormatter) else None
        # Whether a route's names (models, provider, deployment, project) hold nothing to mask or
        # quote, remembered: they repeat on every call of the route, and checking them each time
        # was a quarter of the line's cost. Bounded, since requested names come from callers.
        self._names_checked = functools.lru_cache(maxsize=_NAMES_MAX)(_names_checked)

    def observe(self, record: UsageRecord, prompt: str, completion: str | None) -> None:
        if not self._log.isEnabledFor(logging.INFO):
            return
        sink, formatter = self._sink, self._formatter
        if sink is None or formatter is None:
            self._log.info("request", extra={"fields": self._fields(record, prompt, completion)})
            return
        # Stamped with when the call ended, not when its batch is told.
        ended = record.time + record.latency_seconds
        # With content on, the prompt and completion are in the line: the mask must pass over it.
        # Off, and with nothing the caller gave for the mask to find: the short forms, without its
        # pass over the whole line (the rest of the line is the gateway's own words and numbers).
        if not self._content and (checked := self._checked(record, formatter))[0]:
            if isinstance(formatter, TextFormatter):
                pairs = _text_pairs(record, checked[1])
                if pairs is not None:
                    sink.write(formatter.with_pairs(ended, "INFO", ACCESS_LOGGER, "request", pairs))
                    return
            elif isinstance(formatter, JsonFormatter):
                fields = self._fields(record, prompt, completion)
                sink.write(
                    formatter.unmasked(
                        Line(ended, "INFO", ACCESS_LOGGER, "request", record.request_id, fields)
                    )
                )
                return
        fields = self._fields(record, prompt, completion)
        sink.write(formatter.line(Line(ended, "INFO", ACCESS_LOGGER, "request", record.request_id, fields)))

    def _checked(self, record: UsageRecord, formatter: LineFormatter) -> tuple[bool, bool]:
        """Whether the strings of the line that a caller or the configuration chose hold nothing
        the secret mask looks for (``clean``), and whether they need no quoting (``bare``); the
        rest of a line is the gateway's own words and numbers, with neither. Each string is
        checked alone: between two of them a line has `` key=``, which no credential marker spans."""
        names = (
            record.requested_model,
            record.resolved_model,
            record.provider,
            record.deployment,
            record.project,
        )
        known = self._names_checked(formatter, names)
        rid, trace = record.request_id, record.trace_id
        clean = known[0] and formatter.clean(rid) and (not trace or formatter.clean(trace))
        return clean, known[1] and _bare(rid) and (not trace or _bare(trace))

    def _fields(self, record: UsageRecord, prompt: str, completion: str | None) -> dict[str, Any]:
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
        return fields


def _names_checked(formatter: LineFormatter, names: tuple[str, ...]) -> tuple[bool, bool]:
    """(clean, bare) for a route's names, each checked alone (``RequestLog._checked``)."""
    return all(formatter.clean(n) for n in names), all(_bare(n) for n in names)


def _text_pairs(record: UsageRecord, bare: bool) -> str | None:
    """``_pairs(RequestLog._fields(record))`` for a call with at most one attempt whose chosen
    strings need no quoting (``bare``, from ``RequestLog._checked``); None otherwise (the caller
    takes the general path).

    One f-string instead of a dict, a loop and a pattern match per field, and the secret mask
    shown only the chosen strings (checked by the caller): the request line is written for every
    call, and callgrind counted 46k instructions for it this way against 83k the general way
    (42k since ``RequestLog._checked`` remembers a route's names).
    ``test_request_line`` holds the two paths to the same output.
    """
    if not bare or len(record.attempts) > 1:
        return None
    rid, model, resolved = record.request_id, record.requested_model, record.resolved_model
    provider, deployment = record.provider, record.deployment
    trace_id, project = record.trace_id, record.project
    # Empty strings are left out of a line, so the fixed layout below needs them all set.
    if not (rid and model and resolved and provider and deployment):
        return None
    usage = record.usage
    text = (
        f"request_id={rid} method={'StreamComplete' if record.streamed else 'Complete'} model={model} "
        f"resolved_model={resolved} provider={provider} deployment={deployment} "
        f"status={status_name(record.status_code)} latency_ms={_ms_text(record.latency_seconds)} "
        f"input_tokens={usage.input_tokens} output_tokens={usage.output_tokens} "
        f"cost_micros={usage.cost_micros} cache={record.cache or 'none'} retries=0 "
        f"fallback={record.fallback_used}"
    )
    if trace_id:
        text += f" trace_id={trace_id}"
    if record.ttft_seconds is not None:
        text += f" ttft_ms={_ms_text(record.ttft_seconds)}"
    if usage.cached_input_tokens:
        text += f" cached_input_tokens={usage.cached_input_tokens}"
    if usage.reasoning_tokens:
        text += f" reasoning_tokens={usage.reasoning_tokens}"
    if usage.estimated:
        text += " tokens_estimated=True"
    if project:
        text += f" project={project}"
    return text


def _ms_text(seconds: float) -> str:
    """``str(round(seconds * 1000, 3))``, as the general path writes a duration, for about half
    the cost: one fixed-point conversion (the same correctly rounded digits ``round`` takes)
    instead of ``round``'s conversion there and back and ``repr``'s third. Below 1e12 ms the
    rounded value has at most 15 significant digits, so its shortest repr is those digits
    without trailing zeros."""
    ms = seconds * 1000
    if not 0 <= ms < 1e12:
        return str(round(ms, 3))
    text = f"{ms:.3f}".rstrip("0")
    return text + "0" if text.endswith(".") else text
