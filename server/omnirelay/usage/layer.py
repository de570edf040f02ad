"""Usage as a layer around Complete and StreamComplete: budget admission, then exactly one record.

``UsageLayer.guard`` wraps the two completion handlers once at registration
(outside the cache, inside the edge), so every call is seen whatever serves it:
upstream, the cache, a coalesced flight, or nobody (a refusal, a failure, a
cancel). Per call: a ``Tally`` is opened and made current; matching budgets
admit the call (RESOURCE_EXHAUSTED when spent); the handler runs; the final
status is noted; and when the call and any flight it leads are over, the tally
becomes a ``UsageRecord`` handed to the recorder (a deque append, no I/O) and
the call's cost is settled against its budgets. Records are made, and told to
the metrics and the request log, in batches of the calls that ended within
``BATCH_SECONDS`` (at once for a call with a budget to settle or a span to end).

With no budgets defined the only per-call work is the tally and the record.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, cast

import grpc
from grpc import aio

from omnirelay.errors import FieldViolation, OmniRelayError
from omnirelay.interceptors.edge import current_request_id, current_trace_id, new_id
from omnirelay.providers import tokenizer
from omnirelay.routing.catalog import ModelCatalog
from omnirelay.services import convert
from omnirelay.telemetry import content
from omnirelay.telemetry.spans import SpanSource
from omnirelay.usage.budgets import Admission, BudgetBook
from omnirelay.usage.pricing import PriceTable
from omnirelay.usage.records import UsageRecord
from omnirelay.usage.tally import Tally, make_current
from omnirelay_client.v1 import completion_pb2

log = logging.getLogger("omnirelay.usage")
Context = aio.ServicerContext[Any, Any]
_CANCELLED = grpc.StatusCode.CANCELLED.value[0]
_DEADLINE = grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
_INTERNAL = grpc.StatusCode.INTERNAL.value[0]
# Ended calls are recorded, counted and logged in batches at most this long after they end: a
# batch costs a busy server less than the same work done at the end of each call, between gRPC's
# work (the code and data stay in the CPU's caches), and the call returns sooner.
BATCH_SECONDS = 0.02
# Reserve mode, for a request that sets no max_tokens and a model that states no limit.
_DEFAULT_MAX_OUTPUT = 4096


Handler = Callable[[Any, Context], Awaitable[Any]]


class RecordSink(Protocol):
    def submit(self, record: UsageRecord) -> None: ...


class CallObserver(Protocol):
    """Told of every finished call (metrics, the request log); ``completion`` is None unless captured."""

    def observe(self, record: UsageRecord, prompt: str, completion: str | None) -> None: ...


class UsageLayer:
    """``sink`` None: nothing is recorded (usage off) but observers and spans still see every call."""

    def __init__(
        self,
        sink: RecordSink | None,
        prices: PriceTable,
        catalog: ModelCatalog,
        budgets: BudgetBook,
        observers: Sequence[CallObserver] = (),
        spans: SpanSource | None = None,
        capture: bool = False,
    ) -> None:
        self._sink = sink
        self._prices = prices
        self._catalog = catalog
        self.budgets = budgets
        self._observers = tuple(observers)
        self._spans = spans
        # Prompts and completions are kept only when content logging or tracing asks for them.
        self._capture = capture
        self._settling: set[asyncio.Task[None]] = set()
        # Calls that ended, with when, waiting to be recorded and reported together.
        self._ended: list[tuple[Tally, float]] = []

    # --- wiring ---------------------------------------------------------------------------

    def guard(self, completion: Any, stream: Any) -> None:
        """Wrap ``completion.Complete`` and ``stream.StreamComplete`` (instance attributes win)."""
        completion.Complete = self._wrap(completion.Complete, streamed=False)
        stream.StreamComplete = self._wrap(stream.StreamComplete, streamed=True)

    def _wrap(self, inner: Handler, *, streamed: bool) -> Handler:
        budgets = self.budgets
        # A unary answer's finish reasons and text, for its span and content capture.
        answer_facts = not streamed and (self._spans is not None or self._capture)

        async def handler(request: Any, context: Context) -> Any:
            # A StreamComplete request holds the CompleteRequest the usage is about.
            body = request.request if streamed else request
            tally = self._open(body, streamed=streamed)
            try:
                # No budget defined (the common case): no admission step at all.
                if budgets.defined:
                    await self._admit(tally, body)
                response = await inner(request, context)
                if answer_facts:
                    tally.finish_reasons = content.finish_reasons(response)
                    if tally.output is not None:
                        tally.output.append(content.response_text(response))
                return response
            except BaseException as exc:
                tally.status_code = _status(exc, context)
                raise
            finally:
                tally.release()

        return handler

    def _open(self, request: completion_pb2.CompleteRequest, *, streamed: bool) -> Tally:
        # The record's id is made with the record, in the batch, not on the call's path.
        tally = Tally(self._finish, current_request_id(), request.model, streamed, current_trace_id())
        # Reading an unset sub-message still builds it: most calls carry no attribution.
        if request.HasField("attribution"):
            attribution = request.attribution
            tally.project = attribution.project
            tally.user = attribution.user
            tags = attribution.tags
            if tags:
                tally.tags = tuple(sorted(tags.items()))
        make_current(tally)
        if self._spans is not None:
            tally.trace = self._spans.begin(request, streamed)
        if self._capture:
            tally.output = []
            tally.prompt = "\n".join(f"{role}: {text}" for role, text in content.prompt_messages(request))
        return tally

    # --- budgets --------------------------------------------------------------------------

    async def _admit(self, tally: Tally, request: completion_pb2.CompleteRequest) -> None:
        budgets = self.budgets
        try:
            model = self._catalog.resolve(request.model).name
        except OmniRelayError:
            model = request.model  # the handler reports the bad name; budgets by model cannot match
        matching = budgets.matching(tally.project, tally.user, model, tally.tags)
        if not matching:
            return
        reserve = self._max_cost(request) if any(b.reserve for b in matching) else 0
        tally.admission = await budgets.admit(matching, reserve)

    def _max_cost(self, request: completion_pb2.CompleteRequest) -> int:
        """The most the call can cost at the dearest deployment of its model (0 when unpriced)."""
        try:
            entry = self._catalog.resolve(request.model)
        except OmniRelayError:
            return 0
        prices = [t.price for t in entry.targets if t.price is not None]
        if not prices:
            return 0
        bad: list[FieldViolation] = []
        prompt = tokenizer.count_messages(convert.messages_from(request.messages, bad, required=False))
        limit = entry.settings.max_output_tokens if entry.settings is not None else _DEFAULT_MAX_OUTPUT
        sampling = request.sampling
        wanted = sampling.max_tokens if sampling.HasField("max_tokens") else limit
        output = min(wanted, limit) if limit else wanted
        return max(p.max_cost_micros(prompt, output) for p in prices)

    # --- the end --------------------------------------------------------------------------

    def _finish(self, tally: Tally) -> None:
        ended = time.perf_counter()
        if tally.admission is not None or tally.trace is not None:
            # A budget to settle, or a span to end: now, not a batch later.
            self._conclude(tally, ended)
            return
        batch = self._ended
        batch.append((tally, ended))
        if len(batch) == 1:
            asyncio.get_running_loop().call_later(BATCH_SECONDS, self.conclude_ended)

    def conclude_ended(self) -> None:
        """Record and report the calls that ended since the last batch (the recorder's flush and
        the metrics scrape call this first, so they never miss a call that has ended)."""
        batch = self._ended
        if not batch:
            return
        self._ended = []
        for tally, ended in batch:
            # In a timer, not a call: a failure must cost neither the call nor the batch's others.
            try:
                self._conclude(tally, ended)
            except Exception:
                log.exception("usage record of request %s could not be made", tally.request_id)

    def _conclude(self, tally: Tally, ended: float) -> None:
        saved_price = self._prices.price(tally.model, tally.deployment) if tally.cache_answered else None
        record = tally.record(new_id(), self._prices.version, ended, saved_price)
        if self._sink is not None:
            self._sink.submit(record)
        if self._observers or tally.trace is not None:
            self._tell(tally, record)
        admission = tally.admission
        if admission is not None:
            task = asyncio.get_running_loop().create_task(self._settle(cast(Admission, admission), record))
            self._settling.add(task)
            task.add_done_callback(self._settling.discard)

    def _tell(self, tally: Tally, record: UsageRecord) -> None:
        completion = "".join(tally.output) if tally.output is not None else None
        # Telemetry must never fail a call that has already been answered.
        try:
            for observer in self._observers:
                observer.observe(record, tally.prompt, completion)
            if tally.trace is not None:
                tally.trace.end(record, tally.finish_reasons, completion)
        except Exception:
            log.exception("telemetry for request %s failed", record.request_id)

    async def _settle(self, admission: Admission, record: UsageRecord) -> None:
        try:
            await self.budgets.settle(admission, record.usage.cost_micros)
        except Exception as exc:  # the record is kept either way; the counter catches up at restart
            log.warning("budget settlement for record %s failed: %s", record.record_id, type(exc).__name__)

    async def drain(self, within_seconds: float = 5.0) -> int:
        """Conclude the ended calls, then wait (bounded) for budget settlements in progress; returns
        how many did not finish."""
        self.conclude_ended()
        pending = set(self._settling)
        if not pending:
            return 0
        _, late = await asyncio.wait(pending, timeout=within_seconds)
        return len(late)


def _status(exc: BaseException, context: Context) -> int:
    if isinstance(exc, OmniRelayError):
        code: int = exc.code.value[0]
        return code
    if isinstance(exc, asyncio.CancelledError):
        remaining = context.time_remaining()
        return _DEADLINE if remaining is not None and remaining <= 0 else _CANCELLED
    if isinstance(exc, aio.AbortError):
        found = context.code()
        return found.value[0] if isinstance(found, grpc.StatusCode) else _INTERNAL
    return _INTERNAL
