"""Budget alerts: a threshold crossed goes to the log, to a signed webhook, or both.

A sink's ``budget_threshold`` is called on the settling path of a request, so it
never blocks: ``LogAlerts`` writes one line, ``WebhookAlerts`` starts a
background delivery and returns. The budget book has already made sure each
(budget, period, threshold) is announced once across replicas.

Webhook deliveries are signed the way receivers commonly verify them::

    X-Omnirelay-Timestamp: <unix seconds>
    X-Omnirelay-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>
    X-Omnirelay-Event-Id:  <the same for every attempt of one event>

Signing the timestamp with the body lets a receiver refuse replays of an old
delivery (``verify_signature(..., tolerance_seconds=...)``); the event id lets it
ignore a retry of one it already processed.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

import httpx

from omnirelay.usage.ledger import BudgetScope
from omnirelay.usage.periods import iso_utc

log = logging.getLogger("omnirelay.budgets")

# Event ids are derived, not random: the same crossing gets the same id on any replica.
_EVENT_NAMESPACE = uuid.UUID("6f8f0b3e-6c55-4a53-9a43-0f1d3f3c9b21")
_MAX_RETRY_AFTER_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class ThresholdEvent:
    """A budget's spend reached ``threshold`` times its limit in the period starting at ``period_start``."""

    budget_id: str
    threshold: float
    spent_micros: int
    limit_micros: int
    period: str
    period_start: float
    period_end: float | None
    scope: BudgetScope

    @property
    def event_id(self) -> str:
        name = f"{self.budget_id}|{self.period}|{self.period_start:.0f}|{self.threshold!r}"
        return str(uuid.uuid5(_EVENT_NAMESPACE, name))


class AlertSink(Protocol):
    def budget_threshold(self, event: ThresholdEvent) -> None:
        """Announce a crossed threshold; must return at once (no I/O awaited on the caller's path)."""
        ...


@runtime_checkable
class _Closable(Protocol):
    # ``timeout`` bounds the wait for deliveries still pending, which asyncio.timeout around
    # the call could not do without cancelling them unannounced.
    async def aclose(self, timeout: float = ...) -> None: ...  # noqa: ASYNC109


def _scope_dict(scope: BudgetScope) -> dict[str, Any]:
    return {
        "project": scope.project,
        "user": scope.user,
        "model": scope.model,
        "tags": {key: value for key, value in scope.tags},
    }


def event_payload(event: ThresholdEvent, sent_at: float) -> dict[str, Any]:
    """The webhook's JSON body as a dict (its documented shape)."""
    return {
        "event": "budget.threshold",
        "event_id": event.event_id,
        "budget_id": event.budget_id,
        "threshold": event.threshold,
        "spent_micros": event.spent_micros,
        "limit_micros": event.limit_micros,
        "spent_usd": event.spent_micros / 1_000_000,
        "limit_usd": event.limit_micros / 1_000_000,
        "period": event.period,
        "period_start": iso_utc(event.period_start),
        "period_end": None if event.period_end is None else iso_utc(event.period_end),
        "scope": _scope_dict(event.scope),
        "sent_at": iso_utc(sent_at),
    }


