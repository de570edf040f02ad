"""One call's usage as it happens, turned into its ``UsageRecord`` when the call is over.

The usage layer opens a ``Tally`` per call and makes it current (a context
variable, so the router and the cache find it without being handed it, and a
cache flight's task, started inside the call, inherits it). The router bills
each attempt with its cost; a stream's ``Meter`` counts what was delivered so
an attempt that ends without the provider's usage report (a cancel, a broken
stream) is billed on an estimate. The record is written once, when the call
and every flight it holds have finished: a leader that leaves a shared cache
flight still gets the flight's upstream cost on its record.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING

from omnirelay.domain import (
    AttemptRecord,
    Deployment,
    FinishChunk,
    Message,
    RouteInfo,
    StreamChunk,
    TextDelta,
    TokenUsage,
    ToolCallDelta,
    UsageChunk,
)
from omnirelay.providers import tokenizer
from omnirelay.usage.pricing import Price, with_cost
from omnirelay.usage.records import NO_USAGE, BilledAttempt, UsageRecord

if TYPE_CHECKING:
    from omnirelay.telemetry.spans import CallTrace

_NO_USAGE = NO_USAGE
_ANSWERED = frozenset(("hit", "coalesced"))
# Delivered text is folded into a token count every this many pieces: the count stays close to
# what one pass over the whole text gives, and a long stream holds only a few strings.
_FOLD = 64


def add(a: TokenUsage, b: TokenUsage) -> TokenUsage:
    # The common case, one billed attempt, allocates nothing.
    if a is _NO_USAGE:
        return b
    if b is _NO_USAGE:
        return a
    return TokenUsage(
        a.input_tokens + b.input_tokens,
        a.output_tokens + b.output_tokens,
        a.cached_input_tokens + b.cached_input_tokens,
        a.reasoning_tokens + b.reasoning_tokens,
        a.estimated or b.estimated,
        a.cache_write_input_tokens + b.cache_write_input_tokens,
        a.cost_micros + b.cost_micros,
    )


class Tally:
    """Facts of one call. Mutable on purpose: the call's layers fill it in as they learn them."""

    __slots__ = (
        "_billed",
        "_done",
        "_extra",
        "_holds",
        "_sink",
        "admission",
        "cache",
        "deployment",
        "fallback_used",
        "finish_reasons",
        "model",
        "output",
        "project",
        "prompt",
        "provider",
        "request_id",
        "requested_model",
        "started",
        "started_wall",
        "status_code",
        "streamed",
        "tags",
        "trace",
        "trace_id",
        "trail_records",
        "ttft",
        "usage",
        "user",
    )

    def __init__(
        self,
        sink: Callable[[Tally], None],
        request_id: str,
        requested_model: str,
        streamed: bool,
        trace_id: str = "",
    ) -> None:
        self._sink = sink
        self.request_id = request_id
        self.requested_model = requested_model
        self.streamed = streamed
        self.trace_id = trace_id
        # Caller attribution, set by the usage layer when the request carries one.
        self.project = ""
        self.user = ""
        self.tags: tuple[tuple[str, str], ...] = ()
        self.started_wall = time.time()
        self.started = time.perf_counter()
        self.status_code = 0
        self.cache = ""
        self.model = ""
        self.provider = ""
        self.deployment = ""  # the serving deployment's name ("" until one served)
        self.usage = _NO_USAGE  # the serving attempt's (cost included)
        self.ttft: float | None = None
        self.fallback_used = False
        self.admission: object | None = None  # the budget admission to settle (the usage layer's)
        # The router's attempt records (failed ones), and what each of them billed, by index.
        self.trail_records: Sequence[AttemptRecord] = ()  # the router's list, once it routes
        self._billed: dict[int, TokenUsage] | None = None  # made by the first bill_failed
        self._extra: BilledAttempt | None = None  # an attempt the caller's leaving cut short
        self._holds = 1  # the call itself; a cache flight it leads holds it too
        self._done = False
        # Telemetry: the call's span (tracing on), how its choices finished, and its prompt and
        # completion text (content logging or tracing on: ``output`` is then a list).
        self.trace: CallTrace | None = None
        self.finish_reasons: tuple[str, ...] = ()
        self.prompt = ""
        self.output: list[str] | None = None

    # --- the router ---------------------------------------------------------------------------

    def bill_failed(self, index: int, usage: TokenUsage) -> None:
        """Tokens an attempt that failed after delivering output consumed (``trail_records[index]``)."""
        if self._billed is None:
            self._billed = {}
        self._billed[index] = usage

    def served(self, route: RouteInfo, usage: TokenUsage) -> TokenUsage:
        """The serving attempt finished with ``usage`` (cost included); returns the call's total."""
        self.model = route.resolved_model
        self.provider = route.deployment.provider
        self.deployment = route.deployment.name
        self.fallback_used = route.fallback_used
        self.usage = usage
        return self.combined(usage)

    def combined(self, usage: TokenUsage) -> TokenUsage:
        """``usage`` plus what the call's earlier, failed attempts billed (a continued stream)."""
        if not self._billed:
            return usage
        total = usage
        for billed in self._billed.values():
            total = add(total, billed)
        return total

    def cut_short(self, model: str, deployment: Deployment, started: float, usage: TokenUsage) -> None:
        """The caller left during an attempt: bill what it had delivered (estimated)."""
        self._extra = BilledAttempt(
            model,
            deployment.provider,
            deployment.name,
            "cancelled",
            "the caller left before the attempt finished",
            time.perf_counter() - started,
            usage=usage,
        )

    # --- the cache ----------------------------------------------------------------------------

    def answered_from_cache(
        self, outcome: str, model: str, provider: str, deployment: str, usage: TokenUsage
    ) -> None:
        self.cache = outcome
        self.model = model
        self.provider = provider
        self.deployment = deployment
        self.usage = usage  # tokens of the answer; its cost is nothing, the saving is priced later

    # --- the end ------------------------------------------------------------------------------

    def hold(self) -> None:
        self._holds += 1

    def release(self) -> None:
        """One holder is done; the record is made when the last one is."""
        self._holds -= 1
        if self._holds == 0 and not self._done:
            self._done = True
            self._sink(self)

    @property
    def latency(self) -> float:
        return time.perf_counter() - self.started

    def record(
        self, record_id: str, price_table_version: str, ended: float, saved_price: Price | None
    ) -> UsageRecord:
        """The call's record; ``saved_price`` prices a cache answer's tokens as the saving."""
        answered = self.cache_answered
        if not self.trail_records and self._extra is None and self.deployment and not answered:
            # The common case, one attempt that succeeded: nothing to sum.
            attempts: tuple[BilledAttempt, ...] = (
                BilledAttempt(self.model, self.provider, self.deployment, "success", usage=self.usage),
            )
            total = self.usage
        else:
            attempts, total = self._attempts(answered)
        last = attempts[-1] if attempts else None
        saved = saved_price.cost_micros(self.usage) if answered and saved_price is not None else 0
        streamed = self.streamed
        return UsageRecord(
            record_id,
            self.request_id,
            self.started_wall,
            self.requested_model,
            self.status_code,
            self.trace_id,
            self.project,
            self.user,
            self.tags,
            "",  # tenant: set once authentication exists
            self.model or (last.model if last is not None else ""),
            self.provider or (last.provider if last is not None else ""),
            self.deployment or (last.deployment if last is not None else ""),
            attempts,
            total,
            price_table_version,
            ended - self.started,
            self.ttft,
            self.cache,
            saved,
            streamed,
            self.fallback_used,
            "stream" if streamed else "complete",
        )

    def _attempts(self, answered: bool) -> tuple[tuple[BilledAttempt, ...], TokenUsage]:
        attempts: list[BilledAttempt] = []
        total = _NO_USAGE
        bills = self._billed or {}
        for i, r in enumerate(self.trail_records):
            billed = bills.get(i, _NO_USAGE)
            total = add(total, billed)
            attempts.append(_billed_attempt(r, billed))
        if answered:
            # A cache answer's tokens are recorded, its cost is nothing: no attempt was made.
            total = self.usage.costing(0)
        elif self.deployment:
            attempts.append(
                BilledAttempt(self.model, self.provider, self.deployment, "success", usage=self.usage)
            )
            total = add(total, self.usage)
        if self._extra is not None:
            attempts.append(self._extra)
            total = add(total, self._extra.usage)
        return tuple(attempts), total

    @property
    def cache_answered(self) -> bool:
        return self.cache in _ANSWERED


