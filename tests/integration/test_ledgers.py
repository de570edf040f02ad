"""Both usage ledgers, one suite: every test runs against SQLite (a file under tmp_path) and
PostgreSQL (a fresh schema per test, dropped afterwards; skipped where no server runs)."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from pathlib import Path

import aiosqlite
import asyncpg
import msgspec
import pytest

from omnirelay.domain import TokenUsage
from omnirelay.usage import sqlite as sqlite_ledger
from omnirelay.usage.ledger import (
    BudgetScope,
    BudgetSpec,
    Ledger,
    LedgerUnavailableError,
    UsageQuery,
)
from omnirelay.usage.postgres import PostgresLedger
from omnirelay.usage.records import BilledAttempt, UsageRecord
from omnirelay.usage.schema import MIGRATIONS
from omnirelay.usage.sqlite import SqliteLedger
from omnirelay.usage.sqlite_rows import CHUNK_ROWS

ALL_VERSIONS = [m.version for m in MIGRATIONS]


@dataclasses.dataclass(frozen=True)
class PgPlace:
    dsn: str
    schema: str
    admin: asyncpg.Connection  # outside any ledger: to look under it and to kill its connections


@dataclasses.dataclass(frozen=True)
class Backend:
    kind: str
    make: Callable[[], Ledger]  # a new, unopened ledger object on this test's file or schema
    applied_versions: Callable[[], Awaitable[list[int]]]  # read from schema_migrations directly
    stored_rows: Callable[[], Awaitable[int]]  # rows in usage_records, read directly


@pytest.fixture
async def pg_place(postgres_dsn: str) -> AsyncIterator[PgPlace]:
    schema = f"t_{uuid.uuid4().hex}"
    admin = await asyncpg.connect(postgres_dsn)
    try:
        yield PgPlace(postgres_dsn, schema, admin)
    finally:
        await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await admin.close()


@pytest.fixture(params=["sqlite", "postgres"])
def place(request: pytest.FixtureRequest, tmp_path: Path) -> Path | PgPlace:
    """Where the test's ledgers live. A plain fixture: only here can it pull in the async
    ``pg_place`` on demand, so the SQLite half never needs (or skips for) a Postgres server."""
    if request.param == "sqlite":
        # Two levels that do not exist yet: the ledger creates its directory.
        return tmp_path / "data" / "usage" / "ledger.db"
    pg: PgPlace = request.getfixturevalue("pg_place")
    return pg


@pytest.fixture
async def backend(place: Path | PgPlace) -> AsyncIterator[Backend]:
    made: list[Ledger] = []

    def remember(ledger: Ledger) -> Ledger:
        made.append(ledger)
        return ledger

    if isinstance(place, Path):
        path = place

        async def sqlite_versions() -> list[int]:
            async with (
                aiosqlite.connect(path) as db,
                db.execute("SELECT version FROM schema_migrations") as c,
            ):
                return sorted(int(v) for (v,) in await c.fetchall())

        async def sqlite_rows() -> int:
            async with aiosqlite.connect(path) as db, db.execute("SELECT COUNT(*) FROM usage_records") as c:
                row = await c.fetchone()
                assert row is not None
                return int(row[0])

        backend = Backend("sqlite", lambda: remember(SqliteLedger(str(path))), sqlite_versions, sqlite_rows)
    else:
        pg = place

        async def pg_versions() -> list[int]:
            rows = await pg.admin.fetch(f'SELECT version FROM "{pg.schema}".schema_migrations')
            return sorted(int(r[0]) for r in rows)

        async def pg_rows() -> int:
            return int(await pg.admin.fetchval(f'SELECT COUNT(*) FROM "{pg.schema}".usage_records'))

        backend = Backend(
            "postgres",
            lambda: remember(PostgresLedger(pg.dsn, schema=pg.schema)),
            pg_versions,
            pg_rows,
        )
    yield backend
    for ledger in made:
        await ledger.close()


@pytest.fixture
async def ledger(backend: Backend) -> Ledger:
    opened = backend.make()
    await opened.open()
    return opened


def rec(
    record_id: str,
    time: float = 1000.0,
    *,
    project: str = "alpha",
    user: str = "ann",
    model: str = "gpt-4o",
    provider: str = "openai",
    deployment: str = "openai-east",
    status_code: int = 0,
    tags: dict[str, str] | None = None,
    cost: int = 10,
) -> UsageRecord:
    return UsageRecord(
        record_id=record_id,
        request_id=f"req-{record_id}",
        time=time,
        requested_model="smart",
        status_code=status_code,
        project=project,
        user=user,
        tags=tuple(sorted((tags or {}).items())),
        resolved_model=model,
        provider=provider,
        deployment=deployment,
        usage=TokenUsage(input_tokens=5, output_tokens=2, cost_micros=cost),
    )


async def ids(ledger: Ledger, query: UsageQuery | None = None) -> list[str]:
    return [r.record_id async for r in ledger.records(query or UsageQuery())]


# --- records: round trip, duplicates, atomicity -------------------------------------------------

FULL_USAGE = TokenUsage(
    input_tokens=1200,
    output_tokens=340,
    cached_input_tokens=800,
    reasoning_tokens=120,
    estimated=True,
    cache_write_input_tokens=64,
    cost_micros=5_432_100,
)

FULL = UsageRecord(
    record_id="rec-full",
    request_id="req-full",
    time=1_760_000_000.123456,
    requested_model="smart",
    status_code=14,
    trace_id="0af7651916cd43dd8448eb211c80319c",
    project="alpha",
    user="ann@example.com",
    tags=(("env", "prod"), ("team", "core"), ('we"ird.key', "ünïcode value")),
    tenant="acme",
    resolved_model="gpt-4o",
    provider="openai",
    deployment="openai-east",
    attempts=(
        BilledAttempt(
            model="gpt-4o",
            provider="azure",
            deployment="azure-west",
            outcome="rate_limited",
            detail="429 from upstream",
            latency_seconds=0.25,
            upstream_request_id="az-1",
            usage=TokenUsage(input_tokens=1200, estimated=True, cost_micros=100),
        ),
        BilledAttempt(
            model="gpt-4o",
            provider="openai",
            deployment="openai-east",
            outcome="success",
            detail="ok",
            latency_seconds=1.75,
            upstream_request_id="oa-2",
            usage=FULL_USAGE,
        ),
    ),
    usage=FULL_USAGE,
    price_table_version="2025-10-01",
    latency_seconds=2.125,
    ttft_seconds=0.3125,
    cache="miss",
    saved_cost_micros=77,
    streamed=True,
    fallback_used=True,
    operation="stream",
)


def test_the_full_record_sets_every_field() -> None:
    # Guards the round-trip test below: a field added later with its default would go unchecked.
    for name, default in UsageRecord._field_defaults.items():
        assert getattr(FULL, name) != default, name
    for f in msgspec.structs.fields(TokenUsage):
        assert getattr(FULL_USAGE, f.name) != f.default, f.name


async def test_a_record_with_every_field_round_trips(ledger: Ledger) -> None:
    without_ttft = FULL._replace(
        record_id="rec-no-ttft",
        time=FULL.time + 1,
        ttft_seconds=None,
        streamed=False,
        operation="complete",
    )
    await ledger.write([FULL, without_ttft])
    assert [r async for r in ledger.records(UsageQuery())] == [FULL, without_ttft]


async def test_a_replayed_record_is_stored_once_and_keeps_its_first_version(
    ledger: Ledger, backend: Backend
) -> None:
    await ledger.write([rec("a"), rec("b")])
    replay = rec("b")._replace(project="changed")
    await ledger.write([replay, rec("c"), rec("c")])  # a duplicate inside one batch, too
    assert await ids(ledger) == ["a", "b", "c"]
    assert await ledger.count(UsageQuery(project="alpha")) == 3
    assert await backend.stored_rows() == 3


async def test_a_batch_is_stored_whole_or_not_at_all(ledger: Ledger) -> None:
    # A cost beyond 64 bits is refused by both databases; the good record before it must not stay.
    unstorable = rec("bad", cost=2**70)
    with pytest.raises(LedgerUnavailableError):
        await ledger.write([rec("good"), unstorable])
    assert await ledger.count(UsageQuery()) == 0
    await ledger.write([rec("good")])
    assert await ids(ledger) == ["good"]


async def test_an_empty_batch_is_a_no_op(ledger: Ledger) -> None:
    await ledger.write([])
    assert await ledger.count(UsageQuery()) == 0


# --- queries ---------------------------------------------------------------------------------------

DATASET = (
    rec("a", 100, tags={"env": "prod", "team": "core"}),
    rec(
        "b",
        200,
        user="bob",
        model="claude",
        provider="anthropic",
        deployment="anthropic-main",
        status_code=8,
        tags={"env": "prod"},
    ),
    rec(
        "c",
        300,
        project="beta",
        provider="azure",
        deployment="azure-west",
        status_code=14,
        tags={"env": "dev", "team": "core", 'we"ird': "v"},
    ),
    rec("d", 400, project="beta", user="cy", deployment="openai-west"),
    rec(
        "e",
        500,
        model="claude",
        provider="anthropic",
        deployment="anthropic-main",
        tags={"team": "core", "env": "prod", "extra": "x"},
    ),
)

QUERIES = {
    "everything": (UsageQuery(), "abcde"),
    "start-inclusive": (UsageQuery(start=200), "bcde"),
    "end-exclusive": (UsageQuery(end=300), "ab"),
    "time-window": (UsageQuery(start=200, end=400), "bc"),
    "project": (UsageQuery(project="beta"), "cd"),
    "user": (UsageQuery(user="ann"), "ace"),
    "model-is-resolved": (UsageQuery(model="gpt-4o"), "acd"),
    "requested-model-is-not-matched": (UsageQuery(model="smart"), ""),
    "provider": (UsageQuery(provider="anthropic"), "be"),
    "deployment": (UsageQuery(deployment="openai-west"), "d"),
    "status-codes": (UsageQuery(status_codes=(8, 14)), "bc"),
    "status-ok": (UsageQuery(status_codes=(0,)), "ade"),
    "one-tag": (UsageQuery(tags=(("env", "prod"),)), "abe"),
    "two-tags": (UsageQuery(tags=(("env", "prod"), ("team", "core"))), "ae"),
    "tag-value-mismatch": (UsageQuery(tags=(("env", "prod"), ("team", "other"))), ""),
    "one-key-two-values": (UsageQuery(tags=(("env", "prod"), ("env", "dev"))), ""),
    "tag-key-with-a-quote": (UsageQuery(tags=(('we"ird', "v"),)), "c"),
    "unknown-project": (UsageQuery(project="nobody"), ""),
    "combined": (
        UsageQuery(project="alpha", start=150, status_codes=(0, 8), tags=(("team", "core"),)),
        "e",
    ),
    "combined-user-model-provider": (
        UsageQuery(user="ann", model="gpt-4o", provider="azure", end=301),
        "c",
    ),
}


@pytest.mark.parametrize(("query", "expected"), list(QUERIES.values()), ids=list(QUERIES))
async def test_filters_select_records_and_count_them(
    ledger: Ledger, query: UsageQuery, expected: str
) -> None:
    await ledger.write(list(reversed(DATASET)))
    assert await ids(ledger, query) == list(expected)
    assert await ledger.count(query) == len(expected)


async def test_records_come_oldest_first_then_by_record_id_bytewise(ledger: Ledger) -> None:
    await ledger.write([rec("late", 300), rec("b-tie", 100)])
    await ledger.write([rec("a-tie", 100), rec("middle", 200.5), rec("B-tie", 100)])
    # "B" sorts before "a" bytewise (as in Python), whatever the database's locale says.
    assert await ids(ledger) == ["B-tie", "a-tie", "b-tie", "middle", "late"]


async def test_a_big_export_streams_and_does_not_hold_up_writes(ledger: Ledger) -> None:
    total = 3000
    for first in range(0, total, 500):
        await ledger.write([rec(f"r{i:05d}", 1000.0 + i) for i in range(first, first + 500)])
    assert await ledger.count(UsageQuery()) == total

    records = ledger.records(UsageQuery())
    assert isinstance(records, AsyncGenerator)
    async with aclosing(records):
        exported = [await anext(records)]
        # Mid-export, the recorder must still be able to write.
        await asyncio.wait_for(ledger.write([rec("written-mid-export", 0.5)]), 5)
        exported.extend([r async for r in records])
    # The export saw the ledger as it was when it started.
    assert [r.record_id for r in exported] == [f"r{i:05d}" for i in range(total)]
    assert await ledger.count(UsageQuery()) == total + 1


async def test_an_abandoned_export_releases_what_it_held(ledger: Ledger) -> None:
    await ledger.write([rec(f"r{i}", float(i)) for i in range(50)])
    records = ledger.records(UsageQuery())
    assert isinstance(records, AsyncGenerator)
    async with aclosing(records):
        assert (await anext(records)).record_id == "r0"
    await asyncio.wait_for(ledger.write([rec("after")]), 5)
    await asyncio.wait_for(ledger.close(), 5)


# --- spend -----------------------------------------------------------------------------------------


async def test_spend_sums_cost_in_scope_since_a_time(ledger: Ledger) -> None:
    assert await ledger.spend(BudgetScope(), None) == 0
    big = 5_000_000_000_000  # past 32 bits, summed with others
    await ledger.write(
        [
            rec("a", 100, cost=100, tags={"team": "core"}),
            rec("b", 200, user="bob", model="claude", cost=20, tags={"team": "core", "env": "prod"}),
            rec("c", 300, project="beta", cost=3),
            rec("d", 400, cost=big, tags={"env": "prod"}),
        ]
    )
    assert await ledger.spend(BudgetScope(), None) == big + 123
    assert await ledger.spend(BudgetScope(project="alpha"), None) == big + 120
    assert await ledger.spend(BudgetScope(user="ann"), None) == big + 103
    assert await ledger.spend(BudgetScope(model="claude"), None) == 20
    assert await ledger.spend(BudgetScope(tags=(("team", "core"),)), None) == 120
    assert await ledger.spend(BudgetScope(tags=(("team", "core"), ("env", "prod"))), None) == 20
    assert await ledger.spend(BudgetScope(project="alpha", model="gpt-4o"), 150) == big
    assert await ledger.spend(BudgetScope(), 300) == big + 3  # since is inclusive
    assert await ledger.spend(BudgetScope(), 400.5) == 0
    assert await ledger.spend(BudgetScope(project="nobody"), None) == 0


# --- budgets ---------------------------------------------------------------------------------------


async def test_budgets_are_put_replaced_listed_and_deleted(ledger: Ledger, backend: Backend) -> None:
    core = BudgetSpec(
        id="team-b",
        scope=BudgetScope(
            project="alpha", user="ann", model="gpt-4o", tags=(("team", "core"), ("env", "prod"))
        ),
        limit_micros=50_000_000_000,
        period="month",
        thresholds=(0.25, 0.9),
        reserve=True,
    )
    lower = BudgetSpec(id="team-a", scope=BudgetScope(), limit_micros=1, period="total")
    upper = BudgetSpec(id="Team-a", scope=BudgetScope(user="bob"), limit_micros=2, period="day")
    assert await ledger.budgets() == []
    for spec in (core, lower, upper):
        await ledger.put_budget(spec)
    assert await ledger.budgets() == [upper, lower, core]  # by id, bytewise

    replaced = dataclasses.replace(core, limit_micros=7, period="week", thresholds=(1.0,), reserve=False)
    await ledger.put_budget(replaced)
    assert await ledger.budgets() == [upper, lower, replaced]

    # Another ledger object on the same store sees the same definitions.
    other = backend.make()
    await other.open()
    assert await other.budgets() == [upper, lower, replaced]

    assert await ledger.delete_budget("team-b") == replaced
    assert await ledger.delete_budget("team-b") is None
    assert await ledger.delete_budget("never-was") is None
    assert await ledger.budgets() == [upper, lower]


# --- lifecycle and migrations ----------------------------------------------------------------------


async def test_migrations_apply_once_however_often_the_ledger_opens(backend: Backend) -> None:
    first = backend.make()
    await first.open()
    await first.open()
    await first.write([rec("kept")])
    await first.close()
    assert await backend.applied_versions() == ALL_VERSIONS

    second = backend.make()
    await second.open()
    assert await ids(second) == ["kept"]
    assert await backend.applied_versions() == ALL_VERSIONS


async def test_ledgers_opening_together_on_a_fresh_store_do_not_race(backend: Backend) -> None:
    ledgers = [backend.make() for _ in range(4)]
    await asyncio.gather(*(ledger.open() for ledger in ledgers))
    assert await backend.applied_versions() == ALL_VERSIONS
    await asyncio.gather(*(ledger.write([rec(f"from-{i}")]) for i, ledger in enumerate(ledgers)))
    assert await ledgers[0].count(UsageQuery()) == 4


async def test_a_ledger_opens_on_first_use(backend: Backend) -> None:
    unopened = backend.make()
    await unopened.write([rec("first")])
    assert await backend.applied_versions() == ALL_VERSIONS
    assert await ids(unopened) == ["first"]


async def test_close_is_idempotent_and_a_closed_ledger_refuses_work(ledger: Ledger) -> None:
    await ledger.write([rec("a")])
    await ledger.close()
    await ledger.close()
    with pytest.raises(LedgerUnavailableError, match="closed"):
        await ledger.write([rec("b")])
    with pytest.raises(LedgerUnavailableError, match="closed"):
        await ledger.count(UsageQuery())


# --- unreachable ledgers ---------------------------------------------------------------------------

UNREACHABLE_DSN = "postgresql://u:s3cretpw@127.0.0.1:1/x"


async def test_an_unreachable_postgres_raises_unavailable_without_the_password() -> None:
    ledger = PostgresLedger(UNREACHABLE_DSN, timeout=0.5)
    try:
        await ledger.write([])  # an empty batch never needs the database
        with pytest.raises(LedgerUnavailableError) as opened:
            await ledger.open()
        with pytest.raises(LedgerUnavailableError) as wrote:
            await ledger.write([rec("a")])
        for exc in (opened.value, wrote.value):
            message = str(exc)
            assert "s3cretpw" not in message
            assert "postgres" in message
            assert "127.0.0.1:1" in message
    finally:
        await ledger.close()


async def test_an_sqlite_path_under_a_regular_file_raises_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    path = blocker / "usage.db"
    ledger = SqliteLedger(str(path))
    try:
        await ledger.write([])
        with pytest.raises(LedgerUnavailableError, match="sqlite") as opened:
            await ledger.open()
        assert str(path) in str(opened.value)
        with pytest.raises(LedgerUnavailableError):
            await ledger.write([rec("a")])
    finally:
        await ledger.close()


async def test_a_locked_sqlite_file_raises_unavailable_then_recovers(tmp_path: Path) -> None:
    path = tmp_path / "usage.db"
    ledger = SqliteLedger(str(path), busy_timeout=0.2)
    try:
        await ledger.open()
        async with aiosqlite.connect(path, isolation_level=None) as other:
            await other.execute("BEGIN EXCLUSIVE")
            with pytest.raises(LedgerUnavailableError, match="locked"):
                await ledger.write([rec("a")])
            await other.execute("ROLLBACK")
        await ledger.write([rec("a")])
        assert await ids(ledger) == ["a"]
    finally:
        await ledger.close()


async def test_sqlite_puts_its_file_in_wal_mode(tmp_path: Path) -> None:
    ledger = SqliteLedger(str(tmp_path / "usage.db"))
    try:
        await ledger.open()
        async with aiosqlite.connect(ledger.path) as db, db.execute("PRAGMA journal_mode") as cursor:
            assert await cursor.fetchone() == ("wal",)
    finally:
        await ledger.close()


# --- PostgreSQL only -------------------------------------------------------------------------------


async def test_postgres_keeps_its_tables_in_the_given_schema(pg_place: PgPlace) -> None:
    ledger = PostgresLedger(pg_place.dsn, schema=pg_place.schema)
    try:
        await ledger.write([rec("a"), rec("b")])
        stored = await pg_place.admin.fetchval(f'SELECT COUNT(*) FROM "{pg_place.schema}".usage_records')
        assert stored == 2
    finally:
        await ledger.close()


async def kill_connections(place: PgPlace, ledger: PostgresLedger) -> int:
    """Terminate every connection of ``ledger``'s pool, as a restart or a failover would."""
    killed = await place.admin.fetch(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE application_name = $1 AND datname = current_database() AND pid <> pg_backend_pid()",
        ledger.application_name,
    )
    assert all(row[0] for row in killed)
    return len(killed)


