"""The SQLite ledger's INSERTs: a row binds only what it does not share and does not leave at its default.

Binding one value costs Python's ``sqlite3`` about 0.9k instructions (callgrind: a
type check, the connection's mutex taken and released, and for text a copy into
memory SQLite allocates), and a typical record leaves half of its 30 columns at
their default: no trace id, no caller attribution, no cached or reasoning tokens,
no saving, OK, not streamed, and an attempt list the other columns already imply.
So records are sorted by their *shape* (which of those optional columns they set)
and each shape has its own statement with the defaults written in as SQL literals;
a flag that is set is a literal too.

Records of one batch mostly share their route as well: the requested and resolved
model, provider, deployment, price table and cache outcome, six strings. Records
of one shape and route go ``CHUNK_ROWS`` to a statement (one multi-row ``VALUES``,
which also saves the driver's per-row step and reset), and the route is bound once
for all of them, as numbered parameters ``?1`` to ``?6`` that every row names.

Measured in a loop of 500-row transactions (callgrind, the table as migrated, making
the records left out): 48.4k instructions a row binding all 30 columns one row at a
time, 36.3k with the defaults as literals, 31.0k with 16 rows to a statement. With
records like the bench's (each with its one implied attempt) that last was 35.2k, of
it 14.6k this module's Python; binding the route once a statement, and the rest of a
group as one statement rather than row by row, made it 26.4k (11.1k Python).

What a row stores is exactly what ``schema.record_row(record, int)`` gives; a
test holds every shape to that.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

from omnirelay.usage.records import UsageRecord
from omnirelay.usage.schema import NO_TAGS, attempts_text, tags_text

# Rows of one shape and route in one INSERT, a power of two (``statements`` halves it). SQLite
# (before 3.32) takes at most 999 parameters a statement: 6 + 16 rows of at most 23 stay far below
# it. The writer yields to the event loop between statements.
CHUNK_ROWS: Final = 16

# Bound once a statement, as ?1 to ?6, in this order.
SHARED: Final = (
    "requested_model",
    "resolved_model",
    "provider",
    "deployment",
    "price_table_version",
    "cache",
)

# Bound for every row, in this order.
ALWAYS: Final = (
    "record_id",
    "request_id",
    "time",
    "attempt_count",
    "latency_seconds",
    "input_tokens",
    "output_tokens",
    "cost_micros",
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
    OptionalColumn("ttft_seconds", "NULL"),
    OptionalColumn("cached_input_tokens", "0"),
    OptionalColumn("cache_write_input_tokens", "0"),
    OptionalColumn("reasoning_tokens", "0"),
    OptionalColumn("estimated", "0", "1"),
    OptionalColumn("saved_cost_micros", "0"),
    OptionalColumn("tags", f"'{NO_TAGS}'"),
    OptionalColumn("attempts", "''"),
)
_COLUMNS: Final = ", ".join((*SHARED, *ALWAYS, *(o.column for o in OPTIONAL)))
_SHARED_MARKS: Final = tuple(f"?{n}" for n in range(1, len(SHARED) + 1))

# A record's group: its shape, then its SHARED values.
Group = tuple[int, str, str, str, str, str, str]


def shape_of(r: UsageRecord) -> tuple[Group, list[Any]]:
    """``r``'s group (its shape: which optional columns it sets, a bit each as in OPTIONAL; then
    what it binds once a statement) and the values it binds for itself."""
    # One unpacking instead of a descriptor call per field read (a NamedTuple's fields are those).
    (
        record_id,
        request_id,
        time,
        requested_model,
        status_code,
        trace_id,
        project,
        user,
        tags,
        tenant,
        resolved_model,
        provider,
        deployment,
        attempts,
        u,
        price_table_version,
        latency_seconds,
        ttft_seconds,
        cache,
        saved_cost_micros,
        streamed,
        fallback_used,
        operation,
    ) = r
    values: list[Any] = [
        record_id,
        request_id,
        time,
        len(attempts),
        latency_seconds,
        u.input_tokens,
        u.output_tokens,
        u.cost_micros,
    ]
    shape = 0
    if trace_id:
        shape = 1
        values.append(trace_id)
    if project:
        shape |= 2
        values.append(project)
    if user:
        shape |= 4
        values.append(user)
    if tenant:
        shape |= 8
        values.append(tenant)
    if status_code:
        shape |= 16
        values.append(status_code)
    if operation != "complete":
        shape |= 32
        values.append(operation)
    if streamed:
        shape |= 64
    if fallback_used:
        shape |= 128
    if ttft_seconds is not None:
        shape |= 256
        values.append(ttft_seconds)
    if u.cached_input_tokens:
        shape |= 512
        values.append(u.cached_input_tokens)
    if u.cache_write_input_tokens:
        shape |= 1024
        values.append(u.cache_write_input_tokens)
    if u.reasoning_tokens:
        shape |= 2048
        values.append(u.reasoning_tokens)
    if u.estimated:
        shape |= 4096
    if saved_cost_micros:
        shape |= 8192
        values.append(saved_cost_micros)
    if tags:
        shape |= 16384
        values.append(tags_text(r))
    attempts_column = attempts_text(r)
    if attempts_column:
        shape |= 32768
        values.append(attempts_column)
    group = (shape, requested_model, resolved_model, provider, deployment, price_table_version, cache)
    return group, values


@functools.lru_cache(maxsize=512)
def insert(shape: int, rows: int) -> str:
    """The INSERT for ``rows`` rows of one shape and route (a replayed record id is skipped, as
    everywhere): the route's six parameters first, then each row's own."""
    n = len(SHARED)
    tuples = []
    for _ in range(rows):
        marks = list(_SHARED_MARKS)
        for _column in ALWAYS:
            n += 1
            marks.append(f"?{n}")
        for i, o in enumerate(OPTIONAL):
            if not shape >> i & 1:
                marks.append(o.default)
            elif o.given == "?":
                n += 1
                marks.append(f"?{n}")
            else:
                marks.append(o.given)
        tuples.append(f"({', '.join(marks)})")
    values = ", ".join(tuples)
    return f"INSERT INTO usage_records ({_COLUMNS}) VALUES {values} ON CONFLICT (record_id) DO NOTHING"


def statements(records: Sequence[UsageRecord]) -> Iterator[tuple[str, list[Any]]]:
    """``(sql, parameters)`` to execute in order to store ``records``: one statement for each
    ``CHUNK_ROWS`` records of a shape and route, then the rest in statements of 8, 4, 2 and 1 rows
    (as many as it takes), so that a shape has at most five statements for the driver to keep
    compiled (it keeps 128)."""
    groups: dict[Group, list[Any]] = {}
    for r in records:
        group, values = shape_of(r)
        rows = groups.get(group)
        if rows is None:
            groups[group] = [values]
        else:
            rows.append(values)
    for group, rows in groups.items():
        shared = list(group[1:])
        start, left, size = 0, len(rows), CHUNK_ROWS
        while left:
            while size > left:
                size >>= 1
            parameters = shared.copy()
            for values in rows[start : start + size]:
                parameters += values
            yield insert(group[0], size), parameters
            start += size
            left -= size
