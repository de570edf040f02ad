"""The usage recorder: batches by size and time, spills when the ledger or the queue cannot take more,
replays when the ledger is back, drains on close, and loses records only when even the spill fails."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import pytest

from omnirelay.usage.ledger import LedgerUnavailableError
from omnirelay.usage.recorder import Recorder, RecorderSettings
from omnirelay.usage.records import UsageRecord
from omnirelay.usage.spill import SpillFile

TIMEOUT = 3.0
LOGGER = "omnirelay.usage"


class FakeLedger:
    """An in-memory ledger: switchable down and up, optionally slow, counting every write call.

    Like the real ones it stores a batch whole or not at all and ignores a record_id it has.
    """

    def __init__(self, *, delay: float = 0.0) -> None:
        self.up = True
        self.delay = delay
        self.error: Exception = LedgerUnavailableError("ledger down")
        self.fail_calls: set[int] = set()  # call numbers (1-based) that fail even when up
        self.calls = 0
        self.batches: list[list[str]] = []  # record ids of each stored batch
        self.stored: dict[str, UsageRecord] = {}
        self.duplicates = 0

    async def write(self, records: Sequence[UsageRecord]) -> None:
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if not self.up or self.calls in self.fail_calls:
            raise self.error
        self.batches.append([r.record_id for r in records])
        for r in records:
            if r.record_id in self.stored:
                self.duplicates += 1
            else:
                self.stored[r.record_id] = r

    @property
    def sizes(self) -> list[int]:
        return [len(b) for b in self.batches]


def record(i: int) -> UsageRecord:
    return UsageRecord(
        record_id=f"r{i}", request_id=f"q{i}", time=1_700_000_000.0 + i, requested_model="m", status_code=0
    )


def ids(n: int, start: int = 0) -> set[str]:
    return {f"r{i}" for i in range(start, start + n)}


def spilled_ids(spill: SpillFile) -> set[str]:
    found: set[str] = set()
    for path in (spill.path, spill.replaying_path):
        if path.exists():
            found |= {UsageRecord.from_json(line).record_id for line in path.read_text().splitlines()}
    return found


async def until(condition: Callable[[], bool], what: str) -> None:
    """Wait (bounded) until ``condition()`` is true."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.002)


MakeRecorder = Callable[..., tuple[Recorder, FakeLedger, SpillFile]]


@pytest.fixture
async def make(tmp_path: Path) -> AsyncIterator[MakeRecorder]:
    """Build a recorder on a fake ledger and a spill file in tmp_path; every one is closed afterwards."""
    made: list[Recorder] = []

    def build(
        ledger: FakeLedger | None = None, spill_path: Path | None = None, **settings: float | int | str
    ) -> tuple[Recorder, FakeLedger, SpillFile]:
        ledger = ledger or FakeLedger()
        spill = SpillFile(spill_path or tmp_path / "usage-spill.jsonl")
        options: dict[str, float | int | str] = {
            "flush_interval_seconds": 0.02,
            "retry_interval_seconds": 0.05,
        }
        recorder = Recorder(ledger, spill, RecorderSettings(**{**options, **settings}))  # type: ignore[arg-type]
        made.append(recorder)
        return recorder, ledger, spill

    yield build
    for recorder in made:
        await recorder.close()


# -- batching --------------------------------------------------------------------------------


async def test_full_batches_are_written_at_once_and_the_rest_after_the_interval(make: MakeRecorder) -> None:
    recorder, ledger, _ = make(batch_size=10, flush_interval_seconds=0.3, retry_interval_seconds=10.0)
    recorder.start()
    await asyncio.sleep(0)  # let the writer start its wait
    loop = asyncio.get_running_loop()
    started = loop.time()
    for i in range(25):
        recorder.submit(record(i))
    await until(lambda: len(ledger.batches) == 2, "two full batches")
    assert loop.time() - started < 0.15  # woken by the full batch, not by the interval
    await asyncio.sleep(0.05)
    assert ledger.sizes == [10, 10]
    assert recorder.counters.queue_depth == 5
    await until(lambda: len(ledger.batches) == 3, "the remainder")
    assert ledger.sizes == [10, 10, 5]
    assert set(ledger.stored) == ids(25)
    counters = recorder.counters
    assert (counters.submitted, counters.written, counters.batches, counters.queue_depth) == (25, 25, 3, 0)