async def test_postgres_writes_again_after_its_connections_are_killed(pg_place: PgPlace) -> None:
    ledger = PostgresLedger(pg_place.dsn, schema=pg_place.schema, max_size=4, timeout=2.0)
    try:
        for round_ in range(3):
            # Several writes at once so the pool holds several connections, all of which then die.
            await asyncio.gather(*(ledger.write([rec(f"{round_}-warm-{i}", round_)]) for i in range(8)))
            assert await kill_connections(pg_place, ledger) >= 2

            batch = [rec(f"{round_}-after-1", round_ + 0.5), rec(f"{round_}-after-2", round_ + 0.5)]
            try:
                await ledger.write(batch)
            except LedgerUnavailableError:
                await ledger.write(batch)  # one retry at most
            await ledger.write(batch)  # a replay stores nothing twice
            # No stale connection is left behind to fail the next callers.
            assert await ledger.count(UsageQuery()) == 10 * (round_ + 1)
            assert await ledger.spend(BudgetScope(), None) == 100 * (round_ + 1)
            assert await ledger.budgets() == []
        assert len(set(await ids(ledger))) == 30
    finally:
        await ledger.close()


async def test_postgres_export_cut_off_by_a_killed_connection_raises_unavailable(pg_place: PgPlace) -> None:
    ledger = PostgresLedger(pg_place.dsn, schema=pg_place.schema, timeout=2.0)
    try:
        await ledger.write([rec(f"r{i:04d}", float(i)) for i in range(1500)])  # more than one fetch
        records = ledger.records(UsageQuery())
        assert isinstance(records, AsyncGenerator)
        async with aclosing(records):
            assert (await anext(records)).record_id == "r0000"
            assert await kill_connections(pg_place, ledger) >= 1
            with pytest.raises(LedgerUnavailableError, match="postgres"):
                async for _ in records:
                    pass
        await ledger.write([rec("after")])
        assert await ledger.count(UsageQuery()) == 1501
    finally:
        await ledger.close()


