"""The cache as an interceptor on Complete and StreamComplete.

``CacheLayer.guard`` wraps the two method handlers of the completion services
(like the edge does, once at registration), so it sees each request message.
Per call: the model's and the request's policy decide whether the cache
applies; if it does not, the call goes to the original handler untouched. If
it does: a stored answer is served (HIT); else an identical call in flight is
followed (COALESCED); else this call starts the flight (MISS, or REFRESH) and
a clean, whole answer is stored. The store never fails a call: an operation
slower than ``backend_timeout_seconds`` or failing is a miss (or a skipped
write), counted in ``backend_errors``. Hits and coalesced calls report the
outcome in ``route.cache`` and the ``x-omnirelay-cache`` trailer, and cost
nothing upstream (usage keeps the answer's token counts, ``cost_micros`` 0).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from grpc import aio

from omnirelay.cache.entry import CachedAnswer, from_events, from_response, tokens
from omnirelay.cache.flights import Flight, Flights
from omnirelay.cache.keys import cache_key
from omnirelay.cache.policy import SKIP, Decision, decide
from omnirelay.cache.stores import CacheStore, MemoryStore
from omnirelay.config.cache import CacheSettings, ModelCacheSettings
from omnirelay.domain import GatewayEvent
from omnirelay.errors import (
    FieldViolation,
    InvalidArgumentError,
    NotFoundError,
    OmniRelayError,
)
from omnirelay.gateway import Gateway
from omnirelay.interceptors.edge import REQUEST_ID_HEADER, current_request_id
from omnirelay.services import convert, render
from omnirelay.services.context import CACHE_OUTCOME_NAMES
from omnirelay.usage import tally as tallies
from omnirelay_client.v1 import completion_pb2, stream_pb2, types_pb2

log = logging.getLogger("omnirelay.cache")
Context = aio.ServicerContext[Any, Any]
_NO_POLICY = ModelCacheSettings()
# Requests seen before, by their bytes as sent, with the decision and key they got: a repeated
# request (the kind a cache answers) skips the policy and the canonical copy, 4-5 us of a hit.
# Cleared whole when full; a larger request is not kept.
_KNOWN_ENTRIES = 2048
_KNOWN_MAX_BYTES = 2048
_T = TypeVar("_T")
# A flight's body: call upstream, publish what comes, finish, store.
Lead = Callable[[Flight[_T]], Awaitable[None]]


@dataclass(slots=True)
class CacheCounters:
    """This server's cache counters (mutable on purpose: they count)."""

    hits: int = 0
    misses: int = 0
    coalesced: int = 0
    bypassed: int = 0
    stored: int = 0
    backend_errors: int = 0


