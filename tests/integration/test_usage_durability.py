"""The usage records' durability promises, proved on the real ``omnirelay serve`` under load.

Each test runs the command in a child process, drives it with 64 concurrent grpc.aio callers
(unary and streamed, every call with its own ``x-request-id``), does something to it (SIGTERM,
SIGKILL, a PostgreSQL outage) and then reads the ledger and the spill file directly:

* SIGTERM under load loses nothing: every call that reached the handler has exactly one record.
* SIGKILL loses at most the records of calls that ended within the last flush interval (plus a
  margin for a busy event loop), and never duplicates one.
* A PostgreSQL outage loses nothing: records spill while it is down and are replayed once it is back.

Which calls reached the handler, from the client's side: the gateway echoes the call's
``x-request-id`` in the trailing metadata of every answer its handler produced, OK
(``route_metadata``) or an error (the edge's ``_abort``). A call refused by the transport once
shutdown began never reached the handler and has no such trailer: UNAVAILABLE ("failed to
connect to all addresses ... Connection refused", once the listener closed), or CANCELLED with
details "CANCELLED" (grpc core cancels a call that arrived after ``server.stop`` began and was
never handed to a handler). With the default 10 s shutdown grace and calls of ~0.07 s no
handler is ever cancelled by the grace running out, so "answered" (the id echoed) and "reached
the handler" are the same set here, and the tests check both directions: every answered call
has exactly one record, and no refused call has any.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import re
import signal
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import asyncpg
import grpc
import pytest
from grpc import aio

from omnirelay.usage.layer import BATCH_SECONDS
from omnirelay.usage.ledger import UsageQuery
from omnirelay.usage.postgres import PostgresLedger
from omnirelay.usage.records import UsageRecord
from omnirelay.usage.spill import REPLAYING_SUFFIX
from omnirelay.usage.sqlite import SqliteLedger
from omnirelay_client.v1 import completion_pb2_grpc, stream_pb2_grpc
from tests.helpers import request, stream_request
from tests.integration.serve import Served, start
from tests.integration.tcp_proxy import TcpProxy

pytestmark = pytest.mark.subprocess

CALLERS = 64
CHANNELS = 4  # connections the callers share (HTTP/2 multiplexes the rest)
LOAD_SECONDS = 1.5
MIN_CALLS = 100  # fewer calls than this would not be a load (500 to 2,500 are usual on 2 cores)
CALL_TIMEOUT = 15.0
FLUSH_INTERVAL = 0.2
# What the server's loop may lag behind a flush tick, plus one ledger write, on a busy 2-core machine.
KILL_MARGIN = 0.25
REQUEST_ID = "x-request-id"

# Calls of ~0.07 s (20 ms to the first token, 24 tokens at 500/s), so many are always in flight;
# a drain delay, so calls that start after SIGTERM are still taken (and must be recorded too).
LOAD_ENV = {
    "OMNIRELAY_PROVIDERS__LOCAL__TTFT_MS": "20",
    "OMNIRELAY_PROVIDERS__LOCAL__TOKENS_PER_SECOND": "500",
    "OMNIRELAY_SERVER__SHUTDOWN_DRAIN_SECONDS": "0.5",
    "OMNIRELAY_USAGE__FLUSH_INTERVAL_SECONDS": str(FLUSH_INTERVAL),
    # INFO, not the development profile's DEBUG: nothing reads the child's stderr until it exits.
    "OMNIRELAY_LOGGING__LEVEL": "INFO",
}

_CLOSED = re.compile(
    r"usage recorder closed: (?P<written>\d+) written, (?P<spilled>\d+) spilled, "
    r"(?P<replayed>\d+) replayed, (?P<waiting>\d+) waiting in .*, (?P<lost>\d+) lost"
)


# --- the load ---------------------------------------------------------------------------------


@dataclass
class Call:
    request_id: str
    streamed: bool
    started: float  # the client's monotonic clock
    ended: float = math.nan
    code: grpc.StatusCode | None = None
    details: str = ""
    echoed: str = ""  # the x-request-id in the answer's trailers: set only by the server's handler

    @property
    def answered(self) -> bool:
        """The server's handler produced the final status (OK or an error)."""
        return bool(self.echoed)

    @property
    def refused(self) -> bool:
        """Turned away by the transport, never handed to a handler (see the module docstring)."""
        return not self.echoed and self.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)

    def __str__(self) -> str:
        kind = "stream" if self.streamed else "unary"
        code = self.code.name if self.code is not None else "-"
        return f"{self.request_id} ({kind}, {code} {self.details!r}, echoed {self.echoed!r})"


