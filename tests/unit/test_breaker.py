"""The per-deployment circuit breaker (over a controlled clock), and how upstream failures are classified."""

from __future__ import annotations

from datetime import datetime, timedelta, tzinfo

import pybreaker
import pytest

from omnirelay import errors
from omnirelay.config.routing import DEFAULT_FALLBACK_ON, FAILURE_CLASSES, BreakerSettings, RoutingSettings
from omnirelay.domain import AttemptOutcome
from omnirelay.errors import UpstreamError
from omnirelay.resilience import breaker as breaker_module
from omnirelay.resilience.breaker import AsyncBreaker, BreakerState, CircuitOpenError
from omnirelay.resilience.failures import counts_against_breaker, failure_class, outcome

NAME = "openai/gpt-4o-2024-08-06"


class Clock:
    """Stands in for ``datetime`` in the breaker adapter and in pybreaker: real time plus an offset."""

    def __init__(self) -> None:
        self.offset = 0.0

    def now(self, tz: tzinfo | None = None) -> datetime:
        return datetime.now(tz) + timedelta(seconds=self.offset)

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(breaker_module, "datetime", fake)
    monkeypatch.setattr(pybreaker, "datetime", fake)
    return fake


Change = tuple[str, BreakerState, BreakerState]


def make(
    changes: list[Change] | None = None, threshold: int = 3, reset: float = 30.0, successes: int = 1
) -> AsyncBreaker:
    settings = BreakerSettings(
        failure_threshold=threshold, reset_timeout_seconds=reset, success_threshold=successes
    )
    listener = None if changes is None else (lambda n, old, new: changes.append((n, old, new)))
    return AsyncBreaker(NAME, settings, listener)


def state_of(b: AsyncBreaker) -> BreakerState:
    """The state now (a function call, so a type checker does not carry an earlier answer forward)."""
    return b.state


def boom() -> UpstreamError:
    return errors.UpstreamServerError("upstream 500", provider="openai", http_status=500)


def fail(b: AsyncBreaker, times: int) -> None:
    for _ in range(times):
        b.admit()
        b.failed(boom())


def test_a_new_breaker_is_closed_and_admits() -> None:
    b = make()
    assert state_of(b) is BreakerState.CLOSED
    assert b.available()
    b.admit()
    b.succeeded()
    assert state_of(b) is BreakerState.CLOSED
    assert b.name == NAME


def test_opens_after_failure_threshold_failures_and_refuses(clock: Clock) -> None:
    b = make(threshold=3)
    fail(b, 2)
    assert state_of(b) is BreakerState.CLOSED
    assert b.available()
    fail(b, 1)
    assert state_of(b) is BreakerState.OPEN
    assert not b.available()
    with pytest.raises(CircuitOpenError, match=NAME):
        b.admit()
    # Refusing does not half-open it or reset anything.
    assert state_of(b) is BreakerState.OPEN


def test_failed_never_raises_even_when_it_trips_the_breaker() -> None:
    b = make(threshold=1)
    b.admit()
    b.failed(boom())  # pybreaker re-raises on trip; the adapter only records
    assert state_of(b) is BreakerState.OPEN
    b.failed(boom())  # a late failure of a call admitted before it opened
    assert state_of(b) is BreakerState.OPEN


def test_stays_open_until_the_reset_timeout_then_admit_half_opens(clock: Clock) -> None:
    b = make(threshold=2, reset=30.0)
    fail(b, 2)
    clock.advance(29.0)
    assert not b.available()
    with pytest.raises(CircuitOpenError):
        b.admit()
    assert state_of(b) is BreakerState.OPEN
    clock.advance(1.5)
    # Past the timeout it can take a call, but stays open until one is actually admitted.
    assert b.available()
    assert state_of(b) is BreakerState.OPEN
    b.admit()
    assert state_of(b) is BreakerState.HALF_OPEN
    assert b.available()


def test_a_success_in_half_open_closes_it(clock: Clock) -> None:
    b = make(threshold=1, reset=10.0)
    fail(b, 1)
    clock.advance(11.0)
    b.admit()
    b.succeeded()
    assert state_of(b) is BreakerState.CLOSED
    assert b.available()
    # Closed again with a fresh count: it takes the full threshold to open it again.
    b2 = make(threshold=2, reset=10.0)
    fail(b2, 2)
    clock.advance(11.0)
    b2.admit()
    b2.succeeded()
    fail(b2, 1)
    assert state_of(b2) is BreakerState.CLOSED
    fail(b2, 1)
    assert state_of(b2) is BreakerState.OPEN


