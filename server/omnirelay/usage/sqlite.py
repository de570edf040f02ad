"""The embedded ledger: one SQLite file in WAL mode, for a single gateway process.

One connection does every short read and the migrations, serialized by a lock.
Record batches are written on the event loop's own thread, through a plain
``sqlite3`` connection, a few hundred rows at a time with a yield between
chunks: in ``make bench`` handing them to aiosqlite's thread cost a sixth of
the server's throughput in GIL hand-offs, for work that takes about 10 us a
row here. An export opens a connection of its own: WAL gives it a stable
snapshot while the recorder keeps writing, so a long export never holds up the
writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from omnirelay.usage import sqlite_rows
from omnirelay.usage.ledger import BudgetScope, BudgetSpec, LedgerUnavailableError, UsageQuery
from omnirelay.usage.records import UsageRecord
from omnirelay.usage.schema import (
    MIGRATIONS_TABLE,
    RECORD_COLUMNS,
    Filter,
    budget_from_json,
    budget_to_json,
    pending,
    query_filter,
    record_from_row,
    scope_filter,
)

# What "the ledger could not do it" looks like from here: driver errors ("database is locked",
# I/O errors), the file system, and a value SQLite refuses (an integer beyond 64 bits).
_FAILURES = (sqlite3.Error, OSError, OverflowError)

# Rows fetched per hop to the connection's thread while an export streams.
_EXPORT_CHUNK = 500
# The writes run on the loop's thread, so a call arriving during a batch waits for the statement in
# progress: each holds at most ``sqlite_rows.CHUNK_ROWS`` rows, with a yield to the loop between
# statements. At 43k instructions a row (callgrind, before rows bound only what they set), about
# 17 us on the bench's 2-core VM, 16 rows held the loop about 0.3 ms and 100 about 1.7; at the 26k
# a row of now (the same callgrind loop), scaled alike, a statement holds it about 0.2 ms.

# Batches between WAL checkpoints (SQLite's own default is every 1000 pages, about 4 MB).
_CHECKPOINT_EVERY = 8


class SqliteLedger:
    name: str = "sqlite"

    def __init__(self, path: str, *, busy_timeout: float = 5.0) -> None:
        self.path = path
        self._busy_timeout = busy_timeout
        self._db: aiosqlite.Connection | None = None
        self._writer: sqlite3.Connection | None = None
        self._since_checkpoint = 0
        self._checkpointing: asyncio.Task[None] | None = None
        self._closed = False
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        async with self._lock:
            await self._connection()

    async def close(self) -> None:
        async with self._lock:
            self._closed = True
            checkpointing, self._checkpointing = self._checkpointing, None
            if checkpointing is not None:
                # Its SQL finishes on aiosqlite's thread before the close queued behind it.
                checkpointing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await checkpointing
            db, self._db = self._db, None
            writer, self._writer = self._writer, None
            if writer is not None:
                writer.close()
            if db is not None:
                await db.close()

    async def write(self, records: Sequence[UsageRecord]) -> None:
        if not records:
            return
        async with self._lock:
            await self._connection()  # opened and migrated
            try:
                writer = self._writer_connection()
                # IMMEDIATE takes the write lock up front, where the busy timeout applies, rather
                # than failing at the first insert when another writer holds it.
                writer.execute("BEGIN IMMEDIATE")
                try:
                    for n, (sql, parameters) in enumerate(sqlite_rows.statements(records)):
                        if n:
                            await asyncio.sleep(0)
                        writer.execute(sql, parameters)
                    writer.execute("COMMIT")
                except BaseException:
                    if writer.in_transaction:
                        with contextlib.suppress(*_FAILURES):
                            writer.execute("ROLLBACK")
                    raise
            except _FAILURES as exc:
                raise self._unavailable(exc) from exc
            self._start_checkpoint()

    def _writer_connection(self) -> sqlite3.Connection:
        """The loop thread's own connection for record batches (the file is migrated already)."""
        if self._writer is None:
            # This connection blocks the event loop while it waits for a lock (another worker's
            # commit, a few ms): waiting longer than this spills the batch instead.
            writer = sqlite3.connect(self.path, isolation_level=None, timeout=min(self._busy_timeout, 0.1))
            writer.execute("PRAGMA synchronous = NORMAL")
            # Checkpoints copy the WAL into the database file, milliseconds of I/O: not on the event
            # loop's thread. The read connection runs them in its own thread after writes instead.
            writer.execute("PRAGMA wal_autocheckpoint = 0")
            self._writer = writer
        return self._writer

    def _start_checkpoint(self) -> None:
        """Now and then, start moving the WAL into the database file on aiosqlite's thread.

        Not awaited. A checkpoint that takes 17 ms on an idle server took 0.2 to 3.6 s under 20 s
        of the bench's cache-hit load (c=64), its thread getting little of a saturated core.
        Awaited inside ``write``, it stalled the recorder that long: the queue filled and
        thousands of records went to the spill file. WAL lets batches go on beside a checkpoint;
        one runs at a time.
        """
        self._since_checkpoint += 1
        if self._since_checkpoint < _CHECKPOINT_EVERY or self._db is None:
            return
        if self._checkpointing is not None and not self._checkpointing.done():
            return
        self._since_checkpoint = 0
        self._checkpointing = asyncio.get_running_loop().create_task(_checkpoint(self._db))

    async def records(self, query: UsageQuery) -> AsyncIterator[UsageRecord]:
        where, args = _where(query_filter(query))
        sql = f"SELECT {', '.join(RECORD_COLUMNS)} FROM usage_records{where} ORDER BY time, record_id"
        async with self._lock:
            await self._connection()  # migrated before the export's connection reads
        try:
            db = await self._connect(iter_chunk_size=_EXPORT_CHUNK)
        except _FAILURES as exc:
            raise self._unavailable(exc) from exc
        try:
            await db.execute("PRAGMA query_only = ON")
            async with db.execute(sql, args) as cursor:
                async for row in cursor:
                    yield record_from_row(tuple(row))
        except _FAILURES as exc:
            raise self._unavailable(exc) from exc
        finally:
            await db.close()

    async def count(self, query: UsageQuery) -> int:
        where, args = _where(query_filter(query))
        row = await self._fetch_one(f"SELECT COUNT(*) FROM usage_records{where}", args)
        return int(row[0]) if row else 0

    async def spend(self, scope: BudgetScope, since: float | None) -> int:
        where, args = _where(scope_filter(scope, since))
        row = await self._fetch_one(f"SELECT COALESCE(SUM(cost_micros), 0) FROM usage_records{where}", args)
        return int(row[0]) if row else 0

    async def budgets(self) -> list[BudgetSpec]:
        async with self._lock:
            db = await self._connection()
            try:
                async with db.execute("SELECT body FROM budgets ORDER BY id") as cursor:
                    rows = await cursor.fetchall()
            except _FAILURES as exc:
                raise self._unavailable(exc) from exc
        return [budget_from_json(body) for (body,) in rows]

    async def put_budget(self, budget: BudgetSpec) -> None:
        async with self._lock:
            db = await self._connection()
            try:
                await db.execute(
                    "INSERT INTO budgets (id, body) VALUES (?, ?) "
                    "ON CONFLICT (id) DO UPDATE SET body = excluded.body",
                    (budget.id, budget_to_json(budget)),
                )
            except _FAILURES as exc:
                raise self._unavailable(exc) from exc

    async def delete_budget(self, budget_id: str) -> BudgetSpec | None:
        async with self._lock:
            db = await self._connection()
            try:
                async with db.execute(
                    "DELETE FROM budgets WHERE id = ? RETURNING body", (budget_id,)
                ) as cursor:
                    row = await cursor.fetchone()
            except _FAILURES as exc:
                raise self._unavailable(exc) from exc
        return None if row is None else budget_from_json(row[0])

    async def _fetch_one(self, sql: str, args: Sequence[Any]) -> sqlite3.Row | None:
        async with self._lock:
            db = await self._connection()
            try:
                async with db.execute(sql, args) as cursor:
                    return await cursor.fetchone()
            except _FAILURES as exc:
                raise self._unavailable(exc) from exc

    async def _connection(self) -> aiosqlite.Connection:
        """The shared connection, opened and migrated on first use. Call with the lock held."""
        if self._closed:
            raise LedgerUnavailableError(f"usage ledger sqlite at {self.path} is closed")
        if self._db is not None:
            return self._db
        try:
            await asyncio.to_thread(Path(self.path).parent.mkdir, parents=True, exist_ok=True)
            db = await self._connect()
        except _FAILURES as exc:
            raise self._unavailable(exc) from exc
        try:
            await self._prepare(db)
        except BaseException as exc:
            await db.close()
            if isinstance(exc, _FAILURES):
                raise self._unavailable(exc) from exc
            raise
        self._db = db
        return db

    async def _prepare(self, db: aiosqlite.Connection) -> None:
        """Switch the file to WAL and migrate it. Switching journal modes answers "database is
        locked" at once, without the busy timeout, while another connection holds the file (two
        processes starting together on a new file): this one-off start-up work waits by itself."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._busy_timeout
        while True:
            try:
                # WAL is a property of the file: set once, every later connection inherits it.
                await db.execute("PRAGMA journal_mode = WAL")
                await _migrate(db)
                return
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY or loop.time() >= deadline:
                    raise
            await asyncio.sleep(0.01)

    async def _connect(self, iter_chunk_size: int = 64) -> aiosqlite.Connection:
        # isolation_level=None: no implicit transactions; writes and migrations say BEGIN themselves.
        db = await aiosqlite.connect(self.path, isolation_level=None, iter_chunk_size=iter_chunk_size)
        try:
            await db.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
            # NORMAL under WAL loses at most the last commits on power loss, never consistency;
            # the recorder's spill file covers that window cheaper than FULL's fsync per commit.
            await db.execute("PRAGMA synchronous = NORMAL")
        except BaseException:
            await db.close()
            raise
        return db

    def _unavailable(self, exc: BaseException) -> LedgerUnavailableError:
        return LedgerUnavailableError(
            f"usage ledger sqlite at {self.path} unavailable: {type(exc).__name__}: {exc}"
        )


async def _migrate(db: aiosqlite.Connection) -> None:
    # IMMEDIATE: two processes opening the same file at once serialize here instead of both
    # reading "nothing applied" and racing to create the tables.
    await db.execute("BEGIN IMMEDIATE")
    try:
        await db.execute(MIGRATIONS_TABLE)
        async with db.execute("SELECT version FROM schema_migrations") as cursor:
            applied = {int(version) for (version,) in await cursor.fetchall()}
        for migration in pending(applied):
            for statement in migration.sqlite:
                await db.execute(statement)
            await db.execute("INSERT INTO schema_migrations (version) VALUES (?)", (migration.version,))
        await db.execute("COMMIT")
    except BaseException:
        await _rollback(db)
        raise


async def _rollback(db: aiosqlite.Connection) -> None:
    # The failure may have ended the transaction already (or come before BEGIN took effect);
    # a failing ROLLBACK must not hide the error that brought us here.
    if db.in_transaction:
        with contextlib.suppress(*_FAILURES):
            await db.execute("ROLLBACK")


def _where(f: Filter) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    args: list[Any] = []
    for column, value in f.equal:
        clauses.append(f"{column} = ?")
        args.append(value)
    if f.start is not None:
        clauses.append("time >= ?")
        args.append(f.start)
    if f.end is not None:
        clauses.append("time < ?")
        args.append(f.end)
    if f.status_codes:
        clauses.append(f"status_code IN ({', '.join('?' for _ in f.status_codes)})")
        args.extend(f.status_codes)
    for key, value in f.tags:
        # json_each rather than json_extract: a JSON path cannot name a key containing a double
        # quote, and tag keys are whatever callers send.
        clauses.append(
            "EXISTS (SELECT 1 FROM json_each(usage_records.tags) AS t WHERE t.key = ? AND t.value = ?)"
        )
        args.extend((key, value))
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), args


async def _checkpoint(db: aiosqlite.Connection) -> None:
    # PASSIVE: copies what no reader still needs and never waits for a lock; never fails a write.
    with contextlib.suppress(*_FAILURES):
        await db.execute("PRAGMA wal_checkpoint(PASSIVE)")
