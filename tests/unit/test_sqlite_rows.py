"""The SQLite ledger's shaped INSERTs store exactly what ``record_row`` says a record's row is.

Each optional column is set alone, all together, none, and in random combinations, and so is each
column a statement binds once for all its rows (the route); the rows are written through
``statements`` into the table as migrated and read back column by column.
"""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Callable, Iterator

import pytest

from omnirelay.domain import TokenUsage
from omnirelay.usage import sqlite_rows
from omnirelay.usage.records import BilledAttempt, UsageRecord
from omnirelay.usage.schema import MIGRATIONS, RECORD_COLUMNS, record_row
from omnirelay.usage.sqlite_rows import CHUNK_ROWS, OPTIONAL, SHARED, shape_of, statements

USAGE = TokenUsage(input_tokens=12, output_tokens=34, cost_micros=56)

# What a record that sets each optional column looks like, as a change to a plain record.
# Falsy values that are not the default (a ttft of 0.0, an empty operation) must still be stored.
Change = Callable[[UsageRecord], UsageRecord]
SETS: dict[str, Change] = {
    "trace_id": lambda r: r._replace(trace_id="0af7651916cd43dd8448eb211c80319c"),
    "project": lambda r: r._replace(project="alpha"),
    "user_name": lambda r: r._replace(user="ann@example.com"),
    "tenant": lambda r: r._replace(tenant="acme"),
    "status_code": lambda r: r._replace(status_code=14),
    "operation": lambda r: r._replace(operation="stream"),
    "streamed": lambda r: r._replace(streamed=True),
    "fallback_used": lambda r: r._replace(fallback_used=True),
    "ttft_seconds": lambda r: r._replace(ttft_seconds=0.0),
    "cached_input_tokens": lambda r: _retokened(r, cached_input_tokens=7),
    "cache_write_input_tokens": lambda r: _retokened(r, cache_write_input_tokens=3),
    "reasoning_tokens": lambda r: _retokened(r, reasoning_tokens=5),
    "estimated": lambda r: _retokened(r, estimated=True),
    "saved_cost_micros": lambda r: r._replace(saved_cost_micros=99),
    "tags": lambda r: r._replace(tags=(("env", "prod"), ('we"ird', "ünï"))),
    "attempts": lambda r: r._replace(
        attempts=(
            BilledAttempt("m", "azure", "azure-west", "rate_limited", "429", 0.25, "az-1"),
            *r.attempts,
        )
    ),
}


# What a record of another route looks like: each of these makes a group (a statement) of its own.
# The attempt moves with the record's route, so its attempt list stays the implied one.
ROUTES: dict[str, Change] = {
    "requested_model": lambda r: r._replace(requested_model="fast"),
    "resolved_model": lambda r: _rerouted(r, model="gpt-4o-mini"),
    "provider": lambda r: _rerouted(r, provider="azure"),
    "deployment": lambda r: _rerouted(r, deployment="openai-west"),
    "price_table_version": lambda r: r._replace(price_table_version="v2"),
    "cache": lambda r: r._replace(cache="miss"),
}


def _rerouted(r: UsageRecord, model: str = "", provider: str = "", deployment: str = "") -> UsageRecord:
    """``r`` on another route (what is given), its one attempt with it."""
    model = model or r.resolved_model
    provider = provider or r.provider
    deployment = deployment or r.deployment
    attempt = r.attempts[0]._replace(model=model, provider=provider, deployment=deployment)
    return r._replace(resolved_model=model, provider=provider, deployment=deployment, attempts=(attempt,))


def _retokened(r: UsageRecord, **changes: object) -> UsageRecord:
    """``r`` with its usage changed, and its attempts' where they carried the same usage (so the
    attempt list stays the one the columns imply)."""
    fields = {name: getattr(r.usage, name) for name in r.usage.__struct_fields__}
    fields.update(changes)
    usage = TokenUsage(**fields)
    attempts = tuple(a._replace(usage=usage) if a.usage == r.usage else a for a in r.attempts)
    return r._replace(usage=usage, attempts=attempts)


def plain(n: int) -> UsageRecord:
    """A record that leaves every optional column at its default (one attempt, the implied one)."""
    return UsageRecord(
        record_id=f"rec-{n:05d}",
        request_id=f"req-{n}",
        time=1_760_000_000.0 + n,
        requested_model="smart",
        status_code=0,
        resolved_model="gpt-4o",
        provider="openai",
        deployment="openai-east",
        attempts=(BilledAttempt("gpt-4o", "openai", "openai-east", "success", usage=USAGE),),
        usage=USAGE,
        price_table_version="v1",
        latency_seconds=0.125,
    )


def with_columns(n: int, columns: tuple[str, ...]) -> UsageRecord:
    record = plain(n)
    for column in columns:
        record = {**SETS, **ROUTES}[column](record)
    return record


@pytest.fixture
def db() -> Iterator[sqlite3.Connection]:
    connection = sqlite3.connect(":memory:", isolation_level=None)
    for statement in MIGRATIONS[0].sqlite:
        connection.execute(statement)
    yield connection
    connection.close()


def store(db: sqlite3.Connection, records: list[UsageRecord]) -> None:
    for sql, parameters in statements(records):
        db.execute(sql, parameters)


def stored(db: sqlite3.Connection) -> dict[str, tuple[object, ...]]:
    rows = db.execute(f"SELECT {', '.join(RECORD_COLUMNS)} FROM usage_records").fetchall()
    return {row[0]: tuple(row) for row in rows}


