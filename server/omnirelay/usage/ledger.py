"""The ledger contract: where usage records and budget definitions are kept.

Two implementations share one schema and one test suite: SQLite (the embedded
default, one process) and PostgreSQL (many replicas). Nothing on a request's
path reads a ledger: the recorder writes to it in batches, reports and budget
start-up read from it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from omnirelay.usage.records import UsageRecord


@dataclass(frozen=True, slots=True)
class UsageQuery:
    """Which records: every set field must match (AND); empty fields match all."""

    start: float | None = None  # Unix seconds, inclusive
    end: float | None = None  # Unix seconds, exclusive
    project: str = ""
    user: str = ""
    model: str = ""  # the resolved (canonical) model
    provider: str = ""
    deployment: str = ""
    tags: tuple[tuple[str, str], ...] = ()  # records carrying all of these
    status_codes: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class BudgetScope:
    """What a budget covers; empty fields match all."""

    project: str = ""
    user: str = ""
    model: str = ""
    tags: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class BudgetSpec:
    """A spending limit as defined (through SetBudget or config); spend lives in the counters."""

    id: str
    scope: BudgetScope
    limit_micros: int
    period: str  # "day" | "week" | "month" | "total"
    thresholds: tuple[float, ...] = (0.5, 0.8, 1.0)
    reserve: bool = False


class LedgerUnavailableError(Exception):
    """The ledger cannot be reached or refused a write; the recorder spills and retries."""


class Ledger(Protocol):
    name: str

    async def open(self) -> None:
        """Connect and apply pending migrations (idempotent). Raises LedgerUnavailableError."""
        ...

    async def close(self) -> None: ...

    async def write(self, records: Sequence[UsageRecord]) -> None:
        """Insert a batch in one transaction; a record whose record_id is stored already is skipped.

        Raises LedgerUnavailableError when the batch was not stored (nothing of it was).
        """
        ...

    def records(self, query: UsageQuery) -> AsyncIterator[UsageRecord]:
        """Matching records, oldest first, streamed (never all in memory at once)."""
        ...

    async def count(self, query: UsageQuery) -> int: ...

    async def spend(self, scope: BudgetScope, since: float | None) -> int:
        """Summed cost (micro-USD) of records in scope since ``since`` (None: all time)."""
        ...

    async def budgets(self) -> list[BudgetSpec]: ...

    async def put_budget(self, budget: BudgetSpec) -> None: ...

    async def delete_budget(self, budget_id: str) -> BudgetSpec | None: ...
