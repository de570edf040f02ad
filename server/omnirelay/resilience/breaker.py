"""A circuit breaker per deployment: pybreaker's state machine behind a small asyncio adapter.

pybreaker's own async path needs Tornado, and its synchronous ``call`` would
finish the guarded call before an awaited upstream answer even arrived. The
adapter drives pybreaker's states directly instead: ``admit`` before the
attempt (open → refuse; reset timeout passed → half-open trial), then exactly
one of ``succeeded`` or ``failed`` after it. A caller's cancel is neither, and
only upstream-side failures reach ``failed`` (the routing layer decides which),
so a caller's bad request never opens a breaker.
"""

from __future__ import annotations

import contextlib
import enum
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pybreaker

from omnirelay.config.routing import BreakerSettings

log = logging.getLogger("omnirelay.breaker")


class BreakerState(enum.Enum):
    CLOSED = pybreaker.STATE_CLOSED
    OPEN = pybreaker.STATE_OPEN
    HALF_OPEN = pybreaker.STATE_HALF_OPEN


# (deployment name, old state, new state)
StateListener = Callable[[str, BreakerState, BreakerState], None]


class _Relay(pybreaker.CircuitBreakerListener):
    def __init__(self, name: str, listener: StateListener | None, changed: Callable[[], None]) -> None:
        self._name = name
        self._listener = listener
        self._changed = changed

    def state_change(
        self,
        cb: pybreaker.CircuitBreaker,
        old_state: pybreaker.CircuitBreakerState | None,
        new_state: pybreaker.CircuitBreakerState,
    ) -> None:
        self._changed()
        old = BreakerState(old_state.name) if old_state is not None else BreakerState.CLOSED
        new = BreakerState(new_state.name)
        log.warning("circuit breaker %s: %s -> %s", self._name, old.value, new.value)
        if self._listener is not None:
            self._listener(self._name, old, new)


class CircuitOpenError(Exception):
    """The deployment's breaker is open; no upstream call was made."""


class AsyncBreaker:
    """The breaker of one deployment."""

    __slots__ = ("_cb", "_clean", "name")

    def __init__(self, name: str, settings: BreakerSettings, listener: StateListener | None = None) -> None:
        self.name = name
        # Closed with no failure counted, as a breaker starts: then admit and succeeded have
        # nothing to do, and skip pybreaker's state and counter reads (properties that go through
        # its state storage): 1.0k instructions a call for the two instead of 5.1k (callgrind).
        # A failure or any state change clears it; a success that leaves the breaker closed and
        # its count at zero sets it again.
        self._clean = True
        self._cb = pybreaker.CircuitBreaker(
            fail_max=settings.failure_threshold,
            reset_timeout=settings.reset_timeout_seconds,
            success_threshold=settings.success_threshold,
            listeners=[_Relay(name, listener, self._changed)],
            name=name,
            # Tripping should report the upstream's own error, not a generic one.
            throw_new_error_on_trip=False,
        )

    @property
    def state(self) -> BreakerState:
        return BreakerState(self._cb.current_state)

    def available(self) -> bool:
        """Could a call be admitted now (closed, half-open, or open past its reset timeout)?"""
        state = self._cb.current_state
        return state != pybreaker.STATE_OPEN or self._reset_due()

    def _changed(self) -> None:
        self._clean = False

    def admit(self) -> None:
        """Before an attempt: raises CircuitOpenError while open; half-opens once the timeout passed."""
        if self._clean:
            return
        if self._cb.current_state == pybreaker.STATE_OPEN:
            if not self._reset_due():
                raise CircuitOpenError(f"circuit breaker for {self.name} is open")
            self._cb.half_open()

    def succeeded(self) -> None:
        if self._clean:
            return
        cb = self._cb
        if cb.current_state != pybreaker.STATE_CLOSED or cb.fail_counter:
            cb.state._handle_success()
        self._clean = cb.current_state == pybreaker.STATE_CLOSED and not cb.fail_counter

    def failed(self, exc: BaseException) -> None:
        """An upstream-side failure of an admitted attempt."""
        self._clean = False
        # pybreaker re-raises the error when it trips the breaker; here it is only recorded.
        with contextlib.suppress(BaseException):
            self._cb.state._handle_error(exc, reraise=False)

    def probe_succeeded(self) -> None:
        """A free health probe answered: an open breaker may try a real call now (half-open)."""
        if self._cb.current_state == pybreaker.STATE_OPEN:
            self._cb.half_open()

    def _reset_due(self) -> bool:
        opened_at = self._cb._state_storage.opened_at
        timeout = timedelta(seconds=self._cb.reset_timeout)
        return opened_at is None or datetime.now(UTC) >= opened_at + timeout
