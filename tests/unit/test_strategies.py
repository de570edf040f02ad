"""Routing strategies: the order each one gives a model's deployments, and ``arrange`` around breakers."""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Sequence

import pytest

from omnirelay.config import LocalProviderSettings
from omnirelay.config.routing import STRATEGIES, BreakerSettings, PricingSettings, RetrySettings
from omnirelay.domain import Deployment
from omnirelay.errors import UpstreamServerError
from omnirelay.providers.local import LocalProvider
from omnirelay.resilience.breaker import BreakerState
from omnirelay.routing.strategies import (
    LeastInFlight,
    LowestCost,
    LowestLatency,
    Priority,
    Sticky,
    Weighted,
    arrange,
    default_strategies,
)
from omnirelay.routing.targets import DeploymentStats, Target, TargetPool

PROVIDER = LocalProvider(LocalProviderSettings(name="local"))


def pool(failure_threshold: int = 1) -> TargetPool:
    breaker = BreakerSettings(failure_threshold=failure_threshold, reset_timeout_seconds=3600.0)
    return TargetPool(lambda _provider: breaker, lambda _provider: RetrySettings())


def target(
    p: TargetPool,
    name: str,
    *,
    weight: float = 1.0,
    priority: int = 0,
    pricing: PricingSettings | None = None,
) -> Target:
    return p.target(
        Deployment(f"local/{name}", "local", name),
        PROVIDER,
        weight=weight,
        priority=priority,
        pricing=pricing,
    )


def names(ordered: Sequence[Target]) -> list[str]:
    return [t.deployment.provider_model for t in ordered]


def within_binomial(count: int, n: int, p: float, sigmas: float = 6.0) -> bool:
    """Is ``count`` successes in ``n`` trials within ``sigmas`` standard deviations of Binomial(n, p)?"""
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


def open_breaker(t: Target) -> None:
    t.breaker.failed(UpstreamServerError("boom", provider="local"))
    assert t.breaker.state is BreakerState.OPEN
    assert not t.breaker.available()


# --- priority ---


def test_priority_orders_by_priority_number_lowest_first() -> None:
    p = pool()
    targets = [target(p, "c", priority=3), target(p, "a", priority=-1), target(p, "b", priority=1)]
    assert names(Priority().order(targets, "")) == ["a", "b", "c"]


def test_priority_ties_keep_the_configured_order() -> None:
    p = pool()
    targets = [
        target(p, "first", priority=1),
        target(p, "zero-1", priority=0),
        target(p, "second", priority=1),
        target(p, "zero-2", priority=0),
        target(p, "third", priority=1),
    ]
    assert names(Priority().order(targets, "")) == ["zero-1", "zero-2", "first", "second", "third"]
    # The sticky key means nothing to priority.
    assert names(Priority().order(targets, "some-key")) == names(Priority().order(targets, ""))


# --- weighted ---


def test_weighted_first_choice_share_follows_weights_one_to_three() -> None:
    p = pool()
    targets = [target(p, "light", weight=1.0), target(p, "heavy", weight=3.0)]
    strategy = Weighted(random.Random(20240601))
    n = 20_000
    firsts = Counter(names(strategy.order(targets, ""))[0] for _ in range(n))
    assert firsts["light"] + firsts["heavy"] == n
    assert within_binomial(firsts["light"], n, 0.25), firsts
    assert within_binomial(firsts["heavy"], n, 0.75), firsts


def test_weighted_ordering_is_sampling_without_replacement() -> None:
    """Every ordering holds each deployment once; the second place follows the remaining weights."""
    p = pool()
    targets = [target(p, "a", weight=1.0), target(p, "b", weight=1.0), target(p, "c", weight=2.0)]
    strategy = Weighted(random.Random(7))
    n = 20_000
    firsts: Counter[str] = Counter()
    seconds: Counter[str] = Counter()
    for _ in range(n):
        order = names(strategy.order(targets, ""))
        assert sorted(order) == ["a", "b", "c"]
        firsts[order[0]] += 1
        seconds[order[1]] += 1
    assert within_binomial(firsts["c"], n, 0.5)
    assert within_binomial(firsts["a"], n, 0.25)
    # P(a second) = P(b first)·1/3 + P(c first)·1/2 = 1/12 + 1/4 = 1/3.
    assert within_binomial(seconds["a"], n, 1 / 3)
    # P(c second) = P(a first)·2/3 + P(b first)·2/3 = 1/3.
    assert within_binomial(seconds["c"], n, 1 / 3)