async def test_one_record_is_written_after_the_flush_interval(make: MakeRecorder) -> None:
    recorder, ledger, _ = make(batch_size=500, flush_interval_seconds=0.1)
    recorder.start()
    await asyncio.sleep(0)  # let the writer start its wait
    loop = asyncio.get_running_loop()
    started = loop.time()
    recorder.submit(record(1))
    await asyncio.sleep(0.03)
    assert ledger.batches == []
    await until(lambda: ledger.sizes == [1], "the lone record")
    assert loop.time() - started >= 0.09


async def test_flush_writes_what_is_queued_without_waiting_for_the_interval(make: MakeRecorder) -> None:
    recorder, ledger, _ = make(batch_size=10, flush_interval_seconds=10.0)
    await recorder.flush()  # no writer yet: nothing to wait for
    recorder.start()
    for i in range(13):
        recorder.submit(record(i))
    await asyncio.wait_for(recorder.flush(), TIMEOUT)
    assert ledger.sizes == [10, 3]
    assert recorder.counters.queue_depth == 0


async def test_flush_with_the_ledger_down_returns_once_spilled(make: MakeRecorder) -> None:
    ledger = FakeLedger()
    ledger.up = False
    recorder, _, spill = make(ledger, flush_interval_seconds=10.0)
    recorder.start()
    for i in range(3):
        recorder.submit(record(i))
    await asyncio.wait_for(recorder.flush(), TIMEOUT)
    assert spilled_ids(spill) == ids(3)


