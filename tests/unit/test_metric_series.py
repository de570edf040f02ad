"""The lock-free series expose exactly what prometheus_client's own Counter and Histogram would."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from omnirelay.telemetry.metrics import DURATION_BUCKETS, TOKEN_BUCKETS
from omnirelay.telemetry.series import CounterFamily, Families, HistogramFamily


def _samples(registry: CollectorRegistry) -> list[str]:
    # prometheus_client's own series also carry a creation time; ours do not.
    text = generate_latest(registry).decode()
    return sorted(line for line in text.splitlines() if line and "_created" not in line)


def test_histograms_match_prometheus_client_bucket_for_bucket() -> None:
    rng = random.Random(7)
    theirs_registry, ours_registry = CollectorRegistry(), CollectorRegistry()
    theirs = Histogram(
        "d_seconds", "durations", ("model",), buckets=DURATION_BUCKETS, registry=theirs_registry
    )
    tokens_theirs = Histogram("t", "tokens", ("kind",), buckets=TOKEN_BUCKETS, registry=theirs_registry)
    ours = HistogramFamily("d_seconds", "durations", ("model",), DURATION_BUCKETS)
    tokens_ours = HistogramFamily("t", "tokens", ("kind",), TOKEN_BUCKETS)
    ours_registry.register(Families(ours, tokens_ours))

    # Values on the bounds themselves (a bucket is "less than or equal"), past the last, and random.
    values = [*DURATION_BUCKETS, 0.0, 1e-9, 601.0, 10_000.0] + [rng.expovariate(2.0) for _ in range(500)]
    for i, v in enumerate(values):
        model = ("a", "b")[i % 2]
        theirs.labels(model).observe(v)
        ours.child((model,)).observe(v)
    for count in [0, 1, 4, 5, 4**13, 4**13 + 1, *(rng.randrange(0, 100_000) for _ in range(300))]:
        tokens_theirs.labels("input").observe(count)
        tokens_ours.child(("input",)).observe(count)

    assert _samples(ours_registry) == _samples(theirs_registry)
    assert 'd_seconds_bucket{le="+Inf",model="a"}' in generate_latest(ours_registry).decode()


def test_counters_match_prometheus_client() -> None:
    theirs_registry, ours_registry = CollectorRegistry(), CollectorRegistry()
    theirs = Counter("calls", "calls", ("model", "code"), registry=theirs_registry)
    ours = CounterFamily("calls", "calls", ("model", "code"))
    ours_registry.register(Families(ours))
    for model, code, amount in [
        ("a", "OK", 1.0),
        ("a", "OK", 2.5),
        ("b", "UNAVAILABLE", 1.0),
        ("a", "OK", 0.25),
    ]:
        theirs.labels(model, code).inc(amount)
        ours.inc((model, code), amount)
    child = ours.child(("b", "UNAVAILABLE"))
    child.value += 1
    theirs.labels("b", "UNAVAILABLE").inc()

    assert _samples(ours_registry) == _samples(theirs_registry)
    assert 'calls_total{code="OK",model="a"} 3.75' in _samples(ours_registry)


def test_an_untouched_family_describes_itself_as_prometheus_client_does() -> None:
    theirs_registry, ours_registry = CollectorRegistry(), CollectorRegistry()
    Counter("idle", "never counted", ("x",), registry=theirs_registry)
    Histogram("idle_seconds", "never observed", ("x",), registry=theirs_registry)
    ours_registry.register(
        Families(
            CounterFamily("idle", "never counted", ("x",)),
            HistogramFamily("idle_seconds", "never observed", ("x",), DURATION_BUCKETS),
        )
    )
    assert _samples(ours_registry) == _samples(theirs_registry)
    assert "# HELP idle_seconds never observed" in _samples(ours_registry)
