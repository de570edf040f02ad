"""Routing strategies: the order in which one model's deployments are tried.

Each strategy orders the deployments whose breaker admits calls; deployments
with an open breaker follow in priority order (their attempt is recorded as
circuit-open without an upstream call, unless the reset timeout has passed and
it becomes the half-open trial). The first deployment serves; the rest are the
model's own fallbacks.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping, Sequence
from typing import Protocol

from omnirelay.routing.targets import Target


class Strategy(Protocol):
    def order(self, targets: Sequence[Target], sticky_key: str) -> list[Target]:
        """Every one of ``targets`` (all available), best first."""
        ...


def _by_priority(t: Target) -> int:
    return t.priority


class Priority:
    """Lowest priority number first; ties keep the configured order."""

    def order(self, targets: Sequence[Target], sticky_key: str) -> list[Target]:
        return sorted(targets, key=_by_priority)


class Weighted:
    """Random in proportion to weight (then by weight again for the rest: sampling without replacement)."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._random = rng or random.Random()

    def order(self, targets: Sequence[Target], sticky_key: str) -> list[Target]:
        # Efraimidis-Spirakis: sort by u^(1/w), a one-pass weighted shuffle.
        rand = self._random.random
        keyed = [(rand() ** (1.0 / t.weight) if t.weight > 0 else -1.0, i) for i, t in enumerate(targets)]
        keyed.sort(reverse=True)
        return [targets[i] for _, i in keyed]


class LeastInFlight:
    """Fewest calls in progress first; ties by priority, then a rotating start to spread them."""

    def __init__(self) -> None:
        self._turn = 0

    def order(self, targets: Sequence[Target], sticky_key: str) -> list[Target]:
        self._turn += 1
        n = len(targets)
        turn = self._turn
        ranked = sorted(
            range(n), key=lambda i: (targets[i].stats.in_flight, targets[i].priority, (i - turn) % n)
        )
        return [targets[i] for i in ranked]


class LowestLatency:
    """Lowest average time to first token first; a deployment with no sample yet goes first to get one."""

    def order(self, targets: Sequence[Target], sticky_key: str) -> list[Target]:
        return sorted(targets, key=lambda t: (t.stats.ttft_ewma or 0.0, t.priority))


class LowestCost:
    """Cheapest list price first (input + output per million tokens); unknown prices last."""

    def order(self, targets: Sequence[Target], sticky_key: str) -> list[Target]:
        return sorted(targets, key=lambda t: (t.unit_price, t.priority))


class Sticky:
    """A sticky key maps to the same healthy deployment every time (rendezvous hashing).

    Each (key, deployment) pair gets a weighted score; the highest wins. When the
    winner's breaker opens only its keys move, and they move back when it recovers.
    Without a key the choice is weighted random.
    """

    def __init__(self, fallback: Strategy) -> None:
        self._fallback = fallback

    def order(self, targets: Sequence[Target], sticky_key: str) -> list[Target]:
        if not sticky_key:
            return self._fallback.order(targets, sticky_key)
        return sorted(targets, key=lambda t: _score(sticky_key, t), reverse=True)


def _score(key: str, target: Target) -> float:
    digest = hashlib.blake2b(f"{key}\x1f{target.deployment.name}".encode(), digest_size=8).digest()
    # A uniform draw in (0, 1) from the hash, turned into a weighted rendezvous score.
    u = (int.from_bytes(digest, "big") + 1) / (2**64 + 2)
    return u ** (1.0 / target.weight) if target.weight > 0 else -1.0


def default_strategies(rng: random.Random | None = None) -> Mapping[str, Strategy]:
    """The explicit registry of strategies, by the name config and requests use."""
    weighted = Weighted(rng)
    return {
        "priority": Priority(),
        "weighted": weighted,
        "least_in_flight": LeastInFlight(),
        "lowest_latency": LowestLatency(),
        "lowest_cost": LowestCost(),
        "sticky": Sticky(weighted),
    }


def arrange(strategy: Strategy, targets: Sequence[Target], sticky_key: str) -> list[Target]:
    """Available deployments in the strategy's order, then the ones whose breaker is open."""
    if len(targets) == 1:
        return [targets[0]]
    available: list[Target] = []
    blocked: list[Target] = []
    for t in targets:
        (available if t.breaker.available() else blocked).append(t)
    if not blocked:
        return strategy.order(targets, sticky_key)
    ordered = strategy.order(available, sticky_key) if available else []
    return ordered + sorted(blocked, key=_by_priority)