def _echoed(metadata: aio.Metadata | None) -> str:
    for key, value in metadata or ():
        if key == REQUEST_ID and isinstance(value, str):
            return value
    return ""


@dataclass
class Load:
    """CALLERS callers, each calling in a loop (alternating unary and streamed) until refused."""

    address: str
    prefix: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    calls: list[Call] = field(default_factory=list)
    _channels: list[aio.Channel] = field(default_factory=list)
    _callers: list[asyncio.Task[None]] = field(default_factory=list)

    async def __aenter__(self) -> Load:
        self._channels = [aio.insecure_channel(self.address) for _ in range(CHANNELS)]
        self._callers = [asyncio.create_task(self._caller(n)) for n in range(CALLERS)]
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for task in self._callers:
            task.cancel()
        await asyncio.gather(*self._callers, return_exceptions=True)
        for channel in self._channels:
            await channel.close()

    async def until_refused(self, within: float = 30.0) -> None:
        """Wait until every caller was refused once (the server stopped taking calls)."""
        done, pending = await asyncio.wait(self._callers, timeout=within)
        assert not pending, f"{len(pending)} callers were still being served {within}s later"
        for task in done:
            task.result()  # a caller's own failure is the test's

    async def _caller(self, n: int) -> None:
        channel = self._channels[n % CHANNELS]
        unary = completion_pb2_grpc.CompletionServiceStub(channel)
        streaming = stream_pb2_grpc.StreamCompletionServiceStub(channel)
        for i in range(1_000_000):
            streamed = (n + i) % 2 == 1
            call = Call(f"{self.prefix}-{n}-{i}", streamed, time.monotonic())
            self.calls.append(call)
            metadata = ((REQUEST_ID, call.request_id),)
            try:
                if streamed:
                    stream = streaming.StreamComplete(
                        stream_request(), metadata=metadata, timeout=CALL_TIMEOUT
                    )
                    async for _ in stream:
                        pass
                    call.ended = time.monotonic()
                    call.code = await stream.code()
                    call.echoed = _echoed(await stream.trailing_metadata())
                else:
                    single = unary.Complete(request(), metadata=metadata, timeout=CALL_TIMEOUT)
                    await single
                    call.ended = time.monotonic()
                    call.code = await single.code()
                    call.echoed = _echoed(await single.trailing_metadata())
            except aio.AioRpcError as exc:
                call.ended = time.monotonic()
                call.code = exc.code()
                call.details = exc.details() or ""
                call.echoed = _echoed(exc.trailing_metadata())
            if call.refused:
                return

    def by_id(self) -> dict[str, Call]:
        calls = {c.request_id: c for c in self.calls}
        assert len(calls) == len(self.calls)
        return calls


# --- the server, the ledger, the spill file -------------------------------------------------------


@contextlib.asynccontextmanager
async def serving(env: Mapping[str, str]) -> AsyncIterator[Served]:
    """``omnirelay serve`` with the load settings; killed if the test leaves it running.

    Started from a thread, not to hold up the test's event loop while the server starts."""
    served = await asyncio.to_thread(start, "--profile", "development", extra_env={**LOAD_ENV, **env})
    try:
        yield served
    finally:
        if served.process.poll() is None:
            served.process.kill()
            await asyncio.to_thread(served.stop, sig=None)
            print(f"omnirelay serve was killed; its stderr:\n{served.stderr}")


