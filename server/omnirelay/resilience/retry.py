"""Retry policies (exponential backoff with full jitter, honouring the upstream's delay) and the budget.

The budget keeps an outage from becoming a retry storm: across all calls,
retries may be at most ``ratio`` of the requests seen in the last window, plus
a small floor so a quiet server can still retry.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable

from omnirelay.config.routing import RetryBudgetSettings, RetrySettings

_BUCKETS = 10


class RetryPolicy:
    """One provider's retry rules."""

    __slots__ = ("_base", "_cap", "_max_retry_after", "_random", "max_attempts")

    def __init__(self, settings: RetrySettings, rng: random.Random | None = None) -> None:
        self.max_attempts = settings.max_attempts
        self._base = settings.base_delay_seconds
        self._cap = settings.max_delay_seconds
        self._max_retry_after = settings.max_retry_after_seconds
        self._random = rng or random.Random()

    def delay(self, attempt: int, retry_after: float | None) -> float | None:
        """Seconds to wait before try ``attempt + 1`` of one deployment, or None: do not retry it.

        Full jitter (a uniform draw up to the exponential step) spreads retries of many
        callers apart; an upstream's own retry-after is a floor, and one beyond
        ``max_retry_after_seconds`` means this deployment is not worth waiting for.
        """
        if attempt >= self.max_attempts:
            return None
        if retry_after is not None and retry_after > self._max_retry_after:
            return None
        step = min(self._cap, self._base * (2 ** (attempt - 1)))
        jittered = self._random.uniform(0.0, step) if step > 0 else 0.0
        return max(jittered, retry_after or 0.0)


class RetryBudget:
    """Sliding-window counts of requests and retries, in ten buckets."""

    def __init__(self, settings: RetryBudgetSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self._ratio = settings.ratio
        self._floor = settings.min_retries_per_second * settings.window_seconds
        self._width = settings.window_seconds / _BUCKETS
        self._clock = clock
        self._requests = [0] * _BUCKETS
        self._retries = [0] * _BUCKETS
        self._tick = math.floor(clock() / self._width)

    def _advance(self) -> int:
        tick = math.floor(self._clock() / self._width)
        if tick != self._tick:
            for t in range(max(self._tick + 1, tick - _BUCKETS + 1), tick + 1):
                self._requests[t % _BUCKETS] = 0
                self._retries[t % _BUCKETS] = 0
            self._tick = tick
        return tick % _BUCKETS

    def request(self) -> None:
        """Count one call (not its retries)."""
        self._requests[self._advance()] += 1

    def try_spend(self) -> bool:
        """Take one retry if the budget allows it."""
        slot = self._advance()
        if sum(self._retries) >= self._floor + self._ratio * sum(self._requests):
            return False
        self._retries[slot] += 1
        return True

    def snapshot(self) -> tuple[int, int]:
        """(requests, retries) in the current window."""
        self._advance()
        return sum(self._requests), sum(self._retries)