class CacheLayer:
    def __init__(self, settings: CacheSettings, store: CacheStore, gateway: Gateway) -> None:
        self.settings = settings
        self.store = store
        self.counters = CacheCounters()
        self._gateway = gateway
        self._timeout = settings.backend_timeout_seconds
        # The memory store does no I/O: no timeout around it, no coroutine for its lookups.
        self._memory = store if isinstance(store, MemoryStore) else None
        self._known: dict[bytes, tuple[Decision, str, str]] = {}
        self._unary: Flights[completion_pb2.CompleteResponse] = Flights()
        self._streams: Flights[stream_pb2.StreamCompleteResponse] = Flights()

    # --- wiring ---------------------------------------------------------------------------

    def guard(self, completion: Any, stream: Any) -> None:
        """Wrap ``completion.Complete`` and ``stream.StreamComplete`` (instance attributes win)."""
        inner_complete = completion.Complete
        inner_stream = stream.StreamComplete

        # Partials rather than wrapper coroutines: one coroutine fewer per call.
        completion.Complete = functools.partial(self._complete, inner=inner_complete)
        stream.StreamComplete = functools.partial(self._stream, inner=inner_stream)

    async def aclose(self) -> None:
        """Release the store (at shutdown)."""
        await self.store.aclose()

    # --- the store, bounded -----------------------------------------------------------------

    async def _get(self, key: str) -> CachedAnswer | None:
        try:
            async with asyncio.timeout(self._timeout):
                return await self.store.get(key)
        except Exception as exc:  # a slow or broken store is a miss, never a failed call
            self.counters.backend_errors += 1
            log.warning(
                "cache %s get failed (%s); answering from upstream", self.store.name, type(exc).__name__
            )
            return None

    async def _set(self, key: str, answer: CachedAnswer | None, ttl: float) -> None:
        if answer is None:
            return
        try:
            async with asyncio.timeout(self._timeout):
                stored = await self.store.set(key, answer, ttl)
            if stored:
                self.counters.stored += 1
        except Exception as exc:
            self.counters.backend_errors += 1
            log.warning("cache %s set failed (%s); answer not stored", self.store.name, type(exc).__name__)

    # --- what both kinds of call do first -----------------------------------------------------

    async def _lookup(self, decision: Decision, model: str, key: str) -> CachedAnswer | None:
        """The stored answer, for a call the cache applies to (``_keyed``'s answer).

        Raises NOT_FOUND for a miss under ONLY_IF_CACHED.
        """
        if not decision.lookup:
            return None
        memory = self._memory
        answer = memory.get_now(key) if memory is not None else await self._get(key)
        if answer is not None:
            self.counters.hits += 1
        elif decision.only_cached:
            self.counters.misses += 1
            tallies.current().cache = "miss"
            raise _not_cached(model)
        return answer

    def _keyed(
        self, request: completion_pb2.CompleteRequest, field_prefix: str
    ) -> tuple[Decision, str, str] | None:
        """The call's decision, canonical model and key; None when the cache does not apply.

        Raises for invalid options (a stored answer must not excuse them). A request seen before
        (the same bytes) gets what it got then, all pure functions of its bytes: a bypass too, so
        an uncacheable request (the common kind) pays a lookup, not the policy. The rest are
        decided, validated and keyed, and remembered when small.
        """
        # Sized first (cheap: string lengths are known) so a long prompt is not serialized twice.
        raw = request.SerializeToString() if request.ByteSize() <= _KNOWN_MAX_BYTES else b""
        keyed = self._known.get(raw) if raw else None
        if keyed is None:
            keyed = self._decided(request, field_prefix)
            if keyed is None:
                return None
            if raw:
                if len(self._known) >= _KNOWN_ENTRIES:
                    self._known.clear()
                self._known[raw] = keyed
        if keyed[0] is SKIP:
            self._bypass()
            return None
        return keyed

    def _decided(
        self, request: completion_pb2.CompleteRequest, field_prefix: str
    ) -> tuple[Decision, str, str] | None:
        """Policy, validation and key (SKIP and no key when the cache does not apply); None for a
        model the catalog does not know (the handler reports it)."""
        try:
            entry = self._gateway.catalog.resolve(request.model)
        except OmniRelayError:
            return None
        model = entry.name
        decision = decide(
            request, entry.settings.cache if entry.settings is not None else _NO_POLICY, self.settings
        )
        if not decision.lookup and not decision.store:
            if decision.only_cached:
                raise _not_cached(model)
            return SKIP, model, ""
        bad = convert.option_violations(request)
        if bad:
            raise InvalidArgumentError([FieldViolation(field_prefix + v.field, v.description) for v in bad])
        return decision, model, cache_key(request, model, request.attribution.project)

    def _bypass(self) -> None:
        """The cache does not apply: the call goes upstream, and its route facts and record say so."""
        self.counters.bypassed += 1
        render.cache_outcome.set(types_pb2.CACHE_OUTCOME_BYPASS)
        tallies.current().cache = "bypass"

    # --- unary ------------------------------------------------------------------------------

    async def _complete(
        self,
        request: completion_pb2.CompleteRequest,
        context: Context,
        inner: Callable[[completion_pb2.CompleteRequest, Context], Awaitable[Any]],
    ) -> completion_pb2.CompleteResponse:
        started = time.perf_counter()
        # Synchronous: a call the cache does not apply to awaits its handler and nothing else.
        keyed = self._keyed(request, "")
        if keyed is None:
            response: completion_pb2.CompleteResponse = await inner(request, context)
            return response
        decision, model, key = keyed
        answer = await self._lookup(decision, model, key)
        rid = current_request_id()
        if answer is not None:
            _served_hit(answer, rid, context)
            return _hit_response(answer, request.model, rid, started)
        if decision.lookup:
            flight = self._unary.get(key)
            if flight is not None:
                self.counters.coalesced += 1
                return await self._follow_unary(flight, types_pb2.CACHE_OUTCOME_COALESCED, rid, context)
        self.counters.misses += 1
        domain_request = convert.completion_request(request, rid)

        async def lead(flight: Flight[completion_pb2.CompleteResponse]) -> None:
            completion = await self._gateway.complete(domain_request, None)
            answered = render.complete_response(completion)
            flight.publish(answered)
            flight.finish()
            if decision.store:
                await self._set(key, from_response(answered), decision.ttl_seconds)

        flight = self._flight(self._unary, key, decision, lead)
        return await self._follow_unary(flight, decision.outcome, rid, context)

    def _flight(self, shared: Flights[_T], key: str, decision: Decision, lead: Lead[_T]) -> Flight[_T]:
        """The call's upstream call, in a task of its own; shared with identical calls when coalescing.

        Unshared, it is a flight nobody else joins, so both cases run the same code: the caller
        leaving cancels it (it was the last follower), and the answer is stored by the flight.
        The flight holds the leader's usage tally open, so the upstream cost it runs up lands on
        the leader's record even when the leader left first.
        """
        tally = tallies.current()
        tally.cache = "refresh" if decision.outcome == types_pb2.CACHE_OUTCOME_REFRESH else "miss"
        tally.hold()

        async def held(flight: Flight[_T]) -> None:
            try:
                await lead(flight)
            finally:
                tally.release()

        if self.settings.coalesce and decision.lookup:
            return shared.start(key, held)
        return Flights[_T]().start(key, held)

    async def _follow_unary(
        self, flight: Flight[completion_pb2.CompleteResponse], outcome: int, rid: str, context: Context
    ) -> completion_pb2.CompleteResponse:
        shared = await flight.first()
        out = completion_pb2.CompleteResponse()
        out.CopyFrom(shared)
        out.route.cache = outcome  # type: ignore[assignment]
        out.route.request_id = rid
        if outcome == types_pb2.CACHE_OUTCOME_COALESCED:
            out.usage.cost_micros = 0  # the leader's call paid for it
            _tally_answer("coalesced", out.route, out.usage)
        context.set_trailing_metadata(_route_metadata(out.route))
        return out

    # --- streams ----------------------------------------------------------------------------

    async def _stream(
        self,
        request: stream_pb2.StreamCompleteRequest,
        context: Context,
        inner: Callable[[stream_pb2.StreamCompleteRequest, Context], Awaitable[None]],
    ) -> None:
        body = request.request
        started = time.perf_counter()
        keyed = self._keyed(body, "request.")
        if keyed is None:
            await inner(request, context)
            return
        decision, model, key = keyed
        answer = await self._lookup(decision, model, key)
        rid = current_request_id()
        if answer is not None:
            await _replay(answer, body.model, rid, started, context)
            return
        if decision.lookup:
            flight = self._streams.get(key) if self.settings.coalesce else None
            if flight is not None:
                self.counters.coalesced += 1
                await _follow_stream(flight, types_pb2.CACHE_OUTCOME_COALESCED, rid, context)
                return
        self.counters.misses += 1
        domain_request = convert.stream_completion_request(body, rid)
        own = self._gateway.default_deadline(domain_request.model)

        async def lead(flight: Flight[stream_pb2.StreamCompleteResponse]) -> None:
            events = self._gateway.stream(domain_request, own)
            try:
                await self._gateway.within_default_deadline(
                    domain_request.model, own, _publish(events, flight)
                )
            finally:
                await events.aclose()
            flight.finish()
            if decision.store:
                items = flight.items
                done = items[-1].done.route if items and items[-1].HasField("done") else None
                if done is not None:
                    await self._set(key, from_events(items, done), decision.ttl_seconds)

        await _follow_stream(self._flight(self._streams, key, decision, lead), decision.outcome, rid, context)