async def wait_exit(served: Served, *, signalled: signal.Signals | None = None) -> int:
    return await asyncio.to_thread(served.stop, 30, signalled)


def sqlite_env(directory: Path) -> dict[str, str]:
    return {
        "OMNIRELAY_USAGE__SQLITE_PATH": str(directory / "usage.db"),
        "OMNIRELAY_USAGE__SPILL_PATH": str(directory / "usage-spill.jsonl"),
        "OMNIRELAY_METRICS__PORT": "0",
    }


def spill_files(spill: Path) -> list[Path]:
    """The spill file and a claim of it being replayed, those that exist and are not empty."""
    paths = (spill, spill.with_name(spill.name + REPLAYING_SUFFIX))
    return [p for p in paths if p.exists() and p.stat().st_size > 0]


def spilled(spill: Path) -> list[UsageRecord]:
    """The records in the spill file and a claim of it being replayed (complete lines only)."""
    found: list[UsageRecord] = []
    for path in spill_files(spill):
        for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
            if line.endswith("\n") and line.strip():
                found.append(UsageRecord.from_json(line))
    return found


async def ledger_records(ledger: SqliteLedger | PostgresLedger) -> list[UsageRecord]:
    try:
        records = [r async for r in ledger.records(UsageQuery())]
        assert await ledger.count(UsageQuery()) == len(records)
        return records
    finally:
        await ledger.close()


def by_request_id(*sources: list[UsageRecord]) -> dict[str, list[UsageRecord]]:
    """Records by request id, over the union of the sources (a record is one record_id, wherever kept)."""
    unique = {r.record_id: r for source in sources for r in source}
    grouped: dict[str, list[UsageRecord]] = collections.defaultdict(list)
    for record in unique.values():
        grouped[record.request_id].append(record)
    return grouped


def shutdown_report(stderr: str) -> dict[str, int]:
    match = _CLOSED.search(stderr)
    assert match is not None, f"no 'usage recorder closed' line in the server's stderr:\n{stderr}"
    return {k: int(v) for k, v in match.groupdict().items()}


def assert_nothing_lost(load: Load, records: dict[str, list[UsageRecord]]) -> None:
    """Every answered call has exactly one record (of its outcome), no refused call has one, and
    there is no record of anything else."""
    calls = load.by_id()
    odd = [str(c) for c in calls.values() if not c.answered and not c.refused]
    assert not odd, f"calls neither answered by the server nor refused by the transport: {odd[:10]}"
    strangers = sorted(set(records) - set(calls))
    assert not strangers, f"records of calls never sent: {strangers[:10]}"
    doubled = {rid: len(rs) for rid, rs in records.items() if len(rs) > 1}
    assert not doubled, f"{len(doubled)} calls recorded more than once: {list(doubled.items())[:10]}"
    answered = [c for c in calls.values() if c.answered]
    wrong_echo = [str(c) for c in answered if c.echoed != c.request_id]
    assert not wrong_echo, f"answers echoing another call's id: {wrong_echo[:10]}"
    missing = [str(c) for c in answered if c.request_id not in records]
    assert not missing, f"{len(missing)} of {len(answered)} answered calls have no record: {missing[:10]}"
    refused_recorded = [str(c) for c in calls.values() if c.refused and c.request_id in records]
    assert not refused_recorded, f"refused calls that have a record after all: {refused_recorded[:10]}"
    for call in answered:
        (record,) = records[call.request_id]
        assert call.code is not None
        assert record.status_code == call.code.value[0], (str(call), record)
        assert record.streamed == call.streamed, (str(call), record)


# --- the tests --------------------------------------------------------------------------------