def test_weighted_never_puts_a_zero_weight_deployment_first_while_another_exists() -> None:
    p = pool()
    targets = [target(p, "drained", weight=0.0), target(p, "tiny", weight=0.01), target(p, "big", weight=5.0)]
    strategy = Weighted(random.Random(99))
    firsts: Counter[str] = Counter()
    for _ in range(5_000):
        order = names(strategy.order(targets, ""))
        assert order[-1] == "drained"
        firsts[order[0]] += 1
    assert firsts["drained"] == 0
    # Both weighted deployments do get picked: the zero weight is the exception, not all but the max.
    assert firsts["tiny"] > 0
    assert firsts["big"] > firsts["tiny"]


def test_weighted_with_the_same_seed_gives_the_same_orderings() -> None:
    p = pool()
    targets = [target(p, "a", weight=1.0), target(p, "b", weight=2.0), target(p, "c", weight=3.0)]
    one, two = Weighted(random.Random(5)), Weighted(random.Random(5))
    first = [names(one.order(targets, "")) for _ in range(50)]
    assert first == [names(two.order(targets, "")) for _ in range(50)]
    assert len({tuple(o) for o in first}) > 1


# --- least in flight ---


def test_least_in_flight_picks_the_deployment_with_fewest_calls_in_progress() -> None:
    p = pool()
    a, b, c = target(p, "a"), target(p, "b"), target(p, "c")
    a.stats.in_flight, b.stats.in_flight, c.stats.in_flight = 3, 1, 2
    strategy = LeastInFlight()
    for _ in range(4):
        assert names(strategy.order([a, b, c], "")) == ["b", "c", "a"]
    b.stats.in_flight = 5
    assert names(strategy.order([a, b, c], ""))[0] == "c"


def test_least_in_flight_rotates_among_ties() -> None:
    p = pool()
    a, b, c = target(p, "a"), target(p, "b"), target(p, "c")
    strategy = LeastInFlight()
    firsts = [names(strategy.order([a, b, c], ""))[0] for _ in range(9)]
    # Every run of three consecutive choices covers all three tied deployments.
    for i in range(len(firsts) - 2):
        assert sorted(firsts[i : i + 3]) == ["a", "b", "c"], firsts
    # The less loaded one wins even when it is not its turn; the tie among the others still rotates.
    c.stats.in_flight = 1
    b.stats.in_flight = 1
    for _ in range(4):
        assert names(strategy.order([a, b, c], ""))[0] == "a"
    seconds = {names(strategy.order([a, b, c], ""))[1] for _ in range(4)}
    assert seconds == {"b", "c"}


def test_least_in_flight_breaks_load_ties_by_priority_before_rotating() -> None:
    p = pool()
    backup, primary = target(p, "backup", priority=1), target(p, "primary", priority=0)
    strategy = LeastInFlight()
    assert {names(strategy.order([backup, primary], ""))[0] for _ in range(6)} == {"primary"}
    primary.stats.in_flight = 1
    assert names(strategy.order([backup, primary], ""))[0] == "backup"


def test_least_in_flight_reads_the_stats_shared_by_every_route_through_a_deployment() -> None:
    p = pool()
    a = target(p, "a")
    again = target(p, "a", weight=9.0, priority=4)  # the same deployment in another model's route
    assert again.stats is a.stats
    a.stats.in_flight = 2
    b = target(p, "b")
    assert names(LeastInFlight().order([again, b], "")) == ["b", "a"]


# --- lowest latency ---


def test_lowest_latency_prefers_the_lowest_moving_average() -> None:
    p = pool()
    a, b, c = target(p, "a"), target(p, "b"), target(p, "c")
    a.stats.observe_ttft(0.5, 0.3)
    b.stats.observe_ttft(0.2, 0.3)
    c.stats.observe_ttft(0.9, 0.3)
    assert names(LowestLatency().order([a, b, c], "")) == ["b", "a", "c"]
    # b slows down: its average climbs past a's.
    for _ in range(10):
        b.stats.observe_ttft(2.0, 0.3)
    assert names(LowestLatency().order([a, b, c], "")) == ["a", "c", "b"]


def test_lowest_latency_tries_an_unmeasured_deployment_first() -> None:
    p = pool()
    fast, fresh, slow = target(p, "fast"), target(p, "fresh"), target(p, "slow")
    fast.stats.observe_ttft(0.01, 0.3)
    slow.stats.observe_ttft(3.0, 0.3)
    assert fresh.stats.ttft_ewma is None
    assert names(LowestLatency().order([fast, slow, fresh], "")) == ["fresh", "fast", "slow"]
    fresh.stats.observe_ttft(1.0, 0.3)
    assert names(LowestLatency().order([fast, slow, fresh], "")) == ["fast", "fresh", "slow"]