async def _publish(
    events: AsyncIterator[GatewayEvent], flight: Flight[stream_pb2.StreamCompleteResponse]
) -> None:
    async for event in events:
        flight.publish(render.stream_event(event))


def _not_cached(model: str) -> NotFoundError:
    return NotFoundError(
        f"no cached answer for this request to {model!r} (cache mode ONLY_IF_CACHED); "
        "call without it to ask upstream",
        metadata={"model": model},
    )


def _metadata(rid: str, model: str, provider: str, outcome: str) -> tuple[tuple[str, str], ...]:
    return (
        (REQUEST_ID_HEADER, rid),
        ("x-omnirelay-model", model),
        ("x-omnirelay-provider", provider),
        ("x-omnirelay-cache", outcome),
    )


def _route_metadata(route: types_pb2.RouteFacts) -> tuple[tuple[str, str], ...]:
    return _metadata(
        route.request_id, route.resolved_model, route.provider, CACHE_OUTCOME_NAMES.get(route.cache, "")
    )


def _hit_route(
    route: types_pb2.RouteFacts, answer: CachedAnswer, requested: str, rid: str, started: float
) -> None:
    route.requested_model = requested
    route.resolved_model = answer.model
    route.provider = answer.provider
    route.deployment = answer.deployment
    route.cache = types_pb2.CACHE_OUTCOME_HIT
    route.request_id = rid
    render.set_duration(route.latency, time.perf_counter() - started)


