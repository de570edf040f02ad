"""Running a plan: attempts, retries, fallback, breakers and deadlines, for unary calls and streams.

Per candidate deployment: the breaker admits (or the attempt is recorded as
circuit-open and skipped); a failure the provider marks retryable is retried on
the same deployment while its policy, the retry budget and the deadline allow
(the upstream's retry-after is a floor on the wait, never past the deadline);
then, if the failure's class is one the model falls back on, the next candidate
is tried; otherwise the error ends the call. A caller's cancel ends everything
at once: the awaited upstream request is closed by the cancellation itself.

Streams are routed the same way until their first chunk, so a failure before
anything was sent is invisible to the caller. After that, ``stream_recovery``
decides: ``error`` ends the stream with STREAM_INTERRUPTED saying how much was
delivered; ``continue`` asks the next candidate to continue the delivered text
(sent as an assistant prefix) and announces the switch with a RouteChange.
Nothing is replayed, so nothing is duplicated.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from dataclasses import replace
from typing import TypeVar

from omnirelay.config.routing import RoutingSettings
from omnirelay.domain import (
    Completion,
    CompletionRequest,
    GatewayEvent,
    Message,
    ProviderCall,
    Role,
    RouteChange,
    RouteInfo,
    RouteStart,
    StreamChunk,
    StreamDone,
    TextDelta,
    TextPart,
)
from omnirelay.errors import OmniRelayError, StreamInterruptedError, UpstreamError, UpstreamTimeoutError
from omnirelay.providers import tokenizer
from omnirelay.resilience.breaker import CircuitOpenError
from omnirelay.resilience.failures import counts_against_breaker, failure_class
from omnirelay.resilience.retry import RetryBudget
from omnirelay.routing.catalog import ModelCatalog
from omnirelay.routing.planner import Candidate, Plan
from omnirelay.routing.strategies import Strategy
from omnirelay.routing.trail import Trail

_T = TypeVar("_T")
_NEXT = -1.0  # a failure's verdict: try the next candidate (a delay >= 0 means: retry this one)


class Router:
    def __init__(
        self,
        catalog: ModelCatalog,
        strategies: dict[str, Strategy],
        budget: RetryBudget,
        settings: RoutingSettings,
    ) -> None:
        self.catalog = catalog
        self._strategies = strategies
        self._budget = budget
        self._recover = settings.stream_recovery == "continue"
        self._alpha = settings.latency_ewma_alpha

    def _verdict(
        self, plan: Plan, cand: Candidate, exc: UpstreamError, tries: int, deadline: float | None
    ) -> float:
        """After a failed attempt: seconds to wait before retrying it, or _NEXT; raises to end the call."""
        if counts_against_breaker(exc):
            cand.target.breaker.failed(exc)
        if exc.retryable:
            delay = cand.target.retry.delay(tries, exc.retry_after_seconds)
            if (
                delay is not None
                and (deadline is None or asyncio.get_running_loop().time() + delay < deadline)
                and self._budget.try_spend()
            ):
                return delay
        kind = failure_class(exc)
        if plan.allow_fallback and kind in cand.entry.fallback_on:
            if kind == "context_length":
                plan.min_window = max(cand.entry.context_window, 1)
            return _NEXT
        raise _StopError(exc)

    async def complete(self, request: CompletionRequest, deadline: float | None) -> Completion:
        """The whole answer within ``deadline`` (event-loop time; None: the model's default)."""
        started = time.perf_counter()
        plan = Plan(self.catalog, self._strategies, request, stream=False)
        self._budget.request()
        trail = Trail()
        if deadline is None and plan.primary.deadline_seconds is not None:
            deadline = asyncio.get_running_loop().time() + plan.primary.deadline_seconds
        try:
            if deadline is None:
                return await self._complete(plan, trail, started, None)
            async with asyncio.timeout_at(deadline):
                return await self._complete(plan, trail, started, deadline)
        except TimeoutError:
            raise trail.deadline(plan) from None
        except _StopError as stop:
            raise trail.final(stop.error) from None

    async def _complete(self, plan: Plan, trail: Trail, started: float, deadline: float | None) -> Completion:
        for cand in plan.candidates():
            target = cand.target
            tries = 0
            while True:
                tries += 1
                try:
                    target.breaker.admit()
                except CircuitOpenError:
                    trail.circuit_open(cand)
                    break
                stats = target.stats
                stats.in_flight += 1
                attempt_started = time.perf_counter()
                try:
                    limit = cand.entry.attempt_timeout_seconds
                    if limit is None:
                        result = await target.provider.complete(cand.call)
                    else:
                        result = await _bounded(target.provider.complete(cand.call), limit, cand)
                except UpstreamError as exc:
                    trail.failed(cand, exc, attempt_started)
                    delay = self._verdict(plan, cand, exc, tries, deadline)
                    if delay < 0:
                        break
                    await asyncio.sleep(delay)
                    continue
                finally:
                    stats.in_flight -= 1
                target.breaker.succeeded()
                now = time.perf_counter()
                stats.observe_ttft(now - attempt_started, self._alpha)
                route = trail.route(
                    plan, cand, started, attempt_started, now - started, result.upstream_request_id
                )
                return Completion(result, route)
        raise _StopError(trail.exhausted(plan))

    async def stream(
        self, request: CompletionRequest, deadline: float | None
    ) -> AsyncGenerator[GatewayEvent, None]:
        """RouteStart, the chunks (a RouteChange where a continuation took over), then StreamDone.

        Closing it early stops the upstream. ``deadline`` is the caller's; gRPC enforces it
        by cancelling the call, so only the model's default deadline is checked here.
        """
        started = time.perf_counter()
        plan = Plan(self.catalog, self._strategies, request, stream=True)
        self._budget.request()
        trail = Trail()
        loop = asyncio.get_running_loop()
        own_deadline = None
        if deadline is None and plan.primary.deadline_seconds is not None:
            own_deadline = loop.time() + plan.primary.deadline_seconds
        retry_deadline = deadline if deadline is not None else own_deadline
        delivered: _Delivered | None = None
        try:
            for cand in plan.candidates():
                target = cand.target
                tries = 0
                while True:
                    tries += 1
                    try:
                        target.breaker.admit()
                    except CircuitOpenError:
                        trail.circuit_open(cand)
                        break
                    call = cand.call if delivered is None else delivered.continuation(cand.call)
                    stats = target.stats
                    stats.in_flight += 1
                    attempt_started = time.perf_counter()
                    chunks = target.provider.stream(call)
                    sent = 0
                    try:
                        first = await _first(chunks, cand)
                        now = time.perf_counter()
                        stats.observe_ttft(now - attempt_started, self._alpha)
                        route = trail.route(plan, cand, started, attempt_started, now - started)
                        if delivered is None:
                            yield RouteStart(route, len(trail.records) + 1)
                            if self._recover:
                                delivered = _Delivered(route)
                        else:
                            yield RouteChange(
                                delivered.route, route, delivered.reason, len(trail.records) + 1
                            )
                            delivered.route = route
                        if first is not None:
                            sent = 1
                            if delivered is not None:
                                delivered.add(first)
                            yield first
                        async for chunk in chunks:
                            if own_deadline is not None and loop.time() > own_deadline:
                                raise _ExpiredError
                            sent += 1
                            if delivered is not None:
                                delivered.add(chunk)
                            yield chunk
                    except UpstreamError as exc:
                        trail.failed(cand, exc, attempt_started)
                        if sent and (delivered is None or not delivered.continuable()):
                            if counts_against_breaker(exc):
                                target.breaker.failed(exc)
                            raise _StopError(_interrupted(cand, exc, sent, delivered)) from None
                        if sent and delivered is not None:
                            delivered.reason = f"{target.deployment.name} failed mid-stream: {exc.reason}"
                        # Nothing (more) reached the caller from this attempt: retry or fall back unseen.
                        delay = self._verdict(plan, cand, exc, tries, retry_deadline)
                        if delay < 0:
                            break
                        await asyncio.sleep(delay)
                        continue
                    finally:
                        stats.in_flight -= 1
                        # Close the upstream now rather than at garbage collection, so a caller
                        # who left stops generation (and billing) at once.
                        await chunks.aclose()
                    target.breaker.succeeded()
                    final = trail.route(plan, cand, started, attempt_started, route.ttft_seconds)
                    yield StreamDone(final)
                    return
            raise _StopError(trail.exhausted(plan))
        except _ExpiredError:
            raise trail.deadline(plan) from None
        except _StopError as stop:
            raise trail.final(stop.error) from None


class _StopError(Exception):
    """Ends a routed call with ``error`` (the trail adds the attempts)."""

    def __init__(self, error: OmniRelayError) -> None:
        super().__init__(error.message)
        self.error = error


class _ExpiredError(Exception):
    """The model's default deadline passed mid-stream."""


async def _bounded(pending: Awaitable[_T], seconds: float, cand: Candidate) -> _T:
    try:
        async with asyncio.timeout(seconds):
            return await pending
    except TimeoutError:
        raise UpstreamTimeoutError(
            f"{cand.target.deployment.name} did not answer within {seconds:g}s (attempt_timeout_seconds)",
            provider=cand.target.deployment.provider,
        ) from None


async def _first(chunks: AsyncIterator[StreamChunk], cand: Candidate) -> StreamChunk | None:
    """The first chunk (None: the stream was empty), within the model's time-to-first-token bound."""
    limit = cand.entry.ttft_timeout_seconds
    try:
        if limit is None:
            return await anext(chunks)
        try:
            async with asyncio.timeout(limit):
                return await anext(chunks)
        except TimeoutError:
            raise UpstreamTimeoutError(
                f"no first token from {cand.target.deployment.name} within {limit:g}s",
                provider=cand.target.deployment.provider,
            ) from None
    except StopAsyncIteration:
        return None


class _Delivered:
    """What a stream already sent the caller, so a continuation neither repeats nor drops it."""

    __slots__ = ("other", "parts", "reason", "route")

    def __init__(self, route: RouteInfo) -> None:
        self.parts: list[str] = []
        self.other = False  # anything a text prefix cannot carry (tool calls, finishes, other choices)
        self.reason = ""
        self.route = route

    def add(self, chunk: StreamChunk) -> None:
        if type(chunk) is TextDelta and chunk.choice_index == 0 and not chunk.reasoning and not chunk.refusal:
            self.parts.append(chunk.text)
        else:
            self.other = True

    def continuable(self) -> bool:
        return not self.other

    def continuation(self, call: ProviderCall) -> ProviderCall:
        text = "".join(self.parts)
        request = call.request
        prefix = Message(Role.ASSISTANT, (TextPart(text),))
        sampling = call.sampling
        if sampling.max_tokens is not None:
            # The delivered text already used part of the caller's output budget.
            spent = tokenizer.count_text(text)
            sampling = replace(sampling, max_tokens=max(1, sampling.max_tokens - spent))
        return ProviderCall(replace(request, messages=(*request.messages, prefix)), sampling, call.deployment)


def _interrupted(
    cand: Candidate, exc: UpstreamError, sent: int, delivered: _Delivered | None
) -> StreamInterruptedError:
    why = (
        "it carried more than text a fallback could continue"
        if delivered is not None
        else 'routing.stream_recovery is "error"'
    )
    return StreamInterruptedError(
        f"the stream from {cand.target.deployment.name} ({cand.entry.name}) failed after {sent} chunks "
        f"reached the caller ({exc.reason}: {exc.message}); it was not resumed because {why}, and nothing "
        "was replayed. Retry the call to get a whole answer",
        delivered_chunks=sent,
        upstream_request_id=exc.upstream_request_id,
    )