def test_lowest_latency_ties_go_by_priority() -> None:
    p = pool()
    b, a = target(p, "b", priority=2), target(p, "a", priority=1)
    for t in (a, b):
        t.stats.observe_ttft(0.4, 0.3)
    assert names(LowestLatency().order([b, a], "")) == ["a", "b"]


def test_ewma_first_sample_is_taken_as_is_then_moves_by_alpha() -> None:
    stats = DeploymentStats()
    assert stats.ttft_ewma is None
    assert stats.in_flight == 0
    stats.observe_ttft(1.0, 0.3)
    assert stats.ttft_ewma == pytest.approx(1.0)
    stats.observe_ttft(2.0, 0.3)
    assert stats.ttft_ewma == pytest.approx(1.3)  # 1.0 + 0.3·(2.0 - 1.0)
    stats.observe_ttft(0.0, 0.3)
    assert stats.ttft_ewma == pytest.approx(0.91)  # 1.3 + 0.3·(0.0 - 1.3)
    # alpha = 1 keeps only the newest sample.
    stats.observe_ttft(5.0, 1.0)
    assert stats.ttft_ewma == pytest.approx(5.0)


def test_ewma_converges_to_a_steady_latency() -> None:
    stats = DeploymentStats()
    stats.observe_ttft(10.0, 0.5)
    for _ in range(40):
        stats.observe_ttft(2.0, 0.5)
    assert stats.ttft_ewma == pytest.approx(2.0, abs=1e-9)
    # Closed form after k samples of x from start s: x + (s - x)(1 - alpha)^k.
    stats = DeploymentStats()
    stats.observe_ttft(10.0, 0.2)
    for _ in range(5):
        stats.observe_ttft(2.0, 0.2)
    assert stats.ttft_ewma == pytest.approx(2.0 + 8.0 * 0.8**5)


# --- lowest cost ---


def test_lowest_cost_orders_by_input_plus_output_price_with_unknown_prices_last() -> None:
    p = pool()
    gpt4o = target(p, "gpt-4o", pricing=PricingSettings(2.5, 10.0))  # 12.5
    sonnet = target(p, "sonnet", pricing=PricingSettings(3.0, 15.0))  # 18.0
    mini = target(p, "mini", pricing=PricingSettings(0.15, 0.6))  # 0.75
    unknown = target(p, "unknown", priority=-5)
    # Input-heavy vs output-heavy: only the sum counts (0.1 + 20 > 10 + 0.2).
    skewed = target(p, "skewed", pricing=PricingSettings(0.1, 20.0))  # 20.1
    assert names(LowestCost().order([unknown, skewed, sonnet, gpt4o, mini], "")) == [
        "mini",
        "gpt-4o",
        "sonnet",
        "skewed",
        "unknown",
    ]


def test_lowest_cost_ties_and_unknowns_go_by_priority() -> None:
    p = pool()
    free = target(p, "free", pricing=PricingSettings(0.0, 0.0), priority=1)
    also_free = target(p, "also-free", pricing=PricingSettings(0.0, 0.0), priority=0)
    x, y = target(p, "x", priority=2), target(p, "y", priority=1)
    assert names(LowestCost().order([x, free, y, also_free], "")) == ["also-free", "free", "y", "x"]


# --- sticky ---


def test_sticky_maps_the_same_key_to_the_same_deployment_every_time() -> None:
    p = pool()
    targets = [target(p, name) for name in ("a", "b", "c")]
    strategy = Sticky(Weighted(random.Random(1)))
    for key in ("conversation-1", "conversation-2", "user:42"):
        first = names(strategy.order(targets, key))
        for _ in range(20):
            assert names(strategy.order(targets, key)) == first
        # The configured order of the deployments does not matter: the hash is of (key, deployment).
        assert names(strategy.order(list(reversed(targets)), key)) == first
        # Nor does a separate strategy instance (another worker process, a restart).
        assert names(Sticky(Weighted(random.Random(2))).order(targets, key)) == first


def test_sticky_spreads_keys_evenly_over_equal_weight_deployments() -> None:
    p = pool()
    targets = [target(p, name) for name in ("a", "b", "c")]
    strategy = Sticky(Weighted(random.Random(1)))
    n = 1_000
    firsts = Counter(names(strategy.order(targets, f"key-{i}"))[0] for i in range(n))
    assert set(firsts) == {"a", "b", "c"}
    for name in ("a", "b", "c"):
        assert within_binomial(firsts[name], n, 1 / 3), firsts


