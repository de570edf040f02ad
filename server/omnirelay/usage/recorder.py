"""The usage recorder: takes records off the request path and writes them to the ledger in batches.

``submit`` is all a request pays: a deque append, plus waking the writer when a
batch is full. One writer task takes up to ``batch_size`` records at a time
(or whatever is queued once ``flush_interval_seconds`` passes) and writes them
in one ledger transaction.

Nothing is dropped. A full queue spills the record to the local spill file; a
batch the ledger refuses is spilled too, and the ledger is then treated as
down: later batches go straight to the spill file instead of hammering it, and
every ``retry_interval_seconds`` the writer replays the spill file, which is its
probe; the first replayed chunk the ledger takes marks it up again. While the
ledger is up, records that were spilled anyway (a full queue) are replayed
when the queue is nearly idle. The only loss is a spill file that cannot be
written (disk full, bad path): it is counted and logged, never silent.

Spilling happens on the event loop, synchronously: one buffered write and a
flush, with no fsync unless the spill file asks for it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable, Sequence, Sized
from dataclasses import dataclass, field
from typing import Literal, Protocol

from omnirelay.usage.ledger import LedgerUnavailableError
from omnirelay.usage.records import UsageRecord
from omnirelay.usage.spill import SpillFile

log = logging.getLogger("omnirelay.usage")

FullPolicy = Literal["block", "spill"]
FULL_POLICIES: tuple[FullPolicy, ...] = ("block", "spill")
# Losses are logged at once, then at most this often while they keep happening.
LOSS_LOG_INTERVAL_SECONDS = 5.0


class BatchWriter(Protocol):
    """The part of ``Ledger`` the recorder uses."""

    async def write(self, records: Sequence[UsageRecord]) -> None: ...


@dataclass(frozen=True, slots=True)
class RecorderSettings:
    queue_size: int = 10000
    batch_size: int = 500
    flush_interval_seconds: float = 0.2
    full_policy: FullPolicy = "block"
    block_seconds: float = 0.05  # how long submit_wait waits for room under the "block" policy
    retry_interval_seconds: float = 1.0
    drain_timeout_seconds: float = 10.0

    def __post_init__(self) -> None:
        if self.queue_size < 1 or self.batch_size < 1:
            raise ValueError("queue_size and batch_size must be at least 1")
        if self.full_policy not in FULL_POLICIES:
            raise ValueError(f"full_policy must be one of {FULL_POLICIES}, not {self.full_policy!r}")
        if min(self.flush_interval_seconds, self.retry_interval_seconds) <= 0:
            raise ValueError("flush_interval_seconds and retry_interval_seconds must be positive")
        if min(self.block_seconds, self.drain_timeout_seconds) < 0:
            raise ValueError("block_seconds and drain_timeout_seconds must not be negative")


@dataclass(slots=True)
class RecorderCounters:
    """Running totals, in records unless named otherwise; read by metrics."""

    submitted: int = 0
    written: int = 0  # queued records the ledger took (replays are counted in ``replayed``)
    spilled: int = 0
    replayed: int = 0  # records of spill files replayed to the end
    spill_skipped_lines: int = 0  # damaged spill lines skipped by completed replays
    write_failures: int = 0  # ledger writes that failed (calls, not records)
    batches: int = 0  # ledger writes of queued records that succeeded
    lost: int = 0  # records that could not even be spilled
    ledger_up: bool = True
    queue: Sized = field(default=(), repr=False, compare=False)
    overflow: Sized = field(default=(), repr=False, compare=False)

    @property
    def queue_depth(self) -> int:
        return len(self.queue) + len(self.overflow)


@dataclass(frozen=True, slots=True)
class DrainReport:
    """What ``close()`` did with the records it found: each record is in exactly one of these."""

    written: int  # to the ledger during close
    spilled: int  # to the spill file during close
    replayed: int  # spilled records of earlier, replayed by the final replay
    pending_in_spill: int  # records left in the spill file for the next start
    lost: int  # records that could not even be spilled during close


class Recorder:
    def __init__(self, ledger: BatchWriter, spill: SpillFile, settings: RecorderSettings) -> None:
        self._ledger = ledger
        self._spill_file = spill
        self._settings = settings
        self._queue: collections.deque[UsageRecord] = collections.deque()
        # Records waiting for room under the block policy, oldest first, each with the loop time
        # it is spilled at. One timer spills the overdue ones together.
        self._overflow: collections.deque[tuple[float, UsageRecord]] = collections.deque()
        self._overflow_timer: asyncio.TimerHandle | None = None
        self.counters = RecorderCounters(queue=self._queue, overflow=self._overflow)
        self._wake = asyncio.Event()  # set when a batch is full, or to stop
        self._room = asyncio.Event()  # set when the writer takes from the queue
        self._inflight: list[UsageRecord] = []  # the queued batch being written, spilled if cancelled
        self._flush_waiters: list[asyncio.Future[None]] = []  # flush() calls the writer has yet to serve
        self._writer: asyncio.Task[None] | None = None
        self._closed = False  # submits go to the spill file
        self._stopping = False  # the writer drains and ends
        self._close_lock = asyncio.Lock()
        self._report: DrainReport | None = None
        self._next_replay = 0.0  # loop time of the next replay (the probe, while the ledger is down)
        self._next_flush = 0.0  # loop time of the next flush tick
        # Callables that submit what they hold back (the usage layer's batch of ended calls):
        # flush and close run them first, so nothing that ended is left out.
        self._feeders: list[Callable[[], None]] = []
        self._unlogged_loss = 0
        self._loss_reason = ""
        self._next_loss_log = 0.0  # monotonic time

    @property
    def settings(self) -> RecorderSettings:
        return self._settings

    def add_feeder(self, feed: Callable[[], None]) -> None:
        """``feed`` submits records held back elsewhere; flush and close call it first."""
        self._feeders.append(feed)

    def _feed(self) -> None:
        for feed in self._feeders:
            feed()

    def start(self) -> None:
        """Start the writer task (idempotent); its first job is replaying a spill left from before."""
        if self._closed:
            raise RuntimeError("the recorder is closed")
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._run(), name="usage-recorder")

    # -- the request path ------------------------------------------------------------------

    def submit(self, record: UsageRecord) -> None:
        """Queue ``record``; never blocks the caller.

        When the queue is full: under the "spill" policy (or once closed) the record is spilled at
        once; under "block" it waits, after those already waiting, up to block_seconds for room,
        then spills. Waiting costs a deque append: a slow ledger fills the queue at the gateway's
        full rate, and a task and a spill-file write per record (as this was) made the overload worse.
        """
        self.counters.submitted += 1
        if (self._overflow or len(self._queue) >= self._settings.queue_size) and self._blocks():
            loop = asyncio.get_running_loop()
            self._overflow.append((loop.time() + self._settings.block_seconds, record))
            if self._overflow_timer is None:
                self._overflow_timer = loop.call_at(self._overflow[0][0], self._spill_overdue)
            return
        self._queue_or_spill(record)

    def _admit_overflow(self) -> None:
        """Move waiting records into the room the writer just made, oldest first."""
        overflow, queue = self._overflow, self._queue
        room = self._settings.queue_size - len(queue)
        while overflow and room > 0:
            queue.append(overflow.popleft()[1])
            room -= 1
        if not overflow and self._overflow_timer is not None:
            self._overflow_timer.cancel()
            self._overflow_timer = None

    def _spill_overdue(self) -> None:
        """Spill, in one write, the records that waited block_seconds for room in vain."""
        self._overflow_timer = None
        overflow = self._overflow
        loop = asyncio.get_running_loop()
        # Those due within a tenth of block_seconds go too: a burst that overflowed together is
        # spilled in one write, not one per timer tick.
        due_by = loop.time() + self._settings.block_seconds * 0.1
        due = []
        while overflow and overflow[0][0] <= due_by:
            due.append(overflow.popleft()[1])
        if due:
            self._spill(due)
        if overflow:
            self._overflow_timer = loop.call_at(overflow[0][0], self._spill_overdue)

    def _spill_overflow(self) -> None:
        """Spill every waiting record now (the recorder is closing)."""
        if self._overflow_timer is not None:
            self._overflow_timer.cancel()
            self._overflow_timer = None
        waiting = [record for _, record in self._overflow]
        self._overflow.clear()
        if waiting:
            self._spill(waiting)

    async def submit_wait(self, record: UsageRecord) -> None:
        """Like ``submit``, but the caller itself waits (up to block_seconds) for room."""
        self.counters.submitted += 1
        await self._queue_when_room(record)

    def _blocks(self) -> bool:
        return self._settings.full_policy == "block" and not self._closed

    async def _queue_when_room(self, record: UsageRecord) -> None:
        queue, size = self._queue, self._settings.queue_size
        if self._blocks() and len(queue) >= size:
            try:
                async with asyncio.timeout(self._settings.block_seconds):
                    while len(queue) >= size and not self._closed:
                        self._room.clear()
                        await self._room.wait()
            except TimeoutError:
                pass  # still full: spilled below
        self._queue_or_spill(record)

    def _queue_or_spill(self, record: UsageRecord) -> None:
        queue = self._queue
        if self._closed or len(queue) >= self._settings.queue_size:
            self._spill([record])
            return
        queue.append(record)
        if len(queue) >= self._settings.batch_size:
            self._wake.set()

    async def flush(self) -> None:
        """Return once everything queued before the call was written (or spilled, the ledger being down).

        For readers that want the latest records in the ledger. The writer does the
        work, so batches are never written by two tasks at once. Returns at once if
        there is no writer (not started, or closing: close() drains anyway).
        """
        self._feed()
        if self._writer is None or self._stopping:
            return
        served = asyncio.get_running_loop().create_future()
        self._flush_waiters.append(served)
        self._wake.set()
        await served

    # -- the writer ------------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        if not self._stopping:
            await self._replay(interruptible=True)
        self._next_replay = loop.time() + self._settings.retry_interval_seconds
        self._next_flush = loop.time() + self._settings.flush_interval_seconds
        while not self._stopping:
            try:
                await self._step(loop)
            except Exception:
                # A bug must not end the writer: the queue would fill and everything would spill.
                log.exception("usage recorder step failed; retrying")
                await asyncio.sleep(self._settings.retry_interval_seconds)
        await self._flush(full_only=False)
        self._serve_flush_waiters(self._flush_waiters)
        if self.counters.ledger_up and self._pending_in_spill():
            await self._replay(interruptible=False)

    async def _step(self, loop: asyncio.AbstractEventLoop) -> None:
        settings = self._settings
        await self._wait(max(0.0, min(self._next_flush, self._next_replay) - loop.time()))
        # Between flush ticks only full batches are written; the rest waits for the tick (or to fill up).
        if loop.time() >= self._next_flush or self._flush_waiters:
            waiters, self._flush_waiters = self._flush_waiters, []
            self._next_flush = loop.time() + settings.flush_interval_seconds
            try:
                await self._flush(full_only=False)
            finally:
                self._serve_flush_waiters(waiters)
        else:
            await self._flush(full_only=True)
        if loop.time() >= self._next_replay and not self._stopping:
            self._next_replay = loop.time() + settings.retry_interval_seconds
            idle = len(self._queue) < settings.batch_size
            if not self.counters.ledger_up or (idle and self._pending_in_spill()):
                await self._replay(interruptible=True)
        if self._unlogged_loss and time.monotonic() >= self._next_loss_log:
            self._log_loss()

    async def _wait(self, seconds: float) -> None:
        """Wait for a full batch (or close) for at most ``seconds``."""
        if self._stopping or self._flush_waiters or len(self._queue) >= self._settings.batch_size:
            return
        # No await since these checks, so no submit or flush() can have come in between.
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wake.wait()

    @staticmethod
    def _serve_flush_waiters(waiters: list[asyncio.Future[None]]) -> None:
        for served in waiters:
            if not served.done():  # its caller may have been cancelled
                served.set_result(None)
        waiters.clear()

    async def _flush(self, *, full_only: bool) -> None:
        """Write full batches; with ``full_only`` False also the rest queued when the flush began.

        Records that arrive while it writes wait for the next tick (or a full batch): under steady
        load a flush would otherwise chase the queue in a chain of tiny commits.
        """
        queue, size = self._queue, self._settings.batch_size
        due = 0 if full_only else len(queue)
        while queue:
            if len(queue) >= size:
                take = size
            elif due > 0:
                take = min(len(queue), due)
            else:
                break
            due -= take
            batch = [queue.popleft() for _ in range(take)]
            if self._overflow:
                self._admit_overflow()
            self._room.set()
            await self._write_queued(batch)

    async def _write_queued(self, batch: list[UsageRecord]) -> None:
        if not self.counters.ledger_up:
            self._spill(batch)
            return
        self._inflight = batch
        ok = await self._write(batch)
        self._inflight = []
        if ok:
            self.counters.written += len(batch)
            self.counters.batches += 1
        else:
            self._spill(batch)

    async def _write(self, batch: Sequence[UsageRecord]) -> bool:
        """One ledger write; marks the ledger up or down by how it went."""
        try:
            await self._ledger.write(batch)
        except Exception as exc:
            self.counters.write_failures += 1
            self._mark_down(exc)
            return False
        self._mark_up()
        return True

    def _mark_down(self, exc: Exception) -> None:
        loop = asyncio.get_running_loop()
        self._next_replay = loop.time() + self._settings.retry_interval_seconds
        if not self.counters.ledger_up:
            return
        self.counters.ledger_up = False
        log.warning(
            "usage ledger unavailable (%s: %s); spilling to %s and retrying every %.1fs",
            type(exc).__name__,
            exc,
            self._spill_file.path,
            self._settings.retry_interval_seconds,
            # Anything but the expected error is a bug in a ledger: keep its traceback.
            exc_info=not isinstance(exc, LedgerUnavailableError),
        )

    def _mark_up(self) -> None:
        if not self.counters.ledger_up:
            self.counters.ledger_up = True
            log.info("usage ledger available again")

    async def _replay(self, *, interruptible: bool) -> None:
        """Replay the spill file: first a claim kept from before, then the live file.

        Interruptible replays keep the queue moving between chunks and stop for close().
        """
        for _ in range(2):
            try:
                claim = self._spill_file.claim()
            except OSError as exc:
                log.warning("usage spill file %s cannot be replayed: %s", self._spill_file.path, exc)
                return
            if claim is None:
                # Nothing spilled to probe with: the next batch write is the probe.
                self._mark_up()
                return
            try:
                with claim:
                    for chunk in claim.chunks(self._settings.batch_size):
                        if not await self._write(chunk):
                            break
                        if interruptible:
                            await self._flush(full_only=True)
                            if self._stopping or not self.counters.ledger_up:
                                break
            except OSError as exc:
                log.warning("usage spill file %s cannot be replayed: %s", claim.path, exc)
                return
            if not claim.completed:
                return
            self.counters.replayed += claim.records
            self.counters.spill_skipped_lines += claim.skipped

    # -- spilling --------------------------------------------------------------------------

    def _spill(self, records: Sequence[UsageRecord]) -> None:
        try:
            self._spill_file.append(records)
        except Exception as exc:
            # The one way a record is lost; counted and logged, never silent.
            self.counters.lost += len(records)
            self._unlogged_loss += len(records)
            self._loss_reason = f"{type(exc).__name__}: {exc}"
            if time.monotonic() >= self._next_loss_log:
                self._log_loss()
            return
        self.counters.spilled += len(records)

    def _log_loss(self) -> None:
        if self._unlogged_loss:
            log.error(
                "%d usage records lost: the spill file %s could not be written (%s)",
                self._unlogged_loss,
                self._spill_file.path,
                self._loss_reason,
            )
            self._unlogged_loss = 0
        self._next_loss_log = time.monotonic() + LOSS_LOG_INTERVAL_SECONDS

    def _pending_in_spill(self) -> int:
        try:
            return self._spill_file.pending()
        except OSError:
            return 0  # unreadable: the replay reports why

    # -- shutdown --------------------------------------------------------------------------

    async def close(self) -> DrainReport:
        """Stop accepting, drain the queue to the ledger (spilling what cannot go), report. Idempotent."""
        async with self._close_lock:
            if self._report is None:
                self._report = await self._shut_down()
            return self._report

    async def _shut_down(self) -> DrainReport:
        self._feed()
        self._closed = True
        self._room.set()  # blocked submit_wait calls spill now
        self._spill_overflow()
        counters = self.counters
        before = (counters.written, counters.spilled, counters.replayed, counters.lost)
        self._stopping = True
        self._wake.set()
        if self._writer is None:
            # Never started: drain with a writer of its own, so the timeout below can stop it.
            self._writer = asyncio.get_running_loop().create_task(self._run(), name="usage-recorder")
        writer = self._writer
        done, _ = await asyncio.wait({writer}, timeout=self._settings.drain_timeout_seconds)
        if not done:
            writer.cancel()
            await asyncio.wait({writer})
        elif not writer.cancelled() and writer.exception() is not None:
            log.error("usage recorder writer failed", exc_info=writer.exception())
        self._serve_flush_waiters(self._flush_waiters)
        leftover = self._inflight + list(self._queue)
        self._inflight = []
        self._queue.clear()
        if leftover:
            self._spill(leftover)
        self._log_loss()
        report = DrainReport(
            written=counters.written - before[0],
            spilled=counters.spilled - before[1],
            replayed=counters.replayed - before[2],
            pending_in_spill=self._pending_in_spill(),
            lost=counters.lost - before[3],
        )
        clean = not (report.spilled or report.pending_in_spill or report.lost)
        log.log(
            logging.INFO if clean else logging.WARNING,
            "usage recorder closed: %d written, %d spilled, %d replayed, %d waiting in %s, %d lost",
            report.written,
            report.spilled,
            report.replayed,
            report.pending_in_spill,
            self._spill_file.path,
            report.lost,
        )
        return report