def test_a_failure_in_half_open_reopens_it_for_a_whole_new_timeout(clock: Clock) -> None:
    b = make(threshold=3, reset=10.0)
    fail(b, 3)
    clock.advance(11.0)
    b.admit()
    assert state_of(b) is BreakerState.HALF_OPEN
    b.failed(boom())  # a single failure re-opens it, whatever the threshold
    assert state_of(b) is BreakerState.OPEN
    assert not b.available()
    with pytest.raises(CircuitOpenError):
        b.admit()
    clock.advance(9.0)
    assert not b.available()
    clock.advance(2.0)
    assert b.available()
    b.admit()
    assert state_of(b) is BreakerState.HALF_OPEN


def test_success_threshold_needs_that_many_successes_in_half_open(clock: Clock) -> None:
    b = make(threshold=1, reset=5.0, successes=2)
    fail(b, 1)
    clock.advance(6.0)
    b.admit()
    b.succeeded()
    assert state_of(b) is BreakerState.HALF_OPEN
    b.admit()
    b.succeeded()
    assert state_of(b) is BreakerState.CLOSED


def test_a_success_while_closed_resets_the_failure_count() -> None:
    b = make(threshold=3)
    fail(b, 2)
    b.admit()
    b.succeeded()
    fail(b, 2)
    assert state_of(b) is BreakerState.CLOSED  # 2 + 2 failures, but not 3 in a row
    fail(b, 1)
    assert state_of(b) is BreakerState.OPEN


def test_the_listener_hears_every_state_change_with_the_deployment_name(clock: Clock) -> None:
    changes: list[Change] = []
    b = make(changes, threshold=2, reset=10.0)
    fail(b, 1)
    b.admit()
    b.succeeded()
    assert changes == []  # counting failures is not a state change
    fail(b, 2)
    clock.advance(10.5)
    b.admit()
    b.failed(boom())
    clock.advance(10.5)
    b.admit()
    b.succeeded()
    closed, half, opened = BreakerState.CLOSED, BreakerState.HALF_OPEN, BreakerState.OPEN
    assert changes == [
        (NAME, closed, opened),
        (NAME, opened, half),
        (NAME, half, opened),
        (NAME, opened, half),
        (NAME, half, closed),
    ]


def test_available_semantics(clock: Clock) -> None:
    b = make(threshold=1, reset=20.0)
    assert b.available()  # closed
    fail(b, 1)
    assert not b.available()  # open, timeout not passed
    clock.advance(20.5)
    assert b.available()  # open, but the next admit would be the trial
    b.admit()
    assert b.available()  # half-open
    # available() is a question, not an action: asking never changes the state.
    b2 = make(threshold=1, reset=20.0)
    fail(b2, 1)
    for _ in range(3):
        b2.available()
    assert state_of(b2) is BreakerState.OPEN


def test_probe_succeeded_half_opens_an_open_breaker_before_its_timeout(clock: Clock) -> None:
    changes: list[Change] = []
    b = make(changes, threshold=1, reset=3600.0)
    fail(b, 1)
    assert not b.available()
    b.probe_succeeded()
    assert state_of(b) is BreakerState.HALF_OPEN
    assert b.available()
    b.admit()  # the trial call goes through
    b.succeeded()
    assert state_of(b) is BreakerState.CLOSED
    assert changes[-2:] == [
        (NAME, BreakerState.OPEN, BreakerState.HALF_OPEN),
        (NAME, BreakerState.HALF_OPEN, BreakerState.CLOSED),
    ]


def test_probe_succeeded_leaves_closed_and_half_open_breakers_alone(clock: Clock) -> None:
    changes: list[Change] = []
    b = make(changes, threshold=2)
    fail(b, 1)
    b.probe_succeeded()
    assert state_of(b) is BreakerState.CLOSED
    # Nor does it forget the failure already counted.
    fail(b, 1)
    assert state_of(b) is BreakerState.OPEN
    b.probe_succeeded()
    b.probe_succeeded()
    assert state_of(b) is BreakerState.HALF_OPEN
    assert [c[2] for c in changes] == [BreakerState.OPEN, BreakerState.HALF_OPEN]


def test_breakers_are_independent() -> None:
    one, two = make(threshold=1), make(threshold=1)
    fail(one, 1)
    assert state_of(one) is BreakerState.OPEN
    assert state_of(two) is BreakerState.CLOSED
    two.admit()


# --- failure classes ---

DEFAULT_FALLBACK = frozenset(RoutingSettings().fallback_on)