def test_every_optional_column_has_a_way_to_be_set_and_every_other_column_is_always_bound() -> None:
    assert set(SETS) == {o.column for o in OPTIONAL}
    assert set(ROUTES) == set(SHARED)
    assert set(sqlite_rows.ALWAYS) | set(SHARED) | set(SETS) == set(RECORD_COLUMNS)
    assert len(sqlite_rows.ALWAYS) + len(SHARED) + len(SETS) == len(RECORD_COLUMNS)


def test_a_plain_record_sets_no_optional_column_and_binds_only_the_others() -> None:
    group, values = shape_of(plain(1))
    assert group == (0, "smart", "gpt-4o", "openai", "openai-east", "v1", "")
    assert len(values) == len(sqlite_rows.ALWAYS)


@pytest.mark.parametrize("column", [o.column for o in OPTIONAL])
def test_each_optional_column_set_alone_is_stored_as_record_row_says(
    db: sqlite3.Connection, column: str
) -> None:
    record = with_columns(1, (column,))
    group, _ = shape_of(record)
    assert group[0] == 1 << [o.column for o in OPTIONAL].index(column)
    store(db, [record, plain(2)])
    rows = stored(db)
    assert rows[record.record_id] == record_row(record, int)
    assert rows[plain(2).record_id] == record_row(plain(2), int)
    # The column really differs from the plain record's, so the check above can fail.
    at = RECORD_COLUMNS.index(column)
    assert rows[record.record_id][at] != rows[plain(2).record_id][at]


def test_random_mixes_of_shapes_and_routes_in_one_batch_are_all_stored_as_record_row_says(
    db: sqlite3.Connection,
) -> None:
    chooser = random.Random(20261207)
    names = (*SETS, *ROUTES)
    records = [plain(0), with_columns(1, names)]
    for n in range(2, 400):
        records.append(with_columns(n, tuple(c for c in names if chooser.random() < 0.15)))
    # Many of one shape and route too, so whole chunks and a rest both occur.
    records += [plain(n) for n in range(400, 400 + 2 * CHUNK_ROWS + 5)]
    store(db, records)
    rows = stored(db)
    assert len(rows) == len(records)
    for record in records:
        assert rows[record.record_id] == record_row(record, int), record.record_id


@pytest.mark.parametrize("column", SHARED)
def test_a_record_of_another_route_gets_a_statement_binding_its_route_once(
    db: sqlite3.Connection, column: str
) -> None:
    records = [ROUTES[column](plain(n)) if n % 2 else plain(n) for n in range(16)]
    made = list(statements(records))
    # Two groups, each one statement: its route's six values, then eight rows' own.
    width = len(sqlite_rows.ALWAYS)
    assert [len(parameters) for _, parameters in made] == [len(SHARED) + 8 * width] * 2
    firsts = [tuple(parameters[: len(SHARED)]) for _, parameters in made]
    assert firsts[0] == tuple(record_row(records[0], int)[RECORD_COLUMNS.index(c)] for c in SHARED)
    assert firsts[1] == tuple(record_row(records[1], int)[RECORD_COLUMNS.index(c)] for c in SHARED)
    assert firsts[0] != firsts[1]
    store(db, records)
    rows = stored(db)
    for record in records:
        assert rows[record.record_id] == record_row(record, int), record.record_id


def test_rows_of_one_shape_and_route_go_a_chunk_to_a_statement_and_the_rest_in_halves() -> None:
    records = [plain(n) for n in range(2 * CHUNK_ROWS + 3)]
    made = list(statements(records))
    width = len(sqlite_rows.ALWAYS)
    routed = len(SHARED)
    assert [len(parameters) for _, parameters in made] == [
        routed + CHUNK_ROWS * width,
        routed + CHUNK_ROWS * width,
        routed + 2 * width,
        routed + width,
    ]
    # Every row names the route's parameters; each row's own are numbered after the last row's.
    assert [sql.count("(?1, ?2, ?3, ?4, ?5, ?6, ?") for sql, _ in made] == [CHUNK_ROWS, CHUNK_ROWS, 2, 1]
    assert f"?{routed + CHUNK_ROWS * width}," in made[0][0]
    assert f"?{routed + CHUNK_ROWS * width + 1}" not in made[0][0]


def test_a_shape_needs_at_most_five_statements_whatever_the_count(db: sqlite3.Connection) -> None:
    sizes: set[int] = set()
    for count in range(1, 3 * CHUNK_ROWS + 1):
        made = list(statements([plain(n) for n in range(count)]))
        rows = [sql.count("(?1,") for sql, _ in made]
        assert sum(rows) == count
        assert rows == sorted(rows, reverse=True)
        assert len(made) == count // CHUNK_ROWS + bin(count % CHUNK_ROWS).count("1")
        sizes.update(rows)
    assert sizes == {16, 8, 4, 2, 1}
    records = [plain(n) for n in range(CHUNK_ROWS + 15)]
    store(db, records)
    rows_stored = stored(db)
    assert len(rows_stored) == len(records)
    assert all(rows_stored[r.record_id] == record_row(r, int) for r in records)


def test_a_replayed_record_is_skipped_in_a_multi_row_statement(db: sqlite3.Connection) -> None:
    first = [plain(n) for n in range(CHUNK_ROWS)]
    store(db, first)
    # Fifteen replays and one new record share one statement: the new one still lands.
    again = [*first[1:], plain(99)]
    made = list(statements(again))
    assert len(made) == 1
    assert made[0][0].count("(?1,") == CHUNK_ROWS
    store(db, [*again, first[3]._replace(project="changed")])
    rows = stored(db)
    assert len(rows) == CHUNK_ROWS + 1
    assert rows[plain(99).record_id] == record_row(plain(99), int)
    assert rows[first[3].record_id] == record_row(first[3], int)
