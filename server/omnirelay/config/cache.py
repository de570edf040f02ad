"""Settings for the response cache: the store, its bounds, TTLs, and each model's policy."""

from __future__ import annotations

from dataclasses import dataclass

from omnirelay.config.reader import Section

CACHE_BACKENDS = ("memory", "redis", "off")


@dataclass(frozen=True, slots=True)
class CacheSettings:
    backend: str = "memory"
    # May carry a password (redis://:secret@host:6379/0): masked wherever settings are shown.
    redis_url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "omnirelay:cache"
    # Bounds of the in-memory store; the least recently used entries go first.
    max_entries: int = 10_000
    max_bytes: int = 64 * 1024 * 1024
    default_ttl_seconds: float = 3600.0
    # A request may ask for a shorter or longer TTL, up to this.
    max_ttl_seconds: float = 86_400.0
    # A store slower than this is skipped for that call (the call goes upstream).
    backend_timeout_seconds: float = 0.05
    # Identical calls in flight wait for the first instead of calling upstream again.
    coalesce: bool = True


@dataclass(frozen=True, slots=True)
class ModelCacheSettings:
    """One model's cache policy."""

    enabled: bool = True
    ttl_seconds: float | None = None
    # Cache answers to sampled requests (temperature above 0 with no seed, n > 1) too.
    nondeterministic: bool = False


def cache_settings(s: Section) -> CacheSettings:
    d = CacheSettings()
    result = CacheSettings(
        backend=s.get_str("backend", CACHE_BACKENDS, default=d.backend),
        redis_url=s.get_str("redis_url", default=d.redis_url),
        key_prefix=s.get_str("key_prefix", default=d.key_prefix),
        max_entries=s.get_int("max_entries", 1, 100_000_000, default=d.max_entries),
        max_bytes=s.get_int("max_bytes", 1024, 2**40, default=d.max_bytes),
        default_ttl_seconds=s.get_float(
            "default_ttl_seconds", 0.001, 31_536_000.0, default=d.default_ttl_seconds
        ),
        max_ttl_seconds=s.get_float("max_ttl_seconds", 0.001, 31_536_000.0, default=d.max_ttl_seconds),
        backend_timeout_seconds=s.get_float(
            "backend_timeout_seconds", 0.001, 60.0, default=d.backend_timeout_seconds
        ),
        coalesce=s.get_bool("coalesce", default=True),
    )
    if not result.redis_url.startswith(("redis://", "rediss://", "unix://")):
        s.problem("redis_url", "<redacted>", "expected a redis://, rediss:// or unix:// URL")
    if result.default_ttl_seconds > result.max_ttl_seconds:
        s.problem("default_ttl_seconds", result.default_ttl_seconds, "must not exceed max_ttl_seconds")
    s.reject_unknown()
    return result


def model_cache_settings(s: Section) -> ModelCacheSettings:
    if not s.has("cache"):
        return ModelCacheSettings()
    c = s.section("cache")
    result = ModelCacheSettings(
        enabled=c.get_bool("enabled", default=True),
        ttl_seconds=c.get_float("ttl_seconds", 0.001, 31_536_000.0) if c.has("ttl_seconds") else None,
        nondeterministic=c.get_bool("nondeterministic", default=False),
    )
    c.reject_unknown()
    return result
