"""Budget alerts over a real HTTP webhook: signing, retries, giving up, and keeping the secret out of logs."""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import hashlib
import hmac
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import httpx
import pytest
from aiohttp import web

from omnirelay.usage.alerts import FanOut, LogAlerts, ThresholdEvent, WebhookAlerts, sign, verify_signature
from omnirelay.usage.budgets import BudgetBook
from omnirelay.usage.counters import MemoryCounters
from omnirelay.usage.ledger import BudgetScope, BudgetSpec

SECRET = "whsec-test-7f3a9c1e55d04b2b"
NOON = float(calendar.timegm((2026, 11, 22, 12, 0, 0, 0, 0, 0)))


@dataclass
class Delivery:
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A webhook endpoint answering each delivery with the next scripted status (then 200)."""

    url: str = ""
    statuses: list[int] = field(default_factory=list)
    delay_seconds: float = 0.0
    deliveries: list[Delivery] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    # Set at teardown: a slow handler stops waiting so the server can shut down at once.
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        self.deliveries.append(Delivery(dict(request.headers), await request.read()))
        self.arrived.set()
        if self.delay_seconds:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.release.wait(), self.delay_seconds)
        status = self.statuses.pop(0) if self.statuses else 200
        return web.Response(status=status, text="ok" if status < 300 else "no")


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    got = Receiver()
    app = web.Application()
    app.router.add_post("/hooks/budget", got.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    got.url = f"http://{host}:{port}/hooks/budget"
    yield got
    got.release.set()
    await runner.cleanup()


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> pytest.LogCaptureFixture:
    """Everything at DEBUG, httpx's and httpcore's own lines included, so a leak would show."""
    monkeypatch.setattr(logging.getLogger("omnirelay"), "propagate", True)
    caplog.set_level(logging.DEBUG)
    return caplog


MakeSink = Callable[..., WebhookAlerts]


@pytest.fixture
async def make_sink() -> AsyncIterator[MakeSink]:
    sinks: list[WebhookAlerts] = []

    def make(url: str, **options: object) -> WebhookAlerts:
        options.setdefault("backoff_seconds", 0.01)
        sink = WebhookAlerts(url, SECRET, **options)  # type: ignore[arg-type]
        sinks.append(sink)
        return sink

    yield make
    for sink in sinks:
        await sink.aclose(1.0)


def event(threshold: float = 0.8) -> ThresholdEvent:
    return ThresholdEvent(
        budget_id="team-a",
        threshold=threshold,
        spent_micros=8_500_000,
        limit_micros=10_000_000,
        period="day",
        period_start=float(calendar.timegm((2026, 11, 22, 0, 0, 0, 0, 0, 0))),
        period_end=float(calendar.timegm((2026, 11, 23, 0, 0, 0, 0, 0, 0))),
        scope=BudgetScope(project="p", tags=(("team", "a"),)),
    )


def own_signature(timestamp: str, body: bytes) -> str:
    """Computed here with hmac, independently of the code under test."""
    return "sha256=" + hmac.new(SECRET.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


async def until(check: Callable[[], bool], within_seconds: float = 5.0) -> None:
    deadline = time.monotonic() + within_seconds
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def settled(sink: WebhookAlerts) -> None:
    await until(lambda: sink.pending == 0)


def assert_no_secret(logs: pytest.LogCaptureFixture, sink: WebhookAlerts) -> None:
    assert SECRET not in logs.text
    assert all(SECRET not in str(r.__dict__) for r in logs.records)
    assert SECRET not in repr(sink)


async def test_a_crossing_is_posted_signed_with_the_documented_body(
    receiver: Receiver, make_sink: MakeSink, logs: pytest.LogCaptureFixture
) -> None:
    webhook = make_sink(receiver.url)
    spec = BudgetSpec("team-a", BudgetScope(project="p", tags=(("team", "a"),)), 10_000_000, "day")
    book = BudgetBook([spec], MemoryCounters(), FanOut(LogAlerts(), webhook), clock=lambda: NOON)
    await book.charge([spec], 5_500_000)
    await settled(webhook)

    assert len(receiver.deliveries) == 1
    got = receiver.deliveries[0]
    assert got.headers["Content-Type"] == "application/json"
    timestamp = got.headers["X-Omnirelay-Timestamp"]
    assert abs(int(timestamp) - time.time()) < 60
    assert hmac.compare_digest(got.headers["X-Omnirelay-Signature"], own_signature(timestamp, got.body))
    signature = got.headers["X-Omnirelay-Signature"]
    assert verify_signature(SECRET, timestamp, got.body, signature, tolerance_seconds=60)

    body = json.loads(got.body)
    assert got.headers["X-Omnirelay-Event-Id"] == body["event_id"]
    assert body["event"] == "budget.threshold"
    assert body["budget_id"] == "team-a"
    assert body["threshold"] == 0.5
    assert (body["spent_micros"], body["limit_micros"]) == (5_500_000, 10_000_000)
    assert (body["spent_usd"], body["limit_usd"]) == (5.5, 10.0)
    assert body["period"] == "day"
    assert (body["period_start"], body["period_end"]) == ("2026-11-22T00:00:00Z", "2026-11-23T00:00:00Z")
    assert body["scope"] == {"project": "p", "user": "", "model": "", "tags": {"team": "a"}}
    assert body["sent_at"].endswith("Z")
    # The log sink got the same crossing.
    assert any(r.getMessage().startswith("budget threshold crossed") for r in logs.records)
    assert_no_secret(logs, webhook)


async def test_server_errors_are_retried_with_one_event_id(
    receiver: Receiver, make_sink: MakeSink, logs: pytest.LogCaptureFixture
) -> None:
    receiver.statuses = [500, 500, 200]
    webhook = make_sink(receiver.url)
    webhook.budget_threshold(event())
    await settled(webhook)

    assert len(receiver.deliveries) == 3
    ids = {d.headers["X-Omnirelay-Event-Id"] for d in receiver.deliveries}
    assert len(ids) == 1
    for delivery in receiver.deliveries:
        timestamp = delivery.headers["X-Omnirelay-Timestamp"]
        assert delivery.headers["X-Omnirelay-Signature"] == own_signature(timestamp, delivery.body)
    assert_no_secret(logs, webhook)


async def test_429_is_retried(receiver: Receiver, make_sink: MakeSink) -> None:
    receiver.statuses = [429, 200]
    webhook = make_sink(receiver.url)
    webhook.budget_threshold(event())
    await settled(webhook)
    assert len(receiver.deliveries) == 2


async def test_a_client_error_is_not_retried(
    receiver: Receiver, make_sink: MakeSink, logs: pytest.LogCaptureFixture
) -> None:
    receiver.statuses = [400, 200]
    webhook = make_sink(receiver.url)
    webhook.budget_threshold(event())
    await settled(webhook)
    await asyncio.sleep(0.1)  # longer than the backoff: a retry would have arrived by now
    assert len(receiver.deliveries) == 1
    assert any("HTTP 400" in r.getMessage() and "not retried" in r.getMessage() for r in logs.records)
    assert_no_secret(logs, webhook)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_an_unreachable_receiver_is_given_up_after_the_attempts(
    make_sink: MakeSink, logs: pytest.LogCaptureFixture
) -> None:
    tries: list[httpx.Request] = []

    async def count(request: httpx.Request) -> None:
        tries.append(request)

    async with httpx.AsyncClient(event_hooks={"request": [count]}) as client:
        webhook = make_sink(f"http://127.0.0.1:{closed_port()}/hook?token=abc", attempts=3, client=client)
        started = time.monotonic()
        webhook.budget_threshold(event())  # returns at once and never raises
        assert time.monotonic() - started < 0.05
        assert webhook.pending == 1
        await settled(webhook)
    assert len(tries) == 3
    gave_up = [r for r in logs.records if "undelivered after 3 attempts" in r.getMessage()]
    assert len(gave_up) == 1
    assert gave_up[0].levelno == logging.WARNING
    # The URL's path and query (tokens often live there) are kept out of our log lines.
    assert all("token=abc" not in r.getMessage() for r in logs.records if r.name.startswith("omnirelay"))
    assert_no_secret(logs, webhook)


async def test_a_slow_receiver_never_delays_settling(receiver: Receiver, make_sink: MakeSink) -> None:
    receiver.delay_seconds = 1.0
    webhook = make_sink(receiver.url)
    spec = BudgetSpec("slow", BudgetScope(), 100, "day", (0.5,))
    book = BudgetBook([spec], MemoryCounters(), webhook)
    started = time.monotonic()
    await book.charge([spec], 60)
    assert time.monotonic() - started < 0.5
    await asyncio.wait_for(receiver.arrived.wait(), 5.0)
    assert webhook.pending == 1
    receiver.release.set()
    await settled(webhook)
    assert len(receiver.deliveries) == 1


async def test_aclose_waits_a_bounded_time_for_pending_deliveries(receiver: Receiver) -> None:
    receiver.delay_seconds = 30.0
    webhook = WebhookAlerts(receiver.url, SECRET, timeout_seconds=60.0)
    webhook.budget_threshold(event())
    await asyncio.wait_for(receiver.arrived.wait(), 5.0)
    started = time.monotonic()
    await webhook.aclose(0.2)
    assert time.monotonic() - started < 2.0
    assert webhook.pending == 0
    webhook.budget_threshold(event())  # after close: dropped, not raised
    assert webhook.pending == 0


async def test_aclose_lets_a_quick_delivery_finish(receiver: Receiver) -> None:
    receiver.delay_seconds = 0.2
    webhook = WebhookAlerts(receiver.url, SECRET)
    webhook.budget_threshold(event())
    await webhook.aclose(5.0)
    assert len(receiver.deliveries) == 1


def test_verify_signature_refuses_tampering_wrong_secrets_and_stale_timestamps() -> None:
    body = b'{"event":"budget.threshold"}'
    header = sign(SECRET, "1700000000", body)
    assert header == own_signature("1700000000", body)
    assert verify_signature(SECRET, "1700000000", body, header)
    assert verify_signature(SECRET, "1700000000", body.decode(), header)
    assert not verify_signature(SECRET, "1700000000", body + b" ", header)
    assert not verify_signature(SECRET, "1700000001", body, header)
    assert not verify_signature("other-secret", "1700000000", body, header)
    assert not verify_signature(SECRET, "1700000000", body, header.upper())
    assert verify_signature(SECRET, "1700000000", body, header, tolerance_seconds=300, now=1700000100)
    assert not verify_signature(SECRET, "1700000000", body, header, tolerance_seconds=300, now=1700000400)
    assert not verify_signature(SECRET, "soon", body, sign(SECRET, "soon", body), tolerance_seconds=300)


def test_event_ids_are_stable_per_crossing() -> None:
    assert event(0.8).event_id == event(0.8).event_id
    assert event(0.8).event_id != event(0.5).event_id


def test_an_empty_secret_or_no_attempts_is_refused() -> None:
    with pytest.raises(ValueError, match="secret"):
        WebhookAlerts("http://127.0.0.1:1/", "")
    with pytest.raises(ValueError, match="attempts"):
        WebhookAlerts("http://127.0.0.1:1/", SECRET, attempts=0)
