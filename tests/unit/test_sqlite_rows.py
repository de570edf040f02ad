"""The SQLite ledger's shaped INSERTs store exactly what ``record_row`` says a record's row is.

Each optional column is set alone, all together, none, and in random combinations; the rows are
written through ``statements`` into the table as migrated and read back column by column.
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
from omnirelay.usage.sqlite_rows import CHUNK_ROWS, OPTIONAL, shape_of, statements

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
    "cache": lambda r: r._replace(cache="miss"),
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
        record = SETS[column](record)
    return record


@pytest.fixture
def db() -> Iterator[sqlite3.Connection]:
    connection = sqlite3.connect(":memory:", isolation_level=None)
    for statement in MIGRATIONS[0].sqlite:
        connection.execute(statement)
    yield connection
    connection.close()


def store(db: sqlite3.Connection, records: list[UsageRecord]) -> None:
    for sql, rows in statements(records):
        db.executemany(sql, rows)


def stored(db: sqlite3.Connection) -> dict[str, tuple[object, ...]]:
    rows = db.execute(f"SELECT {', '.join(RECORD_COLUMNS)} FROM usage_records").fetchall()
    return {row[0]: tuple(row) for row in rows}


def test_every_optional_column_has_a_way_to_be_set_and_every_other_column_is_always_bound() -> None:
    assert set(SETS) == {o.column for o in OPTIONAL}
    assert set(sqlite_rows.ALWAYS) | set(SETS) == set(RECORD_COLUMNS)
    assert not set(sqlite_rows.ALWAYS) & set(SETS)


def test_a_plain_record_sets_no_optional_column_and_binds_only_the_others() -> None:
    shape, values = shape_of(plain(1))
    assert shape == 0
    assert len(values) == len(sqlite_rows.ALWAYS)


@pytest.mark.parametrize("column", [o.column for o in OPTIONAL])
def test_each_optional_column_set_alone_is_stored_as_record_row_says(
    db: sqlite3.Connection, column: str
) -> None:
    record = with_columns(1, (column,))
    shape, _ = shape_of(record)
    assert shape == 1 << [o.column for o in OPTIONAL].index(column)
    store(db, [record, plain(2)])
    rows = stored(db)
    assert rows[record.record_id] == record_row(record, int)
    assert rows[plain(2).record_id] == record_row(plain(2), int)
    # The column really differs from the plain record's, so the check above can fail.
    at = RECORD_COLUMNS.index(column)
    assert rows[record.record_id][at] != rows[plain(2).record_id][at]


def test_random_mixes_of_shapes_in_one_batch_are_all_stored_as_record_row_says(
    db: sqlite3.Connection,
) -> None:
    chooser = random.Random(20261207)
    names = tuple(SETS)
    records = [plain(0), with_columns(1, names)]
    for n in range(2, 400):
        records.append(with_columns(n, tuple(c for c in names if chooser.random() < 0.2)))
    # Many of one shape too, so whole chunks and a remainder both occur.
    records += [plain(n) for n in range(400, 400 + 2 * CHUNK_ROWS + 5)]
    store(db, records)
    rows = stored(db)
    assert len(rows) == len(records)
    for record in records:
        assert rows[record.record_id] == record_row(record, int), record.record_id


def test_rows_of_one_shape_go_a_chunk_to_a_statement_and_the_rest_row_by_row() -> None:
    records = [plain(n) for n in range(2 * CHUNK_ROWS + 3)]
    made = list(statements(records))
    # Two chunk statements with one flat parameter set each, then one row at a time.
    assert [len(rows) for _, rows in made] == [1, 1, 3]
    width = len(sqlite_rows.ALWAYS)
    assert [len(rows[0]) for _, rows in made] == [CHUNK_ROWS * width, CHUNK_ROWS * width, width]
    assert made[0][0].count("(?,") == CHUNK_ROWS
    assert made[2][0].count("(?,") == 1


def test_a_replayed_record_is_skipped_in_a_multi_row_statement(db: sqlite3.Connection) -> None:
    first = [plain(n) for n in range(CHUNK_ROWS)]
    store(db, first)
    # Fifteen replays and one new record share one statement: the new one still lands.
    again = [*first[1:], plain(99)]
    made = list(statements(again))
    assert [len(rows) for _, rows in made] == [1]
    assert made[0][0].count("(?,") == CHUNK_ROWS
    store(db, [*again, first[3]._replace(project="changed")])
    rows = stored(db)
    assert len(rows) == CHUNK_ROWS + 1
    assert rows[plain(99).record_id] == record_row(plain(99), int)
    assert rows[first[3].record_id] == record_row(first[3], int)