async def test_sigterm_under_load_loses_no_record(tmp_path: Path) -> None:
    async with serving(sqlite_env(tmp_path)) as served:
        async with Load(served.address) as load:
            await asyncio.sleep(LOAD_SECONDS)
            terminated = time.monotonic()
            served.process.send_signal(signal.SIGTERM)
            await load.until_refused()
        assert await wait_exit(served) == 0, served.stderr
    report = shutdown_report(served.stderr)
    records = by_request_id(
        await ledger_records(SqliteLedger(str(tmp_path / "usage.db"))),
        spilled(tmp_path / "usage-spill.jsonl"),
    )

    calls = load.calls
    answered = [c for c in calls if c.answered]
    in_flight = [c for c in answered if c.started < terminated < c.ended]
    after = [c for c in answered if c.started > terminated]
    refused = [c for c in calls if c.refused]
    refusals = collections.Counter(f"{c.code.name if c.code else None} {c.details[:30]}" for c in refused)
    print(
        f"SIGTERM: {len(calls)} calls, {len(answered)} answered ({len(in_flight)} in flight at the signal, "
        f"{len(after)} started after it), {len(refused)} refused {dict(refusals)}; "
        f"{sum(map(len, records.values()))} records; server: {report}"
    )
    assert report["lost"] == 0, served.stderr
    assert_nothing_lost(load, records)
    # The test proves something only if it caught calls at every stage of the shutdown.
    assert in_flight, "no call was in flight when SIGTERM came"
    assert after, "no call started during the shutdown drain"
    assert refused, "no call was refused"
    assert {c.streamed for c in answered} == {False, True}
    assert len(answered) >= MIN_CALLS, f"only {len(answered)} calls answered: not a load"


async def test_sigkill_loses_at_most_the_last_flush_interval(tmp_path: Path) -> None:
    async with serving(sqlite_env(tmp_path)) as served:
        async with Load(served.address) as load:
            await asyncio.sleep(LOAD_SECONDS)
            killed = time.monotonic()
            served.process.send_signal(signal.SIGKILL)
            await load.until_refused()
        assert await wait_exit(served, signalled=None) == -signal.SIGKILL
    records = by_request_id(
        await ledger_records(SqliteLedger(str(tmp_path / "usage.db"))),
        spilled(tmp_path / "usage-spill.jsonl"),
    )

    calls = load.by_id()
    strangers = sorted(set(records) - set(calls))
    assert not strangers, f"records of calls never sent: {strangers[:10]}"
    doubled = {rid: len(rs) for rid, rs in records.items() if len(rs) > 1}
    assert not doubled, f"calls recorded more than once: {list(doubled.items())[:10]}"
    ok = [c for c in calls.values() if c.code == grpc.StatusCode.OK]
    lost = [c for c in ok if c.request_id not in records]
    window = max((killed - c.ended for c in lost), default=0.0)
    unanswered_recorded = sum(
        1 for c in calls.values() if c.code != grpc.StatusCode.OK and c.request_id in records
    )
    summary = (
        f"lost {len(lost)} of {len(ok)} records of calls that completed OK (all within the last "
        f"{window:.3f} s before SIGKILL; flush interval {FLUSH_INTERVAL} s); "
        f"{unanswered_recorded} calls cut off by the kill were recorded anyway"
    )
    print(f"SIGKILL: {summary}")
    late = [f"{c} ended {killed - c.ended:.3f} s before the kill" for c in lost]
    # An ended call waits up to BATCH_SECONDS in the usage layer before it is queued.
    held = FLUSH_INTERVAL + BATCH_SECONDS
    too_old = [line for c, line in zip(lost, late, strict=True) if killed - c.ended > held + KILL_MARGIN]
    assert not too_old, (
        f"{summary}; lost records older than the flush interval + the batch + {KILL_MARGIN} s: {too_old[:10]}"
    )
    assert len(ok) >= MIN_CALLS, f"only {len(ok)} calls completed: not a load"


@pytest.fixture
async def pg_schema(postgres_dsn: str) -> AsyncIterator[str]:
    schema = f"t_{uuid.uuid4().hex}"
    try:
        yield schema
    finally:
        admin = await asyncpg.connect(postgres_dsn)
        try:
            await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await admin.close()


@pytest.fixture
async def proxy() -> AsyncIterator[TcpProxy]:
    tcp = TcpProxy("127.0.0.1", 5432)
    await tcp.start()
    try:
        yield tcp
    finally:
        await tcp.close()


