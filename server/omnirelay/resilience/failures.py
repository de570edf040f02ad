"""What kind of failure an upstream error is: for fallback rules, breakers and attempt records."""

from __future__ import annotations

from omnirelay.domain import AttemptOutcome
from omnirelay.errors import (
    ContentFilteredError,
    ContextLengthExceededError,
    MalformedResponseError,
    OverloadedError,
    QuotaExhaustedError,
    RateLimitedError,
    StreamBrokenError,
    UpstreamAuthenticationError,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamNotFoundError,
    UpstreamPermissionError,
    UpstreamServerError,
    UpstreamTimeoutError,
)

# Exact classes (not isinstance chains): one dict lookup per failed attempt.
_CLASS: dict[type[UpstreamError], str] = {
    RateLimitedError: "rate_limited",
    OverloadedError: "overloaded",
    UpstreamServerError: "server_error",
    MalformedResponseError: "server_error",
    UpstreamTimeoutError: "timeout",
    UpstreamConnectionError: "connection",
    StreamBrokenError: "connection",
    QuotaExhaustedError: "quota",
    ContextLengthExceededError: "context_length",
    ContentFilteredError: "content_filter",
    UpstreamNotFoundError: "not_found",
}
_OUTCOME: dict[str, AttemptOutcome] = {
    "rate_limited": AttemptOutcome.RATE_LIMITED,
    "quota": AttemptOutcome.RATE_LIMITED,
    "overloaded": AttemptOutcome.UPSTREAM_ERROR,
    "server_error": AttemptOutcome.UPSTREAM_ERROR,
    "timeout": AttemptOutcome.TIMEOUT,
    "connection": AttemptOutcome.CONNECTION_ERROR,
}
# Failures of the upstream (or of the gateway's credentials for it), which a breaker counts.
# A caller's invalid request, oversized prompt or filtered content says nothing about the
# deployment's health.
_BREAKER_CLASSES = frozenset({"rate_limited", "overloaded", "server_error", "timeout", "connection", "quota"})
_CREDENTIAL_ERRORS = (UpstreamAuthenticationError, UpstreamPermissionError)


def failure_class(exc: UpstreamError) -> str:
    """The configured name of this failure (``rate_limited``…), or "" for never-fall-back errors."""
    return _CLASS.get(type(exc), "server_error" if exc.retryable else "")


def outcome(exc: UpstreamError) -> AttemptOutcome:
    if isinstance(exc, StreamBrokenError):
        return AttemptOutcome.STREAM_BROKEN
    return _OUTCOME.get(failure_class(exc), AttemptOutcome.REJECTED)


def counts_against_breaker(exc: UpstreamError) -> bool:
    return failure_class(exc) in _BREAKER_CLASSES or isinstance(exc, _CREDENTIAL_ERRORS)
