"""The budget book: which budgets a call falls under, whether it may run, and what it spent.

A call goes through three steps::

    matching = book.matching(project, user, model, tags)   # sync, no I/O
    admission = await book.admit(matching, reserve_micros)  # may raise ResourceExhaustedError
    ...the call runs...
    await book.settle(admission, cost_micros)                # always, once; 0 if nothing was billed

Spend lives in ``SpendCounters`` under ``<budget id>:<period key>``, so a new
period starts at zero by itself. A plain budget refuses once spend has reached
its limit; calls in flight at that moment still complete, so it may overshoot by
what they cost. A ``reserve`` budget adds each call's ``reserve_micros`` to its
counter at admission (and refuses if that would pass the limit), and settlement
replaces the reservation with the real cost: concurrent calls cannot jointly pass
the limit as long as none costs more than it reserved.

Counter failures fail open: a call is admitted, settlement is skipped with a
warning, and the ledger (which every call is recorded in) remains the truth that
``seed_from`` restores from. A budget guards spend; it should not turn a Redis
outage into a gateway outage.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from omnirelay.errors import QuotaViolation, ResourceExhaustedError
from omnirelay.usage.alerts import AlertSink, ThresholdEvent
from omnirelay.usage.counters import SpendCounters
from omnirelay.usage.ledger import BudgetSpec
from omnirelay.usage.periods import PeriodWindow, check_period, current_window, iso_utc

log = logging.getLogger("omnirelay.budgets")

# Counters outlive their period by this much: a call admitted just before the end
# settles after it, and replicas' clocks differ by a little.
EXPIRY_GRACE_SECONDS = 3600.0

Tags = Mapping[str, str] | Sequence[tuple[str, str]]
SpendSince = Callable[[BudgetSpec, float | None], Awaitable[int]]

_NO_BUDGETS: tuple[BudgetSpec, ...] = ()


@dataclass(frozen=True, slots=True)
class Hold:
    """One budget's part in an admission: the period it was admitted in and what it reserved."""

    spec: BudgetSpec
    window: PeriodWindow
    key: str
    reserved_micros: int = 0


@dataclass(frozen=True, slots=True)
class Admission:
    """What ``admit`` decided for one call; pass it to ``settle`` exactly once."""

    holds: tuple[Hold, ...] = ()

    @property
    def reserved_micros(self) -> int:
        return sum(hold.reserved_micros for hold in self.holds)


NO_ADMISSION = Admission()


def validate(specs: Sequence[BudgetSpec]) -> None:
    """Raise ValueError naming the budget and the field for the first definition that is not usable."""
    seen: set[str] = set()
    for spec in specs:
        if not spec.id:
            raise ValueError("a budget needs an id")
        if spec.id in seen:
            raise ValueError(f"budget {spec.id!r} is defined twice")
        seen.add(spec.id)
        try:
            check_period(spec.period)
        except ValueError as exc:
            raise ValueError(f"budget {spec.id!r}: {exc}") from None
        if spec.limit_micros < 0:
            raise ValueError(
                f"budget {spec.id!r}: limit_micros must not be negative, not {spec.limit_micros}"
            )
        bad = [t for t in spec.thresholds if not 0 < t <= 1]
        if bad:
            raise ValueError(
                f"budget {spec.id!r}: thresholds must be fractions in (0, 1], not {', '.join(map(str, bad))}"
            )


def usd(micros: int) -> str:
    """Micro-USD for people: cents when that is exact, otherwise as many digits as it takes."""
    sign = "-" if micros < 0 else ""
    whole, rest = divmod(abs(micros), 1_000_000)
    if rest % 10_000 == 0:
        return f"{sign}${whole:,}.{rest // 10_000:02d}"
    return f"{sign}${whole:,}.{rest:06d}".rstrip("0")


@dataclass(frozen=True, slots=True)
class _Compiled:
    spec: BudgetSpec
    tags: tuple[tuple[str, str], ...]


