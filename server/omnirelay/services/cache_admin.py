"""omnirelay.v1.CacheService: the cache's counters, and clearing it."""

from __future__ import annotations

from typing import Any

from grpc import aio

from omnirelay.cache.layer import CacheLayer
from omnirelay.cache.stores import StoreStats
from omnirelay.errors import FailedPreconditionError
from omnirelay.routing.catalog import ModelCatalog
from omnirelay_client.v1 import cache_pb2, cache_pb2_grpc

Context = aio.ServicerContext[Any, Any]


class CacheService(cache_pb2_grpc.CacheServiceServicer):
    def __init__(self, layer: CacheLayer | None, catalog: ModelCatalog) -> None:
        self._layer = layer
        self._catalog = catalog

    async def GetCacheStats(  # noqa: N802 (gRPC method name)
        self, request: cache_pb2.GetCacheStatsRequest, context: Context
    ) -> cache_pb2.GetCacheStatsResponse:
        if self._layer is None:
            return cache_pb2.GetCacheStatsResponse(backend="off")
        c = self._layer.counters
        try:
            stored = await self._layer.store.stats()
        except Exception:  # an unreachable store still has counters worth seeing
            c.backend_errors += 1
            stored = StoreStats(entries=0, bytes=0, evictions=0)
        return cache_pb2.GetCacheStatsResponse(
            backend=self._layer.store.name,
            hits=c.hits,
            misses=c.misses,
            coalesced=c.coalesced,
            bypassed=c.bypassed,
            stored=c.stored,
            evictions=stored.evictions,
            backend_errors=c.backend_errors,
            entries=stored.entries,
            bytes=stored.bytes,
        )

    async def ClearCache(  # noqa: N802
        self, request: cache_pb2.ClearCacheRequest, context: Context
    ) -> cache_pb2.ClearCacheResponse:
        if self._layer is None:
            raise FailedPreconditionError('the cache is off on this server (cache.backend = "off")')
        # An alias clears its model's answers: entries are keyed by the canonical name.
        model = self._catalog.resolve(request.model).name if request.model else None
        return cache_pb2.ClearCacheResponse(removed=await self._layer.store.clear(model))
