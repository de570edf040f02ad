"""The shared ledger: PostgreSQL behind an asyncpg pool, for many gateway replicas.

Each replica opens its own pool and all of them migrate at start-up; an
advisory lock held for the migration transaction makes that safe when they
start together.

A pooled connection the server dropped (a restart, pg_terminate_backend) is
only found out when used. The first operation to hit one expires every pooled
connection, since one dead connection usually means all of them are, and tries
once more on a fresh one. Repeating is safe: every operation is idempotent
(a write skips records stored already). Whatever still fails surfaces as
LedgerUnavailableError.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

import asyncpg

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
    record_row,
    scope_filter,
)

# Server errors, client/protocol errors (a closed connection, an unencodable value), the
# network, and our own time limits: all mean "not done", which the recorder answers by spilling.
_FAILURES = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)

# The failures that say "this connection is gone" rather than "this statement is wrong". asyncpg
# reports a connection the server closed while it sat idle in several ways: closed mid-operation,
# an interface error on a closed connection, or a protocol left waiting for a reply never to come.
_CONNECTION_LOST = (
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
)

T = TypeVar("T")

_INSERT = (
    f"INSERT INTO usage_records ({', '.join(RECORD_COLUMNS)}) "
    f"VALUES ({', '.join(f'${i}' for i in range(1, len(RECORD_COLUMNS) + 1))}) "
    "ON CONFLICT (record_id) DO NOTHING"
)

# Ids and record ids order bytewise as in SQLite and Python, not by the database's locale.
_ORDER_RECORDS = 'ORDER BY time, record_id COLLATE "C"'

_EXPORT_CHUNK = 500
_NAMEDATALEN = 63  # Postgres truncates identifiers and application_name beyond this


class PostgresLedger:
    name: str = "postgres"

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "public",
        min_size: int = 1,
        max_size: int = 4,
        timeout: float = 5.0,
    ) -> None:
        self.schema = schema
        # Names this ledger's connections in pg_stat_activity, so an operator (or a test) can find them.
        self.application_name = f"omnirelay-ledger {schema}"[:_NAMEDATALEN]
        self._dsn = dsn
        self._min_size = min_size
        self._max_size = max_size
        # Bounds connecting, waiting for a pooled connection and every write; reads are not bounded
        # (an export or a report over a large range may rightly take longer).
        self._timeout = timeout
        self._location = f"{_location(dsn)} schema {schema}"
        self._secrets = _secrets(dsn)
        self._pool: Any = None
        self._closed = False
        self._open_lock = asyncio.Lock()

    async def open(self) -> None:
        await self._get_pool()

    async def close(self) -> None:
        async with self._open_lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            try:
                # A release-waiting close would hang on an export its consumer abandoned mid-way.
                await asyncio.wait_for(pool.close(), self._timeout)
            except _FAILURES:
                pool.terminate()

    async def write(self, records: Sequence[UsageRecord]) -> None:
        if not records:
            return
        rows = [record_row(r) for r in records]

        async def insert(con: Any) -> None:
            async with con.transaction():
                await con.executemany(_INSERT, rows)

        # Bounded, commit included: a database that stops answering must send the batch to the
        # spill file, not stall the recorder. A commit that landed just before the limit is
        # harmless: the replay is skipped as a duplicate.
        await self._run(insert, bounded=True)

    async def records(self, query: UsageQuery) -> AsyncIterator[UsageRecord]:
        where, args = _where(query_filter(query))
        sql = f"SELECT {', '.join(RECORD_COLUMNS)} FROM usage_records{where} {_ORDER_RECORDS}"
        pool = await self._get_pool()
        try:
            # A server-side cursor needs a transaction; rows arrive a chunk at a time. Not retried:
            # part of the stream has been consumed already.
            async with pool.acquire(timeout=self._timeout) as con, con.transaction(readonly=True):
                async for row in con.cursor(sql, *args, prefetch=_EXPORT_CHUNK):
                    yield record_from_row(tuple(row))
        except _FAILURES as exc:
            if isinstance(exc, _CONNECTION_LOST):
                await pool.expire_connections()
            raise self._unavailable(exc) from exc

    async def count(self, query: UsageQuery) -> int:
        where, args = _where(query_filter(query))
        return int(await self._fetchval(f"SELECT COUNT(*) FROM usage_records{where}", args))

    async def spend(self, scope: BudgetScope, since: float | None) -> int:
        where, args = _where(scope_filter(scope, since))
        # SUM over BIGINT is NUMERIC in Postgres; cast back so the driver hands over an int.
        sql = f"SELECT COALESCE(SUM(cost_micros), 0)::BIGINT FROM usage_records{where}"
        return int(await self._fetchval(sql, args))

    async def budgets(self) -> list[BudgetSpec]:
        async def fetch(con: Any) -> list[Any]:
            return list(await con.fetch('SELECT body FROM budgets ORDER BY id COLLATE "C"'))

        return [budget_from_json(row[0]) for row in await self._run(fetch, bounded=False)]

    async def put_budget(self, budget: BudgetSpec) -> None:
        await self._fetchval(
            "INSERT INTO budgets (id, body) VALUES ($1, $2) "
            "ON CONFLICT (id) DO UPDATE SET body = excluded.body",
            (budget.id, budget_to_json(budget)),
            bounded=True,
        )

    async def delete_budget(self, budget_id: str) -> BudgetSpec | None:
        # Repeatable too: a retry after a delete that did land finds nothing and answers None.
        body = await self._fetchval(
            "DELETE FROM budgets WHERE id = $1 RETURNING body", (budget_id,), bounded=True
        )
        return None if body is None else budget_from_json(str(body))

    async def _fetchval(self, sql: str, args: Sequence[Any], *, bounded: bool = False) -> Any:
        async def fetch(con: Any) -> Any:
            return await con.fetchval(sql, *args)

        return await self._run(fetch, bounded=bounded)

    async def _run(self, work: Callable[[Any], Awaitable[T]], *, bounded: bool) -> T:
        """``work`` on a pooled connection, once more on a fresh one if the first was dead.
        ``bounded``: within ``timeout`` overall; reads are not (a report may rightly take long)."""
        pool = await self._get_pool()
        try:
            async with asyncio.timeout(self._timeout if bounded else None):
                try:
                    async with pool.acquire(timeout=self._timeout) as con:
                        return await work(con)
                except _CONNECTION_LOST:
                    await pool.expire_connections()
                async with pool.acquire(timeout=self._timeout) as con:
                    return await work(con)
        except _FAILURES as exc:
            if isinstance(exc, _CONNECTION_LOST):
                await pool.expire_connections()
            raise self._unavailable(exc) from exc

    async def _get_pool(self) -> Any:
        """The pool, created and the schema migrated on first use (so a ledger that was down at
        start-up comes good at the next write)."""
        if self._pool is not None:
            return self._pool
        async with self._open_lock:
            if self._closed:
                raise LedgerUnavailableError(f"usage ledger postgres at {self._location} is closed")
            if self._pool is not None:
                return self._pool
            try:
                pool = await asyncpg.create_pool(
                    self._dsn,
                    min_size=self._min_size,
                    max_size=self._max_size,
                    timeout=self._timeout,
                    command_timeout=None,
                    server_settings={
                        "search_path": _quote_ident(self.schema),
                        "application_name": self.application_name,
                    },
                )
            except (*_FAILURES, ValueError) as exc:  # ValueError: a DSN asyncpg cannot parse
                raise self._unavailable(exc) from exc
            try:
                await self._migrate(pool)
            except BaseException as exc:
                pool.terminate()
                if isinstance(exc, _FAILURES):
                    raise self._unavailable(exc) from exc
                raise
            self._pool = pool
            return pool

    async def _migrate(self, pool: Any) -> None:
        schema = _quote_ident(self.schema)
        async with asyncio.timeout(self._timeout), pool.acquire() as con, con.transaction():
            # Transaction-scoped, so a replica that dies mid-migration cannot leave it held.
            await con.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"omnirelay.usage:{self.schema}")
            # Checked first: CREATE SCHEMA IF NOT EXISTS demands the CREATE privilege even when
            # the schema exists, and a role provisioned with a ready schema may lack it.
            if not await con.fetchval(
                "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", self.schema
            ):
                await con.execute(f"CREATE SCHEMA {schema}")
            await con.execute(f"SET LOCAL search_path TO {schema}")
            await con.execute(MIGRATIONS_TABLE)
            applied = {int(row[0]) for row in await con.fetch("SELECT version FROM schema_migrations")}
            for migration in pending(applied):
                for statement in migration.postgres:
                    await con.execute(statement)
                await con.execute("INSERT INTO schema_migrations (version) VALUES ($1)", migration.version)

    def _unavailable(self, exc: BaseException) -> LedgerUnavailableError:
        message = f"usage ledger postgres at {self._location} unavailable: {type(exc).__name__}: {exc}"
        for secret in self._secrets:
            message = message.replace(secret, "***")
        return LedgerUnavailableError(message)


def _where(f: Filter) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    args: list[Any] = []

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    for column, value in f.equal:
        clauses.append(f"{column} = {arg(value)}")
    if f.start is not None:
        clauses.append(f"time >= {arg(f.start)}")
    if f.end is not None:
        clauses.append(f"time < {arg(f.end)}")
    if f.status_codes:
        clauses.append(f"status_code = ANY({arg(list(f.status_codes))}::INTEGER[])")
    for key, value in f.tags:
        # One containment test per pair (not one merged object) so two values for one key
        # match nothing, as in SQLite; each is served by the GIN index.
        clauses.append(f"tags @> {arg(json.dumps({key: value}))}::JSONB")
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), args


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _location(dsn: str) -> str:
    """The DSN without its password: user@hosts/database."""
    parts = urlsplit(dsn)
    hosts = parts.netloc.rpartition("@")[2]
    user = parts.netloc.rpartition("@")[0].partition(":")[0] if "@" in parts.netloc else ""
    where = f"{user}@{hosts}" if user else hosts
    return f"{where}{parts.path}" or "(dsn)"


def _secrets(dsn: str) -> list[str]:
    """Every spelling of the DSN's password a driver message could echo, longest first."""
    parts = urlsplit(dsn)
    found: set[str] = set()
    userinfo = parts.netloc.rpartition("@")[0]
    if ":" in userinfo:
        raw = userinfo.partition(":")[2]
        found.update((raw, unquote(raw)))
    for value in parse_qs(parts.query).get("password", []):
        found.add(value)
    return sorted((s for s in found if s), key=len, reverse=True)