class LogAlerts:
    """One WARNING per crossing on ``omnirelay.budgets``, the fields also as ``extra`` attributes."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._log = logger or log

    def budget_threshold(self, event: ThresholdEvent) -> None:
        # The JSON log formatter prints only the message, so the essentials are in it as well.
        self._log.warning(
            "budget threshold crossed: budget %s reached %g%% of its %s limit (%d of %d micro-USD)",
            event.budget_id,
            event.threshold * 100,
            event.period,
            event.spent_micros,
            event.limit_micros,
            extra={
                "budget_id": event.budget_id,
                "threshold": event.threshold,
                "spent_micros": event.spent_micros,
                "limit_micros": event.limit_micros,
                "period": event.period,
                "period_start": iso_utc(event.period_start),
                "period_end": None if event.period_end is None else iso_utc(event.period_end),
                "scope": _scope_dict(event.scope),
            },
        )

    async def aclose(self, timeout: float = 0.0) -> None:  # noqa: ASYNC109
        return None


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-Omnirelay-Signature`` value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify_signature(
    secret: str,
    timestamp: str,
    body: bytes | str,
    header: str,
    *,
    tolerance_seconds: float | None = None,
    now: float | None = None,
) -> bool:
    """Whether ``header`` is the signature of ``body`` at ``timestamp`` (compared in constant time).

    With ``tolerance_seconds``, a timestamp further than that from ``now`` is refused
    too, so a captured delivery cannot be replayed later.
    """
    raw = body.encode() if isinstance(body, str) else body
    if tolerance_seconds is not None:
        try:
            sent = float(timestamp)
        except ValueError:
            return False
        if abs((time.time() if now is None else now) - sent) > tolerance_seconds:
            return False
    return hmac.compare_digest(sign(secret, timestamp, raw).encode(), header.encode())


def _where(url: str) -> str:
    # Webhook URLs often carry a token in their path or query (chat webhooks do): logs get
    # the scheme and host only.
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}"


class WebhookAlerts:
    """POST each event as signed JSON, in the background, retrying what may succeed later.

    Retried with exponential backoff (``backoff_seconds`` * 2^n, or the receiver's
    ``Retry-After`` up to a minute): connection errors, timeouts, 429 and 5xx. Any
    other status outside 2xx is the receiver's final answer and is not retried.
    After ``attempts`` the event is logged as undelivered and dropped; nothing is
    ever raised into the request that crossed the threshold.
    """

    def __init__(
        self,
        url: str,
        secret: str,
        *,
        timeout_seconds: float = 5.0,
        attempts: int = 5,
        backoff_seconds: float = 0.5,
        client: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if attempts < 1:
            raise ValueError(f"webhook attempts must be at least 1, not {attempts}")
        if not secret:
            raise ValueError("webhook secret must not be empty: receivers could not verify deliveries")
        self._url = url
        self._where = _where(url)
        self._secret = secret
        self._timeout = timeout_seconds
        self._attempts = attempts
        self._backoff = backoff_seconds
        self._client = client
        self._own_client = client is None
        self._clock = clock
        self._pending: set[asyncio.Task[None]] = set()
        self._closing = False

    def __repr__(self) -> str:
        return f"WebhookAlerts({self._where!r}, attempts={self._attempts})"

    def budget_threshold(self, event: ThresholdEvent) -> None:
        if self._closing:
            log.warning("budget alert for %s not sent: webhook sink is closing", event.budget_id)
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            log.warning("budget alert for %s not sent: no event loop is running", event.budget_id)
            return
        task = loop.create_task(self._deliver(event), name=f"budget-webhook:{event.budget_id}")
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    @property
    def pending(self) -> int:
        """Deliveries still in progress (tests and shutdown read it)."""
        return len(self._pending)

    async def aclose(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Wait up to ``timeout`` seconds for pending deliveries, cancel the rest, close the client."""
        self._closing = True
        if self._pending:
            _, unfinished = await asyncio.wait(set(self._pending), timeout=timeout)
            for task in unfinished:
                task.cancel()
            if unfinished:
                await asyncio.gather(*unfinished, return_exceptions=True)
                log.warning("%d budget alert(s) to %s abandoned at shutdown", len(unfinished), self._where)
        if self._own_client and self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _deliver(self, event: ThresholdEvent) -> None:
        event_id = event.event_id
        for attempt in range(1, self._attempts + 1):
            delay = self._backoff * 2 ** (attempt - 1)
            try:
                response = await self._post(event, event_id)
            except httpx.TransportError as exc:  # connect errors, timeouts, broken connections
                outcome = type(exc).__name__
            except Exception as exc:  # a bug must not become an unretrieved task exception
                log.warning(
                    "budget alert %s to %s failed: %s; not retried", event_id, self._where, type(exc).__name__
                )
                return
            else:
                status = response.status_code
                if 200 <= status < 300:
                    return
                if status != 429 and status < 500:
                    log.warning(
                        "budget alert %s to %s refused with HTTP %d; not retried",
                        event_id,
                        self._where,
                        status,
                    )
                    return
                outcome = f"HTTP {status}"
                delay = max(delay, _retry_after(response))
            if attempt < self._attempts:
                log.info(
                    "budget alert %s to %s: %s (attempt %d of %d); retrying in %.2gs",
                    *(event_id, self._where, outcome, attempt, self._attempts, delay),
                )
                await asyncio.sleep(delay)
            else:
                log.warning(
                    "budget alert %s to %s undelivered after %d attempts: %s",
                    *(event_id, self._where, self._attempts, outcome),
                )

    async def _post(self, event: ThresholdEvent, event_id: str) -> httpx.Response:
        now = self._clock()
        # Body and timestamp are fresh on each attempt; the event id is what stays the same.
        body = json.dumps(event_payload(event, now), separators=(",", ":")).encode()
        timestamp = str(int(now))
        headers = {
            "Content-Type": "application/json",
            "X-Omnirelay-Timestamp": timestamp,
            "X-Omnirelay-Signature": sign(self._secret, timestamp, body),
            "X-Omnirelay-Event-Id": event_id,
        }
        if self._client is None:
            self._client = httpx.AsyncClient()
        return await self._client.post(self._url, content=body, headers=headers, timeout=self._timeout)


def _retry_after(response: httpx.Response) -> float:
    value = response.headers.get("retry-after", "")
    try:
        seconds = float(value)
    except ValueError:
        return 0.0  # absent, or an HTTP date: the backoff alone is good enough
    return min(max(seconds, 0.0), _MAX_RETRY_AFTER_SECONDS)


class FanOut:
    """Every event to every sink; one sink failing does not keep it from the others."""

    def __init__(self, *sinks: AlertSink) -> None:
        self._sinks = sinks

    def budget_threshold(self, event: ThresholdEvent) -> None:
        for sink in self._sinks:
            try:
                sink.budget_threshold(event)
            except Exception:
                log.exception("budget alert sink %s failed", type(sink).__name__)

    async def aclose(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        for sink in self._sinks:
            if isinstance(sink, _Closable):
                await sink.aclose(timeout)