def _served_hit(answer: CachedAnswer, rid: str, context: Context) -> None:
    """A hit's trailers, and its record's facts: served by the cache, the answer's tokens."""
    context.set_trailing_metadata(_metadata(rid, answer.model, answer.provider, "hit"))
    tallies.current().answered_from_cache(
        "hit", answer.model, answer.provider, answer.deployment, answer.usage
    )


def _hit_response(
    answer: CachedAnswer, requested: str, rid: str, started: float
) -> completion_pb2.CompleteResponse:
    out = completion_pb2.CompleteResponse()
    # A stored answer's cost is nothing already (entry.from_response): the tokens are kept.
    out.CopyFrom(answer.response)
    _hit_route(out.route, answer, requested, rid, started)
    return out


async def _replay(answer: CachedAnswer, requested: str, rid: str, started: float, context: Context) -> None:
    write = context.write
    started_event = stream_pb2.StreamCompleteResponse()
    first = started_event.route_started
    first.model = answer.model
    first.provider = answer.provider
    first.deployment = answer.deployment
    _served_hit(answer, rid, context)
    await write(started_event)
    for event in answer.events:
        await write(event)
    done = stream_pb2.StreamCompleteResponse()
    _hit_route(done.done.route, answer, requested, rid, started)
    await write(done)


async def _follow_stream(
    flight: Flight[stream_pb2.StreamCompleteResponse], outcome: int, rid: str, context: Context
) -> None:
    async with contextlib.aclosing(flight.follow()) as events:
        async for event in events:
            await _write_followed(event, outcome, rid, context, flight)


def _tally_answer(outcome: str, route: types_pb2.RouteFacts, usage: types_pb2.Usage) -> None:
    """The call was answered without an upstream call of its own: its record says by whom."""
    tallies.current().answered_from_cache(
        outcome, route.resolved_model, route.provider, route.deployment, tokens(usage)
    )


async def _write_followed(
    event: stream_pb2.StreamCompleteResponse,
    outcome: int,
    rid: str,
    context: Context,
    flight: Flight[stream_pb2.StreamCompleteResponse],
) -> None:
    if outcome == types_pb2.CACHE_OUTCOME_COALESCED and event.HasField("usage") and event.usage.cost_micros:
        free = stream_pb2.StreamCompleteResponse()
        free.CopyFrom(event)
        free.usage.cost_micros = 0  # the leader's call paid for it
        await context.write(free)
        return
    if not event.HasField("done"):
        await context.write(event)
        return
    # Every follower gets its own route facts: its request id and how it was served.
    own = stream_pb2.StreamCompleteResponse()
    own.CopyFrom(event)
    own.done.route.cache = outcome  # type: ignore[assignment]
    own.done.route.request_id = rid
    if outcome == types_pb2.CACHE_OUTCOME_COALESCED:
        # Looked up once, at the end, rather than watched for on every event.
        usage = next((e.usage for e in reversed(flight.items) if e.HasField("usage")), types_pb2.Usage())
        _tally_answer("coalesced", own.done.route, usage)
    context.set_trailing_metadata(_route_metadata(own.done.route))
    await context.write(own)