async def test_submit_does_no_io_while_the_queue_has_room(
    make: MakeRecorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder, _, spill = make(queue_size=100)

    def no_spill(records: Sequence[UsageRecord]) -> None:
        raise AssertionError("submit spilled")

    monkeypatch.setattr(spill, "append", no_spill)
    for i in range(100):
        recorder.submit(record(i))
    assert recorder.counters.queue_depth == 100
    assert recorder.counters.spilled == 0
    assert not spill.path.exists()
    monkeypatch.undo()


# -- ledger down and back ------------------------------------------------------------------


async def test_a_down_ledger_spills_and_is_not_hammered_then_replay_catches_up(make: MakeRecorder) -> None:
    ledger = FakeLedger()
    ledger.up = False
    recorder, _, spill = make(ledger, batch_size=10, retry_interval_seconds=0.2)
    recorder.start()
    await asyncio.sleep(0)
    for i in range(25):
        recorder.submit(record(i))
    await until(lambda: recorder.counters.spilled == 25, "everything spilled")
    counters = recorder.counters
    assert not counters.ledger_up
    assert counters.written == 0
    # One failed batch marked it down; the other batches went straight to the spill file.
    assert ledger.calls == 1
    assert counters.write_failures == 1
    assert spill.pending() == 25
    assert spilled_ids(spill) == ids(25)

    ledger.up = True
    await until(lambda: counters.replayed == 25, "the replay")
    assert counters.ledger_up
    assert set(ledger.stored) == ids(25)
    assert ledger.duplicates == 0
    assert sum(ledger.sizes) == 25
    assert not spill.path.exists()
    assert not spill.replaying_path.exists()
    assert spill.pending() == 0
    assert counters.lost == 0


async def test_a_replay_failing_midway_is_retried_and_counted_once(
    make: MakeRecorder, tmp_path: Path
) -> None:
    path = tmp_path / "usage-spill.jsonl"
    SpillFile(path).append([record(i) for i in range(30)])
    ledger = FakeLedger()
    ledger.fail_calls = {2}  # the second chunk of the first replay
    recorder, _, spill = make(ledger, spill_path=path, batch_size=10)
    recorder.start()
    await until(lambda: recorder.counters.write_failures == 1, "the failed chunk")
    assert spill.replaying_path.exists()
    await until(lambda: recorder.counters.replayed == 30, "the retried replay")
    assert set(ledger.stored) == ids(30)
    assert ledger.duplicates == 10  # the first chunk, written again: harmless
    assert recorder.counters.ledger_up
    assert not spill.replaying_path.exists()


async def test_an_unexpected_ledger_error_is_treated_as_down(
    make: MakeRecorder, caplog: pytest.LogCaptureFixture
) -> None:
    ledger = FakeLedger()
    ledger.up = False
    ledger.error = RuntimeError("driver bug")
    recorder, _, spill = make(ledger, batch_size=5)
    recorder.start()
    for i in range(5):
        recorder.submit(record(i))
    await until(lambda: recorder.counters.spilled == 5, "the spill")
    assert not recorder.counters.ledger_up
    assert spilled_ids(spill) == ids(5)
    assert any(r.exc_info and "driver bug" in r.getMessage() for r in caplog.records)


# -- a full queue ----------------------------------------------------------------------------


async def test_a_full_queue_spills_under_the_spill_policy_and_nothing_is_lost(make: MakeRecorder) -> None:
    recorder, ledger, spill = make(queue_size=5, full_policy="spill", block_seconds=5.0)
    for i in range(8):
        recorder.submit(record(i))
    loop = asyncio.get_running_loop()
    started = loop.time()
    await recorder.submit_wait(record(8))
    assert loop.time() - started < 1.0  # the spill policy does not wait
    assert recorder.counters.queue_depth == 5
    assert recorder.counters.spilled == 4
    assert spilled_ids(spill) == ids(4, start=5)

    recorder.start()
    await until(lambda: recorder.counters.replayed == 4, "the replay of the overflow")
    await until(lambda: recorder.counters.written == 5, "the queue")
    assert set(ledger.stored) == ids(9)
    assert recorder.counters.lost == 0
    assert spill.pending() == 0


async def test_submit_under_the_block_policy_waits_for_room_off_the_callers_path_then_spills(
    make: MakeRecorder,
) -> None:
    recorder, _, spill = make(queue_size=2, full_policy="block", block_seconds=0.05)
    for i in range(3):
        recorder.submit(record(i))  # returns at once: the third waits off the caller's path
    assert recorder.counters.spilled == 0
    await asyncio.sleep(0.15)  # nobody frees room (no writer): after block_seconds it spills
    assert recorder.counters.spilled == 1
    assert spilled_ids(spill) == {"r2"}


async def test_submit_under_the_block_policy_queues_once_the_writer_frees_room(make: MakeRecorder) -> None:
    ledger = FakeLedger(delay=0.02)
    recorder, _, _ = make(
        ledger, queue_size=2, batch_size=2, full_policy="block", block_seconds=1.0, flush_interval_seconds=1.0
    )
    recorder.start()
    for i in range(6):
        recorder.submit(record(i))
    # The writer takes each full batch; the records waiting for room get their places, oldest first.
    await until(lambda: len(ledger.stored) == 6, "every record to be written")
    await recorder.close()
    assert recorder.counters.spilled == 0
    assert set(ledger.stored) == ids(6)
    assert ledger.batches == [["r0", "r1"], ["r2", "r3"], ["r4", "r5"]]


async def test_records_waiting_for_room_spill_together_and_cost_no_task_each(
    make: MakeRecorder,
) -> None:
    recorder, _, spill = make(queue_size=2, full_policy="block", block_seconds=0.3)
    appends: list[int] = []
    append = spill.append

    def counted(records: Sequence[UsageRecord]) -> None:
        appends.append(len(records))
        append(records)

    spill.append = counted  # type: ignore[method-assign]
    tasks = len(asyncio.all_tasks())
    for i in range(52):
        recorder.submit(record(i))
    assert len(asyncio.all_tasks()) == tasks
    assert recorder.counters.queue_depth == 52  # 2 queued, 50 waiting for room
    await until(lambda: recorder.counters.spilled == 50, "the waiting records to spill")
    assert appends == [50]  # one write for all of them, after block_seconds
    assert recorder.counters.queue_depth == 2
    lines = spill.path.read_text().splitlines()
    assert [UsageRecord.from_json(line).record_id for line in lines] == [f"r{i}" for i in range(2, 52)]


async def test_records_waiting_for_room_spill_at_close_and_are_replayed(make: MakeRecorder) -> None:
    recorder, ledger, spill = make(queue_size=1, full_policy="block", block_seconds=5.0)
    for i in range(3):
        recorder.submit(record(i))  # one queued, two waiting (no writer runs)
    report = await recorder.close()
    assert (report.written, report.replayed, report.lost) == (1, 2, 0)
    assert set(ledger.stored) == ids(3)
    assert not spill.path.exists()


async def test_submit_wait_waits_for_the_writer_to_free_room(make: MakeRecorder) -> None:
    ledger = FakeLedger(delay=0.05)
    recorder, _, spill = make(
        ledger, queue_size=2, batch_size=2, block_seconds=1.0, flush_interval_seconds=1.0
    )
    recorder.start()
    recorder.submit(record(0))
    recorder.submit(record(1))  # full: the writer is woken
    await recorder.submit_wait(record(2))
    assert ledger.calls == 1  # it returned once the writer took the full queue
    assert recorder.counters.spilled == 0
    assert not spill.path.exists()
    assert recorder.counters.queue_depth == 1
    report = await recorder.close()
    assert report.written == 3  # the batch in flight when close() began, and the queued record
    assert set(ledger.stored) == ids(3)


async def test_submit_wait_spills_when_no_room_comes_in_block_seconds(make: MakeRecorder) -> None:
    ledger = FakeLedger(delay=0.25)
    recorder, _, spill = make(
        ledger, queue_size=2, batch_size=2, block_seconds=0.05, flush_interval_seconds=1.0
    )
    recorder.start()
    recorder.submit(record(0))
    recorder.submit(record(1))
    await until(lambda: ledger.calls == 1, "the slow write to start")
    recorder.submit(record(2))
    recorder.submit(record(3))  # full again while the writer is busy
    loop = asyncio.get_running_loop()
    started = loop.time()
    await recorder.submit_wait(record(4))
    waited = loop.time() - started
    assert 0.04 <= waited < 0.2
    assert recorder.counters.spilled == 1
    assert spilled_ids(spill) == {"r4"}
    report = await recorder.close()
    # The batch in flight and the queued one went to the ledger; the final replay brought the spilled one.
    assert (report.written, report.replayed, report.pending_in_spill, report.lost) == (4, 1, 0, 0)
    assert set(ledger.stored) == ids(5)


# -- close -----------------------------------------------------------------------------------


async def test_close_drains_everything_to_the_ledger(
    make: MakeRecorder, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    recorder, ledger, spill = make(batch_size=10, flush_interval_seconds=10.0)
    recorder.start()
    for i in range(25):
        recorder.submit(record(i))
    report = await recorder.close()
    assert (report.written, report.spilled, report.pending_in_spill, report.lost) == (25, 0, 0, 0)
    assert set(ledger.stored) == ids(25)
    closing = [r for r in caplog.records if "recorder closed" in r.getMessage()]
    assert [r.levelno for r in closing] == [logging.INFO]

    assert await recorder.close() == report  # idempotent
    recorder.submit(record(99))  # after close: spilled, not lost
    assert spilled_ids(spill) == {"r99"}
    assert recorder.counters.spilled == 1


async def test_close_drains_a_recorder_that_was_never_started(make: MakeRecorder) -> None:
    recorder, ledger, _ = make(batch_size=10)
    for i in range(15):
        recorder.submit(record(i))
    report = await recorder.close()
    assert report.written == 15
    assert ledger.sizes == [10, 5]


async def test_close_with_the_ledger_down_spills_everything_and_reports_it(
    make: MakeRecorder, caplog: pytest.LogCaptureFixture
) -> None:
    ledger = FakeLedger()
    ledger.up = False
    recorder, _, spill = make(ledger, batch_size=10, flush_interval_seconds=10.0)
    recorder.start()
    for i in range(25):
        recorder.submit(record(i))
    report = await recorder.close()
    assert (report.written, report.spilled, report.pending_in_spill, report.lost) == (0, 25, 25, 0)
    assert spilled_ids(spill) == ids(25)
    assert ledger.stored == {}
    closing = [r for r in caplog.records if "recorder closed" in r.getMessage()]
    assert [r.levelno for r in closing] == [logging.WARNING]
    assert "25 spilled" in closing[0].getMessage()


async def test_close_spills_what_a_slow_ledger_cannot_take_within_the_drain_timeout(
    make: MakeRecorder,
) -> None:
    ledger = FakeLedger(delay=5.0)
    recorder, _, spill = make(ledger, batch_size=10, drain_timeout_seconds=0.1)
    recorder.start()
    for i in range(25):
        recorder.submit(record(i))
    loop = asyncio.get_running_loop()
    started = loop.time()
    report = await recorder.close()
    assert loop.time() - started < 1.0
    # The batch being written when time ran out is spilled too: it may have been stored, which is harmless.
    assert (report.written, report.spilled, report.pending_in_spill, report.lost) == (0, 25, 25, 0)
    assert spilled_ids(spill) == ids(25)


async def test_a_blocked_submit_wait_spills_when_the_recorder_closes(make: MakeRecorder) -> None:
    recorder, ledger, spill = make(queue_size=1, block_seconds=5.0)
    recorder.submit(record(0))
    waiting = asyncio.ensure_future(recorder.submit_wait(record(1)))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    report = await recorder.close()
    await asyncio.wait_for(waiting, TIMEOUT)
    assert (report.written, report.spilled, report.replayed, report.lost) == (1, 1, 1, 0)
    assert recorder.counters.spilled == 1  # spilled, then brought back by the final replay
    assert set(ledger.stored) == ids(2)
    assert not spill.path.exists()


# -- spills left by a previous run -----------------------------------------------------------


async def test_spills_left_by_a_previous_run_are_replayed_at_start(
    make: MakeRecorder, tmp_path: Path
) -> None:
    path = tmp_path / "usage-spill.jsonl"
    before = SpillFile(path)
    before.append([record(i) for i in range(3)])
    assert before.claim() is not None  # claimed, then the previous run died mid-replay
    before.append([record(i) for i in range(3, 5)])
    with path.open("ab") as f:
        f.write(record(5).to_json().encode()[:20])  # and died mid-write
    assert before.replaying_path.exists()

    recorder, ledger, spill = make(spill_path=path)
    recorder.start()
    await until(lambda: recorder.counters.replayed == 5, "the leftovers")
    assert set(ledger.stored) == ids(5)
    assert recorder.counters.spill_skipped_lines == 1
    assert not spill.path.exists()
    assert not spill.replaying_path.exists()


async def test_leftovers_wait_for_the_ledger_to_answer(make: MakeRecorder, tmp_path: Path) -> None:
    path = tmp_path / "usage-spill.jsonl"
    SpillFile(path).append([record(i) for i in range(3)])
    ledger = FakeLedger()
    ledger.up = False
    recorder, _, spill = make(ledger, spill_path=path)
    recorder.start()
    await until(lambda: ledger.calls >= 2, "a retried probe")
    assert not recorder.counters.ledger_up
    assert spill.pending() == 3
    ledger.up = True
    await until(lambda: recorder.counters.replayed == 3, "the leftovers")
    assert set(ledger.stored) == ids(3)
    assert recorder.counters.ledger_up


# -- losses ----------------------------------------------------------------------------------


async def test_a_spill_that_cannot_be_written_is_counted_as_lost_and_logged(
    make: MakeRecorder, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ledger = FakeLedger()
    ledger.up = False
    recorder, _, _ = make(ledger, spill_path=tmp_path / "missing" / "spill.jsonl", batch_size=5)
    recorder.start()
    for i in range(5):
        recorder.submit(record(i))
    await until(lambda: recorder.counters.lost == 5, "the loss")
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "5 usage records lost" in errors[0].getMessage()
    assert "missing" in errors[0].getMessage()
    assert recorder.counters.spilled == 0


async def test_losses_at_close_are_reported_and_not_logged_per_record(
    make: MakeRecorder, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ledger = FakeLedger()
    ledger.up = False
    recorder, _, _ = make(
        ledger,
        spill_path=tmp_path / "missing" / "spill.jsonl",
        queue_size=3,
        batch_size=10,
        full_policy="spill",
    )
    for i in range(10):
        recorder.submit(record(i))  # 7 overflow, each a failed spill of its own
    report = await recorder.close()
    assert report.lost == 3  # the queued ones, at close
    assert recorder.counters.lost == 10
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    # The first loss at once, the rest gathered into one line (at close at the latest).
    assert len(errors) == 2
    assert "1 usage records lost" in errors[0]
    assert "9 usage records lost" in errors[1]


# -- settings --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"queue_size": 0},
        {"batch_size": 0},
        {"full_policy": "drop"},
        {"flush_interval_seconds": 0},
        {"retry_interval_seconds": -1},
        {"block_seconds": -0.1},
    ],
)
def test_settings_are_checked(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="must"):
        RecorderSettings(**bad)  # type: ignore[arg-type]


def test_settings_defaults() -> None:
    s = RecorderSettings()
    assert (s.queue_size, s.batch_size, s.flush_interval_seconds, s.full_policy) == (10000, 500, 0.2, "block")
    assert (s.block_seconds, s.retry_interval_seconds, s.drain_timeout_seconds) == (0.05, 1.0, 10.0)