class BudgetBook:
    """Budget definitions plus their spend counters; see the module docstring for the call protocol."""

    def __init__(
        self,
        specs: Sequence[BudgetSpec],
        counters: SpendCounters,
        alerts: AlertSink | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._counters = counters
        self._alerts = alerts
        self._clock = clock
        self._compiled: tuple[_Compiled, ...] = ()
        self._specs: tuple[BudgetSpec, ...] = ()
        # Thresholds known to be announced already (here or on another replica), per budget
        # and period, so settling does not ask the counters again on every call.
        self._announced: dict[str, tuple[str, set[float]]] = {}
        self._counters_failing = False
        self.replace(specs)

    # --- definitions ---------------------------------------------------------------------------

    def replace(self, specs: Sequence[BudgetSpec]) -> None:
        """Swap in new definitions (SetBudget/DeleteBudget); spend of unchanged ids carries on."""
        validate(specs)
        self._specs = tuple(specs)
        # Read on every call by the usage layer: an attribute, not a method call.
        self.defined = bool(self._specs)
        # One assignment: a request running matching() sees the old set or the new, never half.
        self._compiled = tuple(_Compiled(spec, tuple(spec.scope.tags)) for spec in self._specs)
        ids = {spec.id for spec in self._specs}
        self._announced = {k: v for k, v in self._announced.items() if k in ids}

    def specs(self) -> tuple[BudgetSpec, ...]:
        return self._specs

    def matching(self, project: str, user: str, model: str, tags: Tags = ()) -> tuple[BudgetSpec, ...]:
        """Budgets covering a call: each non-empty scope field equal, scope tags a subset of the call's."""
        compiled = self._compiled
        if not compiled:
            return _NO_BUDGETS
        found: list[BudgetSpec] = []
        call_tags: Mapping[str, str] | None = None
        for entry in compiled:
            scope = entry.spec.scope
            if (
                (scope.project and scope.project != project)
                or (scope.user and scope.user != user)
                or (scope.model and scope.model != model)
            ):
                continue
            if entry.tags:
                if call_tags is None:
                    call_tags = tags if isinstance(tags, Mapping) else dict(tags)
                if any(call_tags.get(key) != value for key, value in entry.tags):
                    continue
            found.append(entry.spec)
        return tuple(found) if found else _NO_BUDGETS

    # --- admission and settlement --------------------------------------------------------------

    async def admit(self, matching: Sequence[BudgetSpec], reserve_micros: int = 0) -> Admission:
        """Refuse the call if a matching budget is spent; otherwise reserve on ``reserve`` budgets.

        Raises ResourceExhaustedError (reason BUDGET_EXHAUSTED) naming every exhausted budget.
        """
        if not matching:
            return NO_ADMISSION
        now = self._clock()
        reserve_micros = max(reserve_micros, 0)
        holds = [self._hold(spec, now) for spec in matching]
        try:
            spent = await self._counters.get_many([hold.key for hold in holds])
        except Exception as exc:
            self._counter_failure("admission", exc)
            return Admission(tuple(holds))
        self._counter_success()
        exhausted = [
            (hold, value)
            for hold, value in zip(holds, spent, strict=True)
            if value >= hold.spec.limit_micros
            or (hold.spec.reserve and value + reserve_micros > hold.spec.limit_micros)
        ]
        if exhausted:
            raise _exhausted(exhausted, reserve_micros, now)
        if reserve_micros == 0 or not any(hold.spec.reserve for hold in holds):
            return Admission(tuple(holds))
        return await self._reserve(holds, reserve_micros, now)

    async def _reserve(self, holds: list[Hold], amount: int, now: float) -> Admission:
        # Add first, check after: the value an atomic add returns includes every concurrent
        # reservation, so whoever sees it pass the limit backs out, and the ones that stay
        # never add up to more than the limit.
        targets = [i for i, hold in enumerate(holds) if hold.spec.reserve]
        results = await asyncio.gather(
            *(self._counters.add(holds[i].key, amount, self._ttl(holds[i].window, now)) for i in targets),
            return_exceptions=True,
        )
        made: list[int] = []
        over: list[tuple[Hold, int]] = []
        for i, result in zip(targets, results, strict=True):
            if isinstance(result, BaseException):
                self._counter_failure("reservation", result)
                continue
            made.append(i)
            if result > holds[i].spec.limit_micros:
                over.append((holds[i], result - amount))
        if over:
            await self._release(holds, made, amount, now)
            raise _exhausted(over, amount, now)
        for i in made:
            holds[i] = Hold(holds[i].spec, holds[i].window, holds[i].key, amount)
        return Admission(tuple(holds))

    async def _release(self, holds: list[Hold], made: list[int], amount: int, now: float) -> None:
        results = await asyncio.gather(
            *(self._counters.add(holds[i].key, -amount, self._ttl(holds[i].window, now)) for i in made),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                # The counter stays high by one reservation until its period ends; the ledger is right.
                self._counter_failure("release of a refused reservation", result)

    async def settle(self, admission: Admission, cost_micros: int) -> None:
        """Charge the call's real cost to every budget it was admitted under, then announce thresholds.

        For a reserved budget the difference to the reservation is added, which releases it.
        ``NO_ADMISSION`` (nothing matched at admission) settles nothing; ``charge`` is for
        costs that should count without an admission. Never raises: the call is over, and
        its cost is in the ledger either way.
        """
        changes = [(hold, cost_micros - hold.reserved_micros) for hold in admission.holds]
        changes = [(hold, delta) for hold, delta in changes if delta or cost_micros]
        if not changes:
            return
        now = self._clock()
        results = await asyncio.gather(
            *(self._counters.add(hold.key, delta, self._ttl(hold.window, now)) for hold, delta in changes),
            return_exceptions=True,
        )
        for (hold, _), result in zip(changes, results, strict=True):
            if isinstance(result, BaseException):
                self._counter_failure("settlement", result)
                continue
            self._counter_success()
            await self._announce(hold, result, now)

    async def charge(self, matching: Sequence[BudgetSpec], cost_micros: int) -> None:
        """Settle a call that never went through ``admit``: its cost counts in the current period."""
        if not matching:
            return
        now = self._clock()
        await self.settle(Admission(tuple(self._hold(spec, now) for spec in matching)), cost_micros)

    async def _announce(self, hold: Hold, spent: int, now: float) -> None:
        spec = hold.spec
        if self._alerts is None or spent <= 0:
            return
        period_key, announced = self._announced.get(spec.id, ("", set()))
        if period_key != hold.window.key:
            announced = set()
            self._announced[spec.id] = (hold.window.key, announced)
        for threshold in sorted(spec.thresholds):
            if threshold in announced or spent < threshold * spec.limit_micros:
                continue
            try:
                first = await self._counters.once(f"{hold.key}:{threshold!r}", self._ttl(hold.window, now))
            except Exception as exc:
                self._counter_failure("alert dedupe", exc)
                return
            announced.add(threshold)
            if first:
                self._emit(
                    ThresholdEvent(
                        budget_id=spec.id,
                        threshold=threshold,
                        spent_micros=spent,
                        limit_micros=spec.limit_micros,
                        period=spec.period,
                        period_start=hold.window.start,
                        period_end=hold.window.end,
                        scope=spec.scope,
                    )
                )

    def _emit(self, event: ThresholdEvent) -> None:
        assert self._alerts is not None
        try:
            self._alerts.budget_threshold(event)
        except Exception:
            log.exception("budget alert sink failed for budget %s", event.budget_id)

    # --- start-up and reports ------------------------------------------------------------------

    async def seed_from(self, spend: SpendSince, specs: Sequence[BudgetSpec] | None = None) -> None:
        """Start each budget's current-period counter from the ledger (where it does not exist yet).

        ``spend(spec, since)`` is the ledger's spend in the budget's scope since the period
        start (None for ``total``). Thresholds the restored spend has already crossed are
        marked announced, so a restart does not announce them again. ``specs`` limits this
        to some budgets (ones just added with SetBudget); by default all.
        """
        now = self._clock()
        for spec in self._specs if specs is None else specs:
            hold = self._hold(spec, now)
            amount = await spend(spec, None if hold.window.end is None else hold.window.start)
            ttl = self._ttl(hold.window, now)
            await self._counters.seed(hold.key, amount, ttl)
            for threshold in spec.thresholds:
                if amount > 0 and amount >= threshold * spec.limit_micros:
                    await self._counters.once(f"{hold.key}:{threshold!r}", ttl)

    async def status(self, spec: BudgetSpec) -> tuple[int, float, float | None]:
        """(spent micro-USD, period start, period end or None) of the budget's current period.

        Spend of a ``reserve`` budget includes the reservations of calls still running.
        Raises what the counters raise (``CountersUnavailableError``).
        """
        hold = self._hold(spec, self._clock())
        (spent,) = await self._counters.get_many([hold.key])
        return spent, hold.window.start, hold.window.end

    # --- helpers -------------------------------------------------------------------------------

    @staticmethod
    def _hold(spec: BudgetSpec, now: float) -> Hold:
        window = current_window(spec.period, now)
        return Hold(spec, window, f"{spec.id}:{window.key}")

    @staticmethod
    def _ttl(window: PeriodWindow, now: float) -> float | None:
        left = window.seconds_left(now)
        return None if left is None else left + EXPIRY_GRACE_SECONDS

    def _counter_failure(self, what: str, exc: BaseException) -> None:
        # One warning when the counters start failing, not one per request during an outage.
        if not self._counters_failing:
            self._counters_failing = True
            log.warning(
                "budget counters failed during %s (%s: %s); budgets are not enforced until they recover",
                what,
                type(exc).__name__,
                exc,
            )

    def _counter_success(self) -> None:
        if self._counters_failing:
            self._counters_failing = False
            log.info("budget counters recovered; budgets are enforced again")


def _exhausted(
    exhausted: Sequence[tuple[Hold, int]], reserve_micros: int, now: float
) -> ResourceExhaustedError:
    violations = []
    waits: list[float | None] = []
    for hold, spent in exhausted:
        spec, window = hold.spec, hold.window
        resets = "never resets (period total)" if window.end is None else f"resets at {iso_utc(window.end)}"
        description = f"{spec.period} budget: {usd(spent)} of {usd(spec.limit_micros)} spent; {resets}"
        violations.append(QuotaViolation(subject=f"budget:{spec.id}", description=description))
        waits.append(window.seconds_left(now))
    hold, spent = exhausted[0]
    spec = hold.spec
    what = f"{usd(spent)} of its {usd(spec.limit_micros)} {spec.period} limit is spent"
    if spec.reserve and spent < spec.limit_micros:
        what += f" and this call would reserve {usd(reserve_micros)} more"
    if hold.window.end is None:
        when = "it does not reset (period total); raise its limit with SetBudget to allow more calls"
    else:
        when = f"it resets at {iso_utc(hold.window.end)}"
    more = f" (and {len(exhausted) - 1} more budget(s) exhausted)" if len(exhausted) > 1 else ""
    # The call can run only when every exhausted budget has reset: the latest reset, if all reset.
    retry = None if any(w is None for w in waits) else max(w for w in waits if w is not None)
    return ResourceExhaustedError(
        f"budget {spec.id!r} is exhausted: {what}; {when}{more}",
        retry_after_seconds=retry,
        violations=violations,
        reason="BUDGET_EXHAUSTED",
    )