async def test_a_big_sqlite_batch_lets_the_event_loop_run_between_small_chunks(tmp_path: Path) -> None:
    # SQLite writes on the event loop's thread: a batch must not hold the loop for all its rows
    # (calls waiting on it would see the whole batch as added latency).
    ledger = SqliteLedger(str(tmp_path / "usage.db"))
    await ledger.open()
    turns = 0
    writing = True

    async def other_calls() -> None:
        nonlocal turns
        while writing:
            turns += 1
            await asyncio.sleep(0)

    try:
        rows = 10 * CHUNK_ROWS
        ticker = asyncio.ensure_future(other_calls())
        await asyncio.sleep(0)
        before = turns
        await ledger.write([rec(f"chunk-{i}", 1000.0 + i) for i in range(rows)])
        writing = False
        await ticker
        # One turn for the others at least between every two chunks.
        assert turns - before >= rows // CHUNK_ROWS - 1
        assert CHUNK_ROWS <= 32
        assert await ledger.count(UsageQuery()) == rows
    finally:
        await ledger.close()


async def test_sqlite_writes_go_on_while_a_checkpoint_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Under load a checkpoint took seconds (aiosqlite's thread gets little of a saturated core);
    # a recorder waiting for it filled its queue and spilled thousands of records.
    release = asyncio.Event()
    finished = asyncio.Event()
    started = 0
    real = sqlite_ledger._checkpoint

    async def held(db: aiosqlite.Connection) -> None:
        nonlocal started
        started += 1
        await release.wait()
        await real(db)
        finished.set()

    monkeypatch.setattr(sqlite_ledger, "_checkpoint", held)
    path = tmp_path / "usage.db"
    ledger = SqliteLedger(str(path))
    every = sqlite_ledger._CHECKPOINT_EVERY
    try:
        for i in range(3 * every):
            # Bounded, so a write that waits for the held checkpoint fails instead of hanging.
            await asyncio.wait_for(ledger.write([rec(f"r{i}-{j}", 1000.0 + i) for j in range(50)]), 5)
            await asyncio.sleep(0)  # the recorder's other work between batches
        # Every batch was stored while the first checkpoint waited, and none started beside it.
        assert started == 1
        assert await ledger.count(UsageQuery()) == 3 * every * 50
        in_file = path.stat().st_size
        release.set()
        await asyncio.wait_for(finished.wait(), 5)
        # The checkpoint moved the WAL's pages into the database file.
        assert path.stat().st_size > in_file
        for i in range(every):
            await ledger.write([rec(f"s{i}", 2000.0 + i)])
            await asyncio.sleep(0)
        assert started == 2
    finally:
        await ledger.close()


async def test_sqlite_close_ends_a_checkpoint_in_progress(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    entered = asyncio.Event()
    cancelled = False

    async def stuck(db: aiosqlite.Connection) -> None:
        nonlocal cancelled
        entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled = True
            raise

    monkeypatch.setattr(sqlite_ledger, "_checkpoint", stuck)
    path = tmp_path / "usage.db"
    ledger = SqliteLedger(str(path))
    every = sqlite_ledger._CHECKPOINT_EVERY
    for i in range(every):
        await ledger.write([rec(f"r{i}", 1000.0 + i)])
    await asyncio.wait_for(entered.wait(), 5)
    await asyncio.wait_for(ledger.close(), 5)
    assert cancelled
    with pytest.raises(LedgerUnavailableError, match="closed"):
        await ledger.write([rec("late")])
    reopened = SqliteLedger(str(path))
    try:
        assert await reopened.count(UsageQuery()) == every
    finally:
        await reopened.close()
