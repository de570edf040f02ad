"""Whether a call may be answered from the cache and stored in it, and for how long.

By default only deterministic requests are cached: temperature 0 (or a seed),
one choice. A model's policy (``[models.X.cache]``) can turn caching off or
accept sampled answers too; a request can opt in explicitly (``MODE_USE``),
skip the cache (``MODE_BYPASS``), force a fresh answer that replaces the
stored one (``MODE_REFRESH``) or accept only a stored answer
(``MODE_ONLY_IF_CACHED``: NOT_FOUND on a miss), and ask for its own TTL within
the configured maximum.
"""

from __future__ import annotations

from dataclasses import dataclass

from omnirelay.config.cache import CacheSettings, ModelCacheSettings
from omnirelay_client.v1 import completion_pb2, types_pb2

_MODES = types_pb2.CacheOptions


@dataclass(frozen=True, slots=True)
class Decision:
    lookup: bool  # answer from the store (or an identical call in flight) when possible
    store: bool  # store the answer this call gets upstream
    only_cached: bool  # a miss is NOT_FOUND instead of an upstream call
    ttl_seconds: float
    outcome: int  # the CacheOutcome reported when the call goes upstream


SKIP = Decision(False, False, False, 0.0, types_pb2.CACHE_OUTCOME_BYPASS)


def deterministic(request: completion_pb2.CompleteRequest) -> bool:
    s = request.sampling
    if s.HasField("n") and s.n > 1:
        return False
    return (s.HasField("temperature") and s.temperature == 0.0) or s.HasField("seed")


def decide(
    request: completion_pb2.CompleteRequest, model: ModelCacheSettings, settings: CacheSettings
) -> Decision:
    options = request.cache
    mode = options.mode
    if mode == _MODES.MODE_BYPASS or not model.enabled:
        if mode == _MODES.MODE_ONLY_IF_CACHED:
            return Decision(False, False, True, 0.0, types_pb2.CACHE_OUTCOME_BYPASS)
        return SKIP
    explicit = mode != _MODES.MODE_UNSPECIFIED
    if not explicit and not model.nondeterministic and not deterministic(request):
        return SKIP
    ttl = model.ttl_seconds if model.ttl_seconds is not None else settings.default_ttl_seconds
    if options.HasField("ttl"):
        asked = options.ttl.seconds + options.ttl.nanos / 1e9
        if asked > 0:
            ttl = asked
    ttl = min(ttl, settings.max_ttl_seconds)
    if mode == _MODES.MODE_REFRESH:
        return Decision(False, True, False, ttl, types_pb2.CACHE_OUTCOME_REFRESH)
    return Decision(True, True, mode == _MODES.MODE_ONLY_IF_CACHED, ttl, types_pb2.CACHE_OUTCOME_MISS)
