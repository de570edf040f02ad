"""Cache policy: which requests may be answered from the cache and stored, and for how long."""

from __future__ import annotations

from typing import Any

import pytest

from omnirelay.cache.policy import Decision, decide, deterministic
from omnirelay.config.cache import CacheSettings, ModelCacheSettings
from omnirelay_client.v1 import completion_pb2, types_pb2

Mode = types_pb2.CacheOptions
SETTINGS = CacheSettings(default_ttl_seconds=600.0, max_ttl_seconds=3600.0)
DEFAULT_MODEL = ModelCacheSettings()


def request(mode: int = Mode.MODE_UNSPECIFIED, ttl: float | None = None, **sampling: Any) -> Any:
    r = completion_pb2.CompleteRequest(model="m", sampling=types_pb2.SamplingParams(**sampling))
    r.messages.add(role=types_pb2.ROLE_USER).content.add(text="hi")
    r.cache.mode = mode  # type: ignore[assignment]
    if ttl is not None:
        r.cache.ttl.seconds = int(ttl)
        r.cache.ttl.nanos = round((ttl - int(ttl)) * 1e9)
    return r


def cacheable(d: Decision) -> bool:
    return d.lookup and d.store and not d.only_cached


def bypassed(d: Decision) -> bool:
    return not d.lookup and not d.store and not d.only_cached and d.outcome == types_pb2.CACHE_OUTCOME_BYPASS


def test_temperature_zero_is_cacheable_with_the_default_ttl() -> None:
    d = decide(request(temperature=0.0), DEFAULT_MODEL, SETTINGS)
    assert cacheable(d)
    assert d.outcome == types_pb2.CACHE_OUTCOME_MISS
    assert d.ttl_seconds == 600.0


@pytest.mark.parametrize(
    "sampling",
    [{"seed": 3}, {"seed": 0}, {"seed": 3, "temperature": 0.9}, {"temperature": 0.0, "n": 1}],
    ids=["seed", "seed-zero", "seed-with-temperature", "temperature-0-n-1"],
)
def test_a_seed_or_temperature_zero_is_deterministic(sampling: dict[str, Any]) -> None:
    r = request(**sampling)
    assert deterministic(r)
    assert cacheable(decide(r, DEFAULT_MODEL, SETTINGS))


@pytest.mark.parametrize(
    "sampling",
    [{"temperature": 0.7}, {}, {"max_tokens": 5}, {"temperature": 0.0, "n": 2}, {"seed": 1, "n": 3}],
    ids=["temperature", "no-temperature", "max-tokens-only", "n-2", "seed-n-3"],
)
def test_sampled_requests_bypass_by_default(sampling: dict[str, Any]) -> None:
    r = request(**sampling)
    assert not deterministic(r)
    assert bypassed(decide(r, DEFAULT_MODEL, SETTINGS))


@pytest.mark.parametrize(
    "sampling", [{"temperature": 0.7}, {}, {"temperature": 0.0, "n": 2}], ids=["temp", "none", "n-2"]
)
def test_mode_use_or_a_nondeterministic_model_caches_sampled_requests(sampling: dict[str, Any]) -> None:
    assert cacheable(decide(request(Mode.MODE_USE, **sampling), DEFAULT_MODEL, SETTINGS))
    sampled = ModelCacheSettings(nondeterministic=True)
    d = decide(request(**sampling), sampled, SETTINGS)
    assert cacheable(d)
    assert d.outcome == types_pb2.CACHE_OUTCOME_MISS


def test_a_disabled_model_is_never_cached() -> None:
    off = ModelCacheSettings(enabled=False, nondeterministic=True)
    for mode in (Mode.MODE_UNSPECIFIED, Mode.MODE_USE, Mode.MODE_REFRESH):
        assert bypassed(decide(request(mode, temperature=0.0), off, SETTINGS)), mode
    # ONLY_IF_CACHED can never be answered: a miss, without an upstream call.
    d = decide(request(Mode.MODE_ONLY_IF_CACHED, temperature=0.0), off, SETTINGS)
    assert (d.lookup, d.store, d.only_cached) == (False, False, True)


def test_bypass_skips_even_a_deterministic_request() -> None:
    assert bypassed(decide(request(Mode.MODE_BYPASS, temperature=0.0), DEFAULT_MODEL, SETTINGS))
    assert bypassed(decide(request(Mode.MODE_BYPASS, seed=1), ModelCacheSettings(ttl_seconds=5), SETTINGS))


@pytest.mark.parametrize("sampling", [{"temperature": 0.0}, {"temperature": 1.2}], ids=["det", "sampled"])
def test_refresh_stores_without_looking_up(sampling: dict[str, Any]) -> None:
    d = decide(request(Mode.MODE_REFRESH, ttl=30, **sampling), DEFAULT_MODEL, SETTINGS)
    assert (d.lookup, d.store, d.only_cached) == (False, True, False)
    assert d.outcome == types_pb2.CACHE_OUTCOME_REFRESH
    assert d.ttl_seconds == 30


@pytest.mark.parametrize("sampling", [{"temperature": 0.0}, {"temperature": 1.2}], ids=["det", "sampled"])
def test_only_if_cached_looks_up_and_refuses_a_miss(sampling: dict[str, Any]) -> None:
    d = decide(request(Mode.MODE_ONLY_IF_CACHED, **sampling), DEFAULT_MODEL, SETTINGS)
    assert d.lookup
    assert d.only_cached
    assert d.outcome == types_pb2.CACHE_OUTCOME_MISS


def test_request_ttl_overrides_and_is_capped() -> None:
    assert decide(request(ttl=5, temperature=0.0), DEFAULT_MODEL, SETTINGS).ttl_seconds == 5
    assert decide(request(ttl=0.25, temperature=0.0), DEFAULT_MODEL, SETTINGS).ttl_seconds == 0.25
    # Longer than the default is allowed, up to the maximum.
    assert decide(request(ttl=1800, temperature=0.0), DEFAULT_MODEL, SETTINGS).ttl_seconds == 1800
    assert decide(request(ttl=10**7, temperature=0.0), DEFAULT_MODEL, SETTINGS).ttl_seconds == 3600
    # A zero duration means "unset": the model's TTL, else the default.
    zero = request(temperature=0.0)
    zero.cache.ttl.SetInParent()
    assert decide(zero, DEFAULT_MODEL, SETTINGS).ttl_seconds == 600
    assert decide(zero, ModelCacheSettings(ttl_seconds=42), SETTINGS).ttl_seconds == 42


def test_model_ttl_replaces_the_default_and_is_capped() -> None:
    assert decide(request(temperature=0.0), ModelCacheSettings(ttl_seconds=90), SETTINGS).ttl_seconds == 90
    long = ModelCacheSettings(ttl_seconds=99_999)
    assert decide(request(temperature=0.0), long, SETTINGS).ttl_seconds == 3600
    # The request's own TTL wins over the model's.
    assert decide(request(ttl=7, temperature=0.0), long, SETTINGS).ttl_seconds == 7


def test_default_ttl_is_capped_by_the_maximum() -> None:
    tight = CacheSettings(default_ttl_seconds=600.0, max_ttl_seconds=60.0)
    assert decide(request(temperature=0.0), DEFAULT_MODEL, tight).ttl_seconds == 60