def _billed_attempt(r: AttemptRecord, usage: TokenUsage) -> BilledAttempt:
    return BilledAttempt(
        r.model,
        r.deployment.provider,
        r.deployment.name,
        r.outcome.value,
        r.detail,
        r.latency_seconds,
        r.upstream_request_id,
        usage,
    )


class Meter:
    """What one streamed attempt delivered: its provider's usage report, or enough to estimate it."""

    __slots__ = ("_messages", "_output", "_parts", "_price", "_tally", "_tokens", "finishes", "reported")

    def __init__(self, messages: tuple[Message, ...], price: Price | None, tally: Tally) -> None:
        self._messages = messages
        self._price = price
        self._tally = tally
        self._parts: list[str] = []
        self._tokens = 0
        self.reported: TokenUsage | None = None
        self.finishes: tuple[str, ...] = ()
        # Content capture (off by default) keeps the delivered text; ``see`` stays the same.
        self._output = tally.output

    def see(self, chunk: StreamChunk) -> StreamChunk:
        """Note a chunk on its way out; a usage report comes back with its cost filled in."""
        kind = type(chunk)
        if kind is TextDelta:
            parts = self._parts
            parts.append(chunk.text)  # type: ignore[union-attr]
            if chunk.reasoning:  # type: ignore[union-attr]
                parts.append(chunk.reasoning)  # type: ignore[union-attr]
            if len(parts) >= _FOLD:
                self._fold()
        elif kind is UsageChunk:
            usage = with_cost(chunk.usage, self._price)  # type: ignore[union-attr]
            self.reported = usage
            total = self._tally.combined(usage)
            if total is not chunk.usage:  # type: ignore[union-attr]
                return UsageChunk(total)
        elif kind is ToolCallDelta:
            self._parts.append(chunk.name)  # type: ignore[union-attr]
            self._parts.append(chunk.arguments_delta)  # type: ignore[union-attr]
        elif kind is FinishChunk:
            self.finishes = (*self.finishes, chunk.reason.value)  # type: ignore[union-attr]
        return chunk

    def _fold(self) -> None:
        if self._output is not None:
            self._output.extend(self._parts)
        self._tokens += tokenizer.count_text(" ".join(self._parts))
        self._parts.clear()

    def close(self) -> None:
        """The attempt is over: captured content (if any) takes what was not folded yet."""
        if self._output is not None:
            self._output.extend(self._parts)
            self._output = None  # the parts stay: an estimate may still count them

    def estimate(self) -> TokenUsage:
        """The attempt's tokens when the provider never reported them: prompt and delivered output."""
        if self.reported is not None:
            return self.reported
        if self._parts:
            self._fold()
        usage = TokenUsage(
            input_tokens=tokenizer.count_messages(self._messages),
            output_tokens=self._tokens,
            estimated=True,
        )
        return with_cost(usage, self._price)


class _NullTally(Tally):
    """For calls made outside the usage layer (tests driving the router directly): nothing is kept."""

    __slots__ = ()

    def bill_failed(self, index: int, usage: TokenUsage) -> None:
        pass

    def served(self, route: RouteInfo, usage: TokenUsage) -> TokenUsage:
        return usage

    def cut_short(self, model: str, deployment: Deployment, started: float, usage: TokenUsage) -> None:
        pass

    def answered_from_cache(
        self, outcome: str, model: str, provider: str, deployment: str, usage: TokenUsage
    ) -> None:
        pass

    def hold(self) -> None:
        pass

    def release(self) -> None:
        pass


NULL_TALLY: Tally = _NullTally(lambda _: None, "", "", False)
_current: ContextVar[Tally] = ContextVar("omnirelay_tally", default=NULL_TALLY)


def current() -> Tally:
    return _current.get()


def make_current(tally: Tally) -> None:
    _current.set(tally)
