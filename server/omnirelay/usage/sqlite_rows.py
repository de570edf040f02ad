"""The SQLite ledger's INSERTs: a record binds only the columns it does not leave at their default.

Binding one value costs Python's ``sqlite3`` about 0.9k instructions (callgrind: a
type check, the connection's mutex taken and released, a copy), and a typical
record leaves half of its 30 columns at their default: no trace id, no caller
attribution, no cached or reasoning tokens, no saving, OK, not streamed, and an
attempt list the other columns already imply. So records are sorted by their
*shape* (which of those optional columns they set) and each shape has its own
statement with the defaults written in as SQL literals; a flag that is set is a
literal too. Rows of one shape go ``CHUNK_ROWS`` to a statement (one multi-row
``VALUES``), which also saves the driver's per-row step and reset.

Measured in a loop of 500-row transactions (callgrind, the table as migrated):
48.4k instructions a row binding all 30 columns one row at a time, 36.3k with the
defaults as literals, 31.0k with 16 rows to a statement.

What a row stores is exactly what ``schema.record_row(record, int)`` gives; a
test holds every shape to that.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

from omnirelay.usage.records import UsageRecord
from omnirelay.usage.schema import NO_TAGS, attempts_text, tags_text

# Rows of one shape in one INSERT. SQLite (before 3.32) takes at most 999 parameters a statement:
# 16 rows of 30 stay far below it. The writer yields to the event loop between statements.
CHUNK_ROWS: Final = 16

# Bound for every record, in this order.
ALWAYS: Final = (
    "record_id",
    "request_id",
    "time",
    "requested_model",
    "resolved_model",
    "provider",
    "deployment",
    "attempt_count",
    "latency_seconds",
    "input_tokens",
    "output_tokens",
    "cost_micros",
    "price_table_version",
)


@dataclass(frozen=True, slots=True)
class OptionalColumn:
    """A column most records leave at ``default``; ``given`` is what a record that sets it stores
    (a placeholder, or a literal for a flag, whose only other value is 1)."""

    column: str
    default: str
    given: str = "?"


# In bit order: bit i of a shape is OPTIONAL[i]. ``shape_of`` tests and binds them in this order.
OPTIONAL: Final = (
    OptionalColumn("trace_id", "''"),
    OptionalColumn("project", "''"),
    OptionalColumn("user_name", "''"),
    OptionalColumn("tenant", "''"),
    OptionalColumn("status_code", "0"),
    OptionalColumn("operation", "'complete'"),
    OptionalColumn("streamed", "0", "1"),
    OptionalColumn("fallback_used", "0", "1"),
    OptionalColumn("cache", "''"),
    OptionalColumn("ttft_seconds", "NULL"),
    OptionalColumn("cached_input_tokens", "0"),
    OptionalColumn("cache_write_input_tokens", "0"),
    OptionalColumn("reasoning_tokens", "0"),
    OptionalColumn("estimated", "0", "1"),
    OptionalColumn("saved_cost_micros", "0"),
    OptionalColumn("tags", f"'{NO_TAGS}'"),
    OptionalColumn("attempts", "''"),
)
_COLUMNS: Final = ", ".join((*ALWAYS, *(o.column for o in OPTIONAL)))


def shape_of(r: UsageRecord) -> tuple[int, list[Any]]:
    """Which optional columns ``r`` sets (a bit each, as in OPTIONAL), and the values it binds."""
    u = r.usage
    values: list[Any] = [
        r.record_id,
        r.request_id,
        r.time,
        r.requested_model,
        r.resolved_model,
        r.provider,
        r.deployment,
        len(r.attempts),
        r.latency_seconds,
        u.input_tokens,
        u.output_tokens,
        u.cost_micros,
        r.price_table_version,
    ]
    shape = 0
    if r.trace_id:
        shape = 1
        values.append(r.trace_id)
    if r.project:
        shape |= 2
        values.append(r.project)
    if r.user:
        shape |= 4
        values.append(r.user)
    if r.tenant:
        shape |= 8
        values.append(r.tenant)
    if r.status_code:
        shape |= 16
        values.append(r.status_code)
    if r.operation != "complete":
        shape |= 32
        values.append(r.operation)
    if r.streamed:
        shape |= 64
    if r.fallback_used:
        shape |= 128
    if r.cache:
        shape |= 256
        values.append(r.cache)
    if r.ttft_seconds is not None:
        shape |= 512
        values.append(r.ttft_seconds)
    if u.cached_input_tokens:
        shape |= 1024
        values.append(u.cached_input_tokens)
    if u.cache_write_input_tokens:
        shape |= 2048
        values.append(u.cache_write_input_tokens)
    if u.reasoning_tokens:
        shape |= 4096
        values.append(u.reasoning_tokens)
    if u.estimated:
        shape |= 8192
    if r.saved_cost_micros:
        shape |= 16384
        values.append(r.saved_cost_micros)
    if r.tags:
        shape |= 32768
        values.append(tags_text(r))
    attempts = attempts_text(r)
    if attempts:
        shape |= 65536
        values.append(attempts)
    return shape, values


@functools.lru_cache(maxsize=256)
def insert(shape: int, rows: int) -> str:
    """The INSERT for ``rows`` rows of one shape (a replayed record id is skipped, as everywhere)."""
    optional = tuple(o.given if shape >> i & 1 else o.default for i, o in enumerate(OPTIONAL))
    one = ", ".join(("?",) * len(ALWAYS) + optional)
    tuples = ", ".join((f"({one})",) * rows)
    return f"INSERT INTO usage_records ({_COLUMNS}) VALUES {tuples} ON CONFLICT (record_id) DO NOTHING"


def statements(records: Sequence[UsageRecord]) -> Iterator[tuple[str, list[list[Any]]]]:
    """``(sql, parameter sets)`` to pass to ``executemany`` in order to store ``records``: a
    statement of ``CHUNK_ROWS`` rows once per whole chunk of a shape, then one row at a time."""
    shapes: dict[int, list[list[Any]]] = {}
    for r in records:
        shape, values = shape_of(r)
        rows = shapes.get(shape)
        if rows is None:
            shapes[shape] = [values]
        else:
            rows.append(values)
    flatten = itertools.chain.from_iterable
    for shape, rows in shapes.items():
        whole = len(rows) - len(rows) % CHUNK_ROWS
        if whole:
            sql = insert(shape, CHUNK_ROWS)
            for start in range(0, whole, CHUNK_ROWS):
                yield sql, [list(flatten(rows[start : start + CHUNK_ROWS]))]
        if whole < len(rows):
            yield insert(shape, 1), rows[whole:]