# class: (failure class, attempt outcome, counts against the breaker, falls back by default)
EXPECTED: dict[type[UpstreamError], tuple[str, AttemptOutcome, bool, bool]] = {
    # The caller's own fault, or the same answer anywhere: never a breaker failure, never a fallback.
    errors.UpstreamInvalidRequestError: ("", AttemptOutcome.REJECTED, False, False),
    errors.ContentFilteredError: ("content_filter", AttemptOutcome.REJECTED, False, False),
    # Too long for this model: never the deployment's health; falls back only to a larger window.
    errors.ContextLengthExceededError: ("context_length", AttemptOutcome.REJECTED, False, True),
    # The gateway's credentials refused: another deployment would refuse the same key, so no
    # fallback; but the deployment cannot serve, so its breaker counts it (README: "refused credentials").
    errors.UpstreamAuthenticationError: ("", AttemptOutcome.REJECTED, True, False),
    errors.UpstreamPermissionError: ("", AttemptOutcome.REJECTED, True, False),
    errors.UpstreamNotFoundError: ("not_found", AttemptOutcome.REJECTED, False, False),
    # The upstream's failures.
    errors.RateLimitedError: ("rate_limited", AttemptOutcome.RATE_LIMITED, True, True),
    errors.QuotaExhaustedError: ("quota", AttemptOutcome.RATE_LIMITED, True, False),
    errors.OverloadedError: ("overloaded", AttemptOutcome.UPSTREAM_ERROR, True, True),
    errors.UpstreamServerError: ("server_error", AttemptOutcome.UPSTREAM_ERROR, True, True),
    errors.MalformedResponseError: ("server_error", AttemptOutcome.UPSTREAM_ERROR, True, True),
    errors.UpstreamTimeoutError: ("timeout", AttemptOutcome.TIMEOUT, True, True),
    errors.UpstreamConnectionError: ("connection", AttemptOutcome.CONNECTION_ERROR, True, True),
    errors.StreamBrokenError: ("connection", AttemptOutcome.STREAM_BROKEN, True, True),
}


def _all_subclasses(cls: type[UpstreamError]) -> set[type[UpstreamError]]:
    found: set[type[UpstreamError]] = set()
    for sub in cls.__subclasses__():
        if sub.__module__ == errors.__name__:
            found |= {sub, *_all_subclasses(sub)}
    return found


def test_every_upstream_error_class_is_classified_here() -> None:
    assert _all_subclasses(UpstreamError) == set(EXPECTED)


@pytest.mark.parametrize("cls", list(EXPECTED), ids=lambda c: c.__name__)
def test_failure_classification(cls: type[UpstreamError]) -> None:
    kind, attempt_outcome, counts, falls_back = EXPECTED[cls]
    exc = cls("upstream said no", provider="openai", http_status=418, retry_after_seconds=1.0)
    assert failure_class(exc) == kind
    assert outcome(exc) is attempt_outcome
    assert counts_against_breaker(exc) is counts
    assert (failure_class(exc) in DEFAULT_FALLBACK) is falls_back
    # A named class is one an operator can configure in fallback_on.
    assert kind == "" or kind in FAILURE_CLASSES


def test_default_fallback_classes_are_the_documented_ones() -> None:
    assert frozenset(DEFAULT_FALLBACK_ON) == DEFAULT_FALLBACK
    assert set(DEFAULT_FALLBACK) == {
        "rate_limited",
        "overloaded",
        "server_error",
        "timeout",
        "connection",
        "context_length",
    }
    assert {"quota", "content_filter", "not_found"} <= set(FAILURE_CLASSES) - DEFAULT_FALLBACK


def test_a_caller_error_never_opens_a_breaker() -> None:
    b = make(threshold=1)
    for cls in (
        errors.UpstreamInvalidRequestError,
        errors.ContextLengthExceededError,
        errors.ContentFilteredError,
        errors.UpstreamNotFoundError,
    ):
        exc = cls("bad request", provider="openai")
        assert not counts_against_breaker(exc)
    # Only what counts reaches failed(); a counted failure opens this threshold-1 breaker at once.
    b.failed(errors.UpstreamAuthenticationError("bad key", provider="openai"))
    assert state_of(b) is BreakerState.OPEN


def test_an_unlisted_error_class_is_classified_by_retryable() -> None:
    class FlakyError(UpstreamError):
        retryable = True

    class FatalError(UpstreamError):
        retryable = False

    flaky = FlakyError("flaky", provider="x")
    assert failure_class(flaky) == "server_error"
    assert outcome(flaky) is AttemptOutcome.UPSTREAM_ERROR
    assert counts_against_breaker(flaky)
    fatal = FatalError("fatal", provider="x")
    assert failure_class(fatal) == ""
    assert outcome(fatal) is AttemptOutcome.REJECTED
    assert not counts_against_breaker(fatal)
    base = UpstreamError("plain", provider="x")
    assert failure_class(base) == ""
    assert not counts_against_breaker(base)
