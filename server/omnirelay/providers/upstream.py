"""What every HTTP adapter shares: reading retry delays and request ids, classifying failures.

Adapters parse their provider's error body into an ``ErrorBody`` and call
``classify``; provider-specific codes (``context_length_exceeded``,
``insufficient_quota``, Anthropic's ``overloaded_error``) refine the class the
HTTP status alone would give.
"""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from omnirelay.errors import (
    ContentFilteredError,
    ContextLengthExceededError,
    OverloadedError,
    QuotaExhaustedError,
    RateLimitedError,
    UpstreamAuthenticationError,
    UpstreamError,
    UpstreamInvalidRequestError,
    UpstreamNotFoundError,
    UpstreamPermissionError,
    UpstreamServerError,
    UpstreamTimeoutError,
)

# Headers providers put their request id in, most specific first.
REQUEST_ID_HEADERS = ("x-request-id", "request-id", "apim-request-id", "x-ms-request-id", "x-goog-request-id")


@dataclass(frozen=True, slots=True)
class ErrorBody:
    """The parts of a provider's error body that matter, whatever its shape."""

    message: str
    code: str = ""
    type: str = ""
    retry_after_seconds: float | None = None


def present(pairs: Iterable[tuple[str, object]]) -> dict[str, Any]:
    """The pairs whose value is set: a request carries only what the caller asked for."""
    return {key: value for key, value in pairs if value is not None}


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait, from ``retry-after-ms`` (OpenAI, Azure) or ``retry-after`` (seconds or a date)."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if "," in value else None
        return max(0.0, parsed.timestamp() - time.time()) if parsed is not None else None


def request_id(headers: Mapping[str, str]) -> str:
    for name in REQUEST_ID_HEADERS:
        value = headers.get(name)
        if value:
            return value
    return ""


_BY_CODE: dict[str, type[UpstreamError]] = {
    "context_length_exceeded": ContextLengthExceededError,
    "string_above_max_length": ContextLengthExceededError,
    "insufficient_quota": QuotaExhaustedError,
    "content_filter": ContentFilteredError,
    "content_policy_violation": ContentFilteredError,
    "rate_limit_exceeded": RateLimitedError,
    "rate_limit_error": RateLimitedError,
    "overloaded_error": OverloadedError,
    "authentication_error": UpstreamAuthenticationError,
    "invalid_api_key": UpstreamAuthenticationError,
    "permission_error": UpstreamPermissionError,
    "not_found_error": UpstreamNotFoundError,
    "model_not_found": UpstreamNotFoundError,
    "api_error": UpstreamServerError,
    "server_error": UpstreamServerError,
    "timeout_error": UpstreamTimeoutError,
}


def _by_status(status: int) -> type[UpstreamError]:
    if status in (401,):
        return UpstreamAuthenticationError
    if status == 403:
        return UpstreamPermissionError
    if status == 404:
        return UpstreamNotFoundError
    if status in (408, 504):
        return UpstreamTimeoutError
    if status == 413:
        return ContextLengthExceededError
    if status == 429:
        return RateLimitedError
    if status in (503, 529):
        return OverloadedError
    if status == 501:
        # "Not implemented" for this model or endpoint: the same request will not work elsewhere.
        return UpstreamInvalidRequestError
    if status >= 500:
        return UpstreamServerError
    return UpstreamInvalidRequestError


# Keys providers echo back in error text, even partly masked ("sk-VKMIs****wjh3"); Google keys start AIza.
_KEY_LIKE = re.compile(r"\bsk-[\w*\-.]{4,}|\bAIza[\w\-]{20,}")


def scrub(message: str, secret: str = "") -> str:
    """``message`` with the configured key and anything shaped like a provider key masked."""
    if secret:
        message = message.replace(secret, "***")
    return _KEY_LIKE.sub("***", message)


def classify(
    provider: str,
    status: int,
    error: ErrorBody,
    headers: Mapping[str, str] | None = None,
    *,
    secret: str = "",
) -> UpstreamError:
    """The error-tree class for an upstream failure, with retry delay and upstream request id.

    Every adapter's error passes here, so this is where echoed keys are masked (``secret`` is
    the provider's configured key; key-shaped text is masked whether or not it is given).
    """
    headers = headers or {}
    cls = _BY_CODE.get(error.code) or _BY_CODE.get(error.type) or _by_status(status)
    # A 429 that is really "out of money" must not be retried as if it were a rate limit.
    if cls is RateLimitedError and ("quota" in error.code or "quota" in error.type):
        cls = QuotaExhaustedError
    # A 503/529 labelled only "server error" is the upstream saying it is overloaded.
    if cls is UpstreamServerError and status in (503, 529):
        cls = OverloadedError
    delay = retry_after(headers)
    if delay is None:
        delay = error.retry_after_seconds
    shown = scrub(error.message, secret) or f"HTTP {status}"
    return cls(
        f"{provider}: {shown}",
        provider=provider,
        http_status=status,
        upstream_request_id=request_id(headers),
        retry_after_seconds=delay,
        upstream_code=error.code or error.type,
    )