def test_sticky_shares_follow_weights() -> None:
    p = pool()
    targets = [target(p, "light", weight=1.0), target(p, "heavy", weight=3.0)]
    strategy = Sticky(Weighted(random.Random(1)))
    n = 4_000
    firsts = Counter(names(strategy.order(targets, f"session-{i}"))[0] for i in range(n))
    assert within_binomial(firsts["heavy"], n, 0.75), firsts


def test_sticky_without_a_key_falls_back_to_weighted_random() -> None:
    p = pool()
    targets = [target(p, "a"), target(p, "b"), target(p, "c")]
    strategy = Sticky(Weighted(random.Random(3)))
    firsts = Counter(names(strategy.order(targets, ""))[0] for _ in range(3_000))
    assert set(firsts) == {"a", "b", "c"}
    for name in ("a", "b", "c"):
        assert within_binomial(firsts[name], 3_000, 1 / 3)


def test_sticky_moves_only_the_keys_of_a_deployment_whose_breaker_opened_and_they_return() -> None:
    p = pool(failure_threshold=1)
    targets = [target(p, name) for name in ("a", "b", "c")]
    strategy = Sticky(Weighted(random.Random(1)))
    keys = [f"conversation-{i}" for i in range(600)]
    before = {k: names(arrange(strategy, targets, k))[0] for k in keys}
    assert set(before.values()) == {"a", "b", "c"}

    b = targets[1]
    open_breaker(b)
    during = {k: names(arrange(strategy, targets, k)) for k in keys}
    for k in keys:
        assert during[k][-1] == "b"  # an open breaker goes last
        if before[k] == "b":
            assert during[k][0] in {"a", "c"}
        else:
            assert during[k][0] == before[k], k  # the keys of healthy deployments stay put
    moved = [k for k in keys if during[k][0] != before[k]]
    assert moved == [k for k in keys if before[k] == "b"]
    # The moved keys spread over both survivors (rendezvous), not all onto one.
    assert {during[k][0] for k in moved} == {"a", "c"}

    # The deployment recovers (a probe half-opens it, the trial call succeeds): every key returns.
    b.breaker.probe_succeeded()
    b.breaker.admit()
    b.breaker.succeeded()
    assert b.breaker.state is BreakerState.CLOSED
    assert {k: names(arrange(strategy, targets, k))[0] for k in keys} == before


# --- arrange ---


def test_arrange_puts_open_breaker_deployments_last_in_priority_order() -> None:
    p = pool(failure_threshold=1)
    a = target(p, "a", priority=0)
    b = target(p, "b", priority=3)
    c = target(p, "c", priority=1)
    d = target(p, "d", priority=2)
    assert names(arrange(Priority(), [a, b, c, d], "")) == ["a", "c", "d", "b"]
    open_breaker(a)
    open_breaker(d)
    assert names(arrange(Priority(), [a, b, c, d], "")) == ["c", "b", "a", "d"]
    # The available ones keep the strategy's order; the blocked ones follow by priority.
    c.stats.observe_ttft(5.0, 0.3)
    b.stats.observe_ttft(0.1, 0.3)
    assert names(arrange(LowestLatency(), [a, b, c, d], "")) == ["b", "c", "a", "d"]


def test_arrange_with_every_breaker_open_lists_all_in_priority_order() -> None:
    p = pool(failure_threshold=1)
    targets = [target(p, "a", priority=2), target(p, "b", priority=0), target(p, "c", priority=1)]
    for t in targets:
        open_breaker(t)
    assert names(arrange(Weighted(random.Random(0)), targets, "")) == ["b", "c", "a"]


def test_arrange_never_drops_or_duplicates_a_deployment() -> None:
    p = pool(failure_threshold=1)
    targets = [target(p, name, weight=float(i + 1), priority=i % 2) for i, name in enumerate("abcdef")]
    open_breaker(targets[2])
    open_breaker(targets[4])
    rng = random.Random(11)
    for strategy in default_strategies(random.Random(4)).values():
        for _ in range(50):
            order = names(arrange(strategy, targets, f"k{rng.randrange(1000)}"))
            assert sorted(order) == list("abcdef")
            assert set(order[-2:]) == {"c", "e"}


def test_arrange_with_one_deployment_returns_it_even_when_its_breaker_is_open() -> None:
    p = pool(failure_threshold=1)
    only = target(p, "only")
    open_breaker(only)
    assert names(arrange(Priority(), [only], "")) == ["only"]


def test_the_strategy_registry_names_exactly_the_configurable_strategies() -> None:
    strategies = default_strategies(random.Random(0))
    assert set(strategies) == set(STRATEGIES)
    assert isinstance(strategies["sticky"], Sticky)
    assert isinstance(strategies["priority"], Priority)
