"""The usage machinery of one server: ledger, spill file, recorder and budgets, started and drained together.

``app.py`` builds one from settings; it starts with the server and is closed
after the server stopped taking calls, so every call's record is in the queue
by then. A ledger that cannot be reached at start is not fatal: records spill
and are replayed once it answers (a ledger opens itself again on its next use).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from omnirelay.config.usage import BudgetSettings, UsageSettings
from omnirelay.usage.alerts import AlertSink, FanOut, LogAlerts, WebhookAlerts
from omnirelay.usage.budgets import BudgetBook
from omnirelay.usage.counters import MemoryCounters, RedisCounters, SpendCounters
from omnirelay.usage.ledger import BudgetSpec, Ledger, LedgerUnavailableError
from omnirelay.usage.postgres import PostgresLedger
from omnirelay.usage.recorder import DrainReport, Recorder
from omnirelay.usage.spill import SpillFile
from omnirelay.usage.sqlite import SqliteLedger

log = logging.getLogger("omnirelay.usage")


def build_ledger(s: UsageSettings) -> Ledger:
    if s.ledger == "postgres":
        return PostgresLedger(s.postgres_dsn, schema=s.postgres_schema)
    return SqliteLedger(s.sqlite_path)


class UsageRuntime:
    def __init__(self, usage: UsageSettings, budgets: BudgetSettings, ledger: Ledger | None = None) -> None:
        self.settings = usage
        self.budget_settings = budgets
        # Both ledgers open (and migrate) on first use, and again after a failed open.
        self.ledger = ledger if ledger is not None else build_ledger(usage)
        self.spill = SpillFile(Path(usage.spill_path), fsync=usage.spill_fsync)
        self.recorder = Recorder(self.ledger, self.spill, usage.recorder)
        self.counters: SpendCounters = (
            RedisCounters(budgets.redis_url, budgets.key_prefix)
            if budgets.counters == "redis"
            else MemoryCounters()
        )
        self.alerts: AlertSink = (
            FanOut(LogAlerts(), WebhookAlerts(budgets.webhook_url, budgets.webhook_secret))
            if budgets.webhook_url
            else LogAlerts()
        )
        self.book = BudgetBook(budgets.limits, self.counters, self.alerts)
        self._refresher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        # The spill file does not create its directory (a missing one must fail loudly in tests of it).
        Path(self.settings.spill_path).parent.mkdir(parents=True, exist_ok=True)
        try:
            await self.ledger.open()
        except LedgerUnavailableError as exc:
            log.warning(
                "usage ledger %s unavailable at start (%s); records spill until it answers",
                self.ledger.name,
                exc,
            )
        self.recorder.start()
        await self.refresh_budgets(seed=True)
        if self.book.specs() or self.budget_settings.refresh_seconds:
            self._refresher = asyncio.get_running_loop().create_task(self._refresh(), name="budget-refresh")

    async def refresh_budgets(self, *, seed: bool = False) -> None:
        """Config budgets plus the ledger's (SetBudget wins for an id in both); new ones seeded."""
        try:
            stored = await self.ledger.budgets()
        except LedgerUnavailableError:
            return
        merged = {b.id: b for b in self.budget_settings.limits}
        merged.update({b.id: b for b in stored})
        specs = sorted(merged.values(), key=lambda b: b.id)
        known = {b.id: b for b in self.book.specs()}
        fresh = [b for b in specs if known.get(b.id) != b]
        if not fresh and len(specs) == len(known):
            return
        self.book.replace(specs)
        todo = specs if seed else fresh
        if todo:
            # Calls already finished may still be queued: the new counters start from all of them.
            await self.recorder.flush()
            with contextlib.suppress(LedgerUnavailableError):
                await self.book.seed_from(self._spend, todo)

    async def _spend(self, spec: BudgetSpec, since: float | None) -> int:
        return await self.ledger.spend(spec.scope, since)

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(self.budget_settings.refresh_seconds)
            try:
                await self.refresh_budgets()
            except Exception as exc:
                log.warning("budget refresh failed: %s", type(exc).__name__)

    async def close(self) -> DrainReport:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        report = await self.recorder.close()
        closer = getattr(self.alerts, "aclose", None)
        if closer is not None:
            await closer()
        await self.counters.aclose()
        await self.ledger.close()
        return report