OUTAGE_AFTER = 0.7
OUTAGE_SECONDS = 2.0
AFTER_OUTAGE = 1.0


async def test_postgres_outage_under_load_loses_no_record(
    tmp_path: Path, postgres_dsn: str, pg_schema: str, proxy: TcpProxy
) -> None:
    spill = tmp_path / "usage-spill.jsonl"
    env = {
        "OMNIRELAY_USAGE__LEDGER": "postgres",
        "OMNIRELAY_USAGE__POSTGRES_DSN": f"postgresql://postgres@127.0.0.1:{proxy.port}/test",
        "OMNIRELAY_USAGE__POSTGRES_SCHEMA": pg_schema,
        "OMNIRELAY_USAGE__SPILL_PATH": str(spill),
        "OMNIRELAY_METRICS__PORT": "0",
        "OMNIRELAY_USAGE__RETRY_INTERVAL_SECONDS": "0.2",
    }
    ledger_name = PostgresLedger(postgres_dsn, schema=pg_schema).application_name
    admin = await asyncpg.connect(postgres_dsn)
    try:
        async with serving(env) as served:
            async with Load(served.address) as load:
                await asyncio.sleep(OUTAGE_AFTER)
                # The database "restarts" as the gateway sees it: its backends are terminated (they
                # send the gateway "terminating connection due to administrator command"), every
                # proxied connection is cut and new ones are refused.
                await proxy.refuse()
                terminated = await admin.fetchval(
                    "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) AS done FROM pg_stat_activity "
                    "WHERE application_name = $1) AS t WHERE done",
                    ledger_name,
                )
                cut = (await proxy.cut()).last_cut
                await asyncio.sleep(OUTAGE_SECONDS)
                spilled_during_outage = len(spilled(spill))
                refused = (await proxy.accept()).refused
                back = time.monotonic()
                replayed_at = await _gone(spill, within=15.0)
                await asyncio.sleep(max(0.0, AFTER_OUTAGE - (time.monotonic() - back)))
                served.process.send_signal(signal.SIGTERM)
                await load.until_refused()
            assert await wait_exit(served) == 0, served.stderr
        records = by_request_id(await ledger_records(PostgresLedger(postgres_dsn, schema=pg_schema)))
    finally:
        await admin.close()
    report = shutdown_report(served.stderr)

    answered = [c for c in load.calls if c.answered]
    print(
        f"PostgreSQL outage: {len(load.calls)} calls, {len(answered)} answered; {terminated} backends "
        f"terminated, {cut} connections cut, {refused} connections refused during "
        f"{OUTAGE_SECONDS} s; {spilled_during_outage} records spilled meanwhile, replayed "
        f"{replayed_at - back:.2f} s after the database was back; server: {report}"
    )
    assert "usage ledger unavailable" in served.stderr, served.stderr
    assert "usage ledger available again" in served.stderr, served.stderr
    # That the outage hit the gateway: it noticed (the warning), spilled, and tried to reconnect. (How
    # many connections it lost is only printed: on a machine short of CPU, a write that ran into the
    # ledger's 5 s timeout just before may have left it with none to lose.)
    assert refused > 0, "the gateway did not try to reconnect during the outage"
    assert spilled_during_outage > 0, "nothing was spilled while the database was down"
    assert report["lost"] == report["waiting"] == 0, served.stderr
    assert not spill_files(spill), "the spill file was left behind"
    assert_nothing_lost(load, records)
    assert len(answered) >= MIN_CALLS, f"only {len(answered)} calls answered: not a load"


async def _gone(spill: Path, *, within: float) -> float:
    """When the spill file (and any claim of it) was replayed away: the monotonic time seen."""
    deadline = time.monotonic() + within
    while spill_files(spill):
        assert time.monotonic() < deadline, f"the spill file was not replayed within {within} s"
        await asyncio.sleep(0.02)
    return time.monotonic()
