"""Running a plan: attempts, retries, fallback, breakers and deadlines, for unary calls and streams.

Per candidate deployment: the breaker admits (or the attempt is recorded as
circuit-open and skipped); a failure the provider marks retryable is retried on
the same deployment while its policy, the retry budget and the deadline allow
(the upstream's retry-after is a floor on the wait, never past the deadline);
then, if the failure's class is one the model falls back on, the next candidate
is tried; otherwise the error ends the call. A caller's cancel ends everything
at once: the awaited upstream request is closed by the cancellation itself.

Streams announce their route (RouteStart) as soon as the first attempt
starts, and are routed the same way until their first chunk: a failure before
anything was delivered moves on without an error, announced by a RouteChange
before any text. After chunks were delivered, ``stream_recovery`` decides:
``error`` ends the stream with STREAM_INTERRUPTED saying how much was
delivered; ``continue`` asks the next candidate to continue the delivered text
(sent as an assistant prefix), announced by a RouteChange. Nothing is replayed,
so nothing is duplicated.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from typing import TypeVar

from msgspec import structs

from omnirelay import loops
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
    TokenUsage,
    UsageChunk,
)
from omnirelay.errors import OmniRelayError, StreamInterruptedError, UpstreamError, UpstreamTimeoutError
from omnirelay.providers import tokenizer
from omnirelay.resilience.breaker import CircuitOpenError
from omnirelay.resilience.deadlines import DeadlineReaper
from omnirelay.resilience.failures import counts_against_breaker, failure_class
from omnirelay.resilience.retry import RetryBudget
from omnirelay.routing.catalog import ModelCatalog
from omnirelay.routing.planner import Candidate, Plan
from omnirelay.routing.strategies import Strategy
from omnirelay.routing.trail import Trail
from omnirelay.telemetry import spans
from omnirelay.telemetry.spans import AttemptTrace, CallTrace
from omnirelay.usage import tally as tallies
from omnirelay.usage.pricing import with_cost
from omnirelay.usage.tally import Meter, Tally

_T = TypeVar("_T")
_NEXT = -1.0  # a failure's verdict: try the next candidate (a delay >= 0 means: retry this one)


class Router:
    def __init__(
        self,
        catalog: ModelCatalog,
        strategies: dict[str, Strategy],
        budget: RetryBudget,
        settings: RoutingSettings,
        reaper: DeadlineReaper,
    ) -> None:
        self.catalog = catalog
        self._strategies = strategies
        self._budget = budget
        self._recover = settings.stream_recovery == "continue"
        self._reaper = reaper
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
                and (deadline is None or loops.running_loop().time() + delay < deadline)
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
        tally = tallies.current()
        tally.trail_records = trail.records
        try:
            if deadline is not None or plan.primary.deadline_seconds is None:
                # gRPC itself cancels the call at the caller's deadline (closing the upstream
                # request); the deadline here only keeps retries from sleeping past it.
                return await self._complete(plan, trail, tally, started, deadline)
            return await self._complete_by_default_deadline(plan, trail, tally, started)
        except _StopError as stop:
            raise trail.final(stop.error) from None

    async def _complete_by_default_deadline(
        self, plan: Plan, trail: Trail, tally: Tally, started: float
    ) -> Completion:
        assert plan.primary.deadline_seconds is not None
        own = loops.running_loop().time() + plan.primary.deadline_seconds
        try:
            return await self._reaper.run(own, self._complete(plan, trail, tally, started, own))
        except TimeoutError:
            raise trail.deadline(plan) from None

    async def _complete(
        self, plan: Plan, trail: Trail, tally: Tally, started: float, deadline: float | None
    ) -> Completion:
        trace = spans.current()
        for cand in plan.candidates():
            target = cand.target
            tries = 0
            if trace is not None and trail.records:
                _traced_fallback(trace, trail, cand)
            while True:
                tries += 1
                if not _admitted(cand, trail, trace):
                    break
                stats = target.stats
                stats.in_flight += 1
                attempt_started = time.perf_counter()
                trail.pending(cand, attempt_started)
                span = trace.attempt(target.deployment, len(trail.records) + 1) if trace is not None else None
                try:
                    limit = cand.entry.attempt_timeout_seconds
                    if limit is None:
                        result = await target.provider.complete(cand.call)
                    else:
                        result = await _bounded(target.provider.complete(cand.call), limit, cand)
                except UpstreamError as exc:
                    trail.failed(cand, exc, attempt_started)
                    if span is not None:
                        span.failed(_error_type(exc), exc.message)
                    delay = self._verdict(plan, cand, exc, tries, deadline)
                    if delay < 0:
                        break
                    if trace is not None:
                        trace.retry(target.deployment, len(trail.records) + 1, delay, _error_type(exc))
                    await asyncio.sleep(delay)
                    continue
                except asyncio.CancelledError:
                    if span is not None:
                        span.failed("cancelled", "the caller left before the attempt finished")
                    # The prompt was sent and may have been processed: bill it, estimated.
                    tally.cut_short(
                        cand.entry.name, target.deployment, attempt_started, _prompt_estimate(cand)
                    )
                    raise
                finally:
                    stats.in_flight -= 1
                target.breaker.succeeded()
                now = time.perf_counter()
                stats.observe_ttft(now - attempt_started, self._alpha)
                route = trail.route(
                    plan, cand, started, attempt_started, now - started, result.upstream_request_id
                )
                billed = with_cost(result.usage, target.price)
                usage = tally.served(route, billed)
                if usage is not result.usage:
                    result = structs.replace(result, usage=usage)
                if span is not None:
                    finishes = tuple(c.finish_reason.value for c in result.choices)
                    span.succeeded(
                        billed, target.deployment.provider_model, finishes, result.upstream_request_id
                    )
                return Completion(result, route)
        raise _StopError(trail.exhausted(plan))

    async def stream(
        self, request: CompletionRequest, deadline: float | None
    ) -> AsyncGenerator[GatewayEvent, None]:
        """RouteStart, the chunks (a RouteChange where a continuation took over), then StreamDone.

        Closing it early stops the upstream. ``deadline`` (event-loop time) only keeps retries
        from sleeping past it: the caller of this generator enforces it (gRPC cancels at the
        caller's deadline; the stream service applies ``default_deadline`` when there is none),
        so no per-chunk clock check is needed here.
        """
        started = time.perf_counter()
        plan = Plan(self.catalog, self._strategies, request, stream=True)
        self._budget.request()
        trail = Trail()
        tally = tallies.current()
        tally.trail_records = trail.records
        # Only continue mode remembers the delivered text; error mode never needs it.
        delivered = _Delivered() if self._recover else None
        announced: RouteInfo | None = None  # the route the caller was last told about
        reason = ""
        trace = spans.current()
        span: AttemptTrace | None = None
        try:
            for cand in plan.candidates():
                target = cand.target
                tries = 0
                if trace is not None and trail.records:
                    _traced_fallback(trace, trail, cand)
                while True:
                    tries += 1
                    if not _admitted(cand, trail, trace):
                        break
                    attempt_started = time.perf_counter()
                    route = trail.route(plan, cand, started, attempt_started, None)
                    # The route is announced before the upstream answers, so the caller knows at once
                    # that its call is being served; a later move is a RouteChange.
                    if announced is None:
                        yield RouteStart(route, len(trail.records) + 1)
                    elif announced.deployment != route.deployment:
                        yield RouteChange(announced, route, reason, len(trail.records) + 1)
                    announced = route
                    call = cand.call
                    if delivered is not None and delivered.chunks:
                        call = delivered.continuation(call)
                    stats = target.stats
                    stats.in_flight += 1
                    if trace is not None:
                        span = trace.attempt(target.deployment, len(trail.records) + 1)
                    chunks = target.provider.stream(call)
                    meter = Meter(call.request.messages, target.price, tally)
                    see = meter.see
                    sent = 0
                    ended = False  # the attempt finished or failed (else the caller left during it)
                    try:
                        first = await _first(chunks, cand)
                        now = time.perf_counter()
                        stats.observe_ttft(now - attempt_started, self._alpha)
                        ttft = now - started
                        if first is not None:
                            sent = 1
                            if tally.ttft is None:
                                tally.ttft = ttft
                            yield see(first) if delivered is None else delivered.add(see(first))
                        if delivered is None:
                            async for chunk in chunks:
                                sent += 1
                                yield see(chunk)
                        else:
                            async for chunk in chunks:
                                sent += 1
                                yield delivered.add(see(chunk))
                        ended = True
                    except UpstreamError as exc:
                        ended = True
                        trail.failed(cand, exc, attempt_started)
                        if span is not None:
                            span.failed(_error_type(exc), exc.message)
                            span = None
                        if sent:
                            # Output reached the caller: the provider billed it, so does the ledger.
                            tally.bill_failed(len(trail.records) - 1, meter.estimate())
                        if sent and (delivered is None or not delivered.continuable()):
                            if counts_against_breaker(exc):
                                target.breaker.failed(exc)
                            raise _StopError(_interrupted(cand, exc, sent, delivered)) from None
                        when = "mid-stream" if sent else "before its first token"
                        reason = f"{target.deployment.name} failed {when}: {exc.reason}"
                        # Nothing (more) reached the caller from this attempt: retry or fall back.
                        delay = self._verdict(plan, cand, exc, tries, deadline)
                        if delay < 0:
                            break
                        if trace is not None:
                            trace.retry(target.deployment, len(trail.records) + 1, delay, _error_type(exc))
                        await asyncio.sleep(delay)
                        continue
                    finally:
                        stats.in_flight -= 1
                        meter.close()
                        if not ended:
                            if span is not None:
                                span.failed("cancelled", "the caller left before the attempt finished")
                                span = None
                            tally.cut_short(
                                cand.entry.name, target.deployment, attempt_started, meter.estimate()
                            )
                        # Close the upstream now rather than at garbage collection, so a caller
                        # who left stops generation (and billing) at once.
                        await chunks.aclose()
                    target.breaker.succeeded()
                    done = trail.route(plan, cand, started, attempt_started, ttft)
                    billed = meter.reported
                    if billed is None:
                        # The provider never said what the stream used: the caller still gets a
                        # usage event, an estimate from what was delivered, and says so.
                        billed = meter.estimate()
                        yield UsageChunk(tally.combined(billed))
                    tally.served(done, billed)
                    if span is not None:
                        tally.finish_reasons = meter.finishes
                        span.succeeded(billed, target.deployment.provider_model, meter.finishes, "")
                        span = None
                    yield StreamDone(done)
                    return
            raise _StopError(trail.exhausted(plan))
        except _StopError as stop:
            error = stop.error
            if delivered is not None and delivered.chunks and not isinstance(error, StreamInterruptedError):
                # Continue mode found nothing to continue with: the caller still has a partial
                # answer, and must hear so in the same terms as in error mode.
                error = StreamInterruptedError(
                    f"the stream failed after {delivered.chunks} chunks reached the caller and no "
                    f"fallback could continue it ({error.reason}: {error.message}); nothing was replayed. "
                    "Retry the call to get a whole answer",
                    delivered_chunks=delivered.chunks,
                )
            raise trail.final(error) from None

    def default_deadline(self, model: str) -> float | None:
        """Event-loop time the model's default deadline ends at, for a call that set none."""
        seconds = self.catalog.resolve(model).deadline_seconds
        return None if seconds is None else loops.running_loop().time() + seconds


def _prompt_estimate(cand: Candidate) -> TokenUsage:
    usage = TokenUsage(input_tokens=tokenizer.count_messages(cand.call.request.messages), estimated=True)
    return with_cost(usage, cand.target.price)


def _admitted(cand: Candidate, trail: Trail, trace: CallTrace | None) -> bool:
    """Does the deployment's breaker let this attempt through? An open one is recorded, not called."""
    try:
        cand.target.breaker.admit()
    except CircuitOpenError:
        trail.circuit_open(cand)
        if trace is not None:
            trace.breaker_rejected(cand.target.deployment)
        return False
    return True


def _error_type(exc: UpstreamError) -> str:
    """A span's ``error.type``: the failure class, or the error's class for never-retried ones."""
    return failure_class(exc) or type(exc).__name__


def _traced_fallback(trace: CallTrace, trail: Trail, cand: Candidate) -> None:
    previous = trail.records[-1].deployment.name
    if previous != cand.target.deployment.name:
        trace.fallback(previous, cand.target.deployment, cand.entry.name)


class _StopError(Exception):
    """Ends a routed call with ``error`` (the trail adds the attempts)."""

    def __init__(self, error: OmniRelayError) -> None:
        super().__init__(error.message)
        self.error = error


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

    __slots__ = ("chunks", "other", "parts", "prefix_tokens")

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.chunks = 0
        self.other = False  # anything a text prefix cannot carry (tool calls, finishes, other choices)
        self.prefix_tokens = 0

    def add(self, chunk: StreamChunk) -> StreamChunk:
        """Note a chunk on its way to the caller; returns the chunk to send."""
        self.chunks += 1
        if isinstance(chunk, TextDelta):
            if chunk.choice_index == 0 and not chunk.reasoning and not chunk.refusal:
                self.parts.append(chunk.text)
            else:
                self.other = True
        elif isinstance(chunk, UsageChunk):
            # The abandoned attempts' estimated bills were added to it already (the tally).
            return chunk
        else:
            # Tool calls cannot be continued as text, and a finished choice has nothing to continue.
            self.other = True
        return chunk

    def continuable(self) -> bool:
        return not self.other

    def continuation(self, call: ProviderCall) -> ProviderCall:
        text = "".join(self.parts)
        request = call.request
        prefix = Message(Role.ASSISTANT, (TextPart(text),))
        sampling = call.sampling
        self.prefix_tokens = tokenizer.count_text(text)
        if sampling.max_tokens is not None:
            # The delivered text already used part of the caller's output budget.
            sampling = structs.replace(sampling, max_tokens=max(1, sampling.max_tokens - self.prefix_tokens))
        return ProviderCall(
            structs.replace(request, messages=(*request.messages, prefix)), sampling, call.deployment
        )


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
