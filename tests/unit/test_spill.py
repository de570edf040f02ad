"""The spill file: JSON lines appended, claimed by rename, read in chunks, removed only once read through."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from omnirelay.domain import TokenUsage
from omnirelay.usage.records import BilledAttempt, UsageRecord
from omnirelay.usage.spill import SpillFile


def record(i: int) -> UsageRecord:
    return UsageRecord(
        record_id=f"r{i}",
        request_id=f"q{i}",
        time=1_700_000_000.0 + i,
        requested_model="m",
        status_code=0,
        tags=(("team", "a"),),
        attempts=(BilledAttempt(model="m", provider="p", deployment="d", outcome="success"),),
        usage=TokenUsage(input_tokens=i, output_tokens=2 * i, cost_micros=10 * i),
    )


def records(n: int, start: int = 0) -> list[UsageRecord]:
    return [record(i) for i in range(start, start + n)]


def replay_all(spill: SpillFile, size: int = 100) -> tuple[list[list[UsageRecord]], int]:
    """Read every claim to the end, as a successful replay does; returns the chunks and skipped lines."""
    chunks: list[list[UsageRecord]] = []
    skipped = 0
    while (claim := spill.claim()) is not None:
        with claim:
            chunks.extend(claim.chunks(size))
        assert claim.completed
        skipped += claim.skipped
    return chunks, skipped


def test_append_writes_one_json_line_per_record(tmp_path: Path) -> None:
    spill = SpillFile(tmp_path / "spill.jsonl")
    spill.append(records(3))
    spill.append(records(2, start=3))
    lines = spill.path.read_text().splitlines()
    assert [UsageRecord.from_json(line) for line in lines] == records(5)
    assert spill.pending() == 5


def test_an_empty_append_creates_nothing(tmp_path: Path) -> None:
    spill = SpillFile(tmp_path / "spill.jsonl")
    spill.append([])
    assert not spill.path.exists()
    assert spill.pending() == 0


def test_replay_yields_chunks_and_removes_the_file(tmp_path: Path) -> None:
    spill = SpillFile(tmp_path / "spill.jsonl")
    spill.append(records(7))
    claim = spill.claim()
    assert claim is not None
    assert not spill.path.exists()
    assert claim.path == spill.replaying_path
    with claim:
        chunks = list(claim.chunks(3))
    assert [len(c) for c in chunks] == [3, 3, 1]
    assert [r for c in chunks for r in c] == records(7)
    assert claim.completed
    assert claim.records == 7
    assert not spill.replaying_path.exists()
    assert spill.pending() == 0
    assert spill.claim() is None


def test_appends_during_a_replay_go_to_a_fresh_file(tmp_path: Path) -> None:
    spill = SpillFile(tmp_path / "spill.jsonl")
    spill.append(records(2))
    claim = spill.claim()
    assert claim is not None
    with claim:
        for chunk in claim.chunks(1):
            spill.append([record(10 + int(chunk[0].record_id[1:]))])
        assert spill.pending() == 4
    assert claim.completed
    assert spill.pending() == 2
    chunks, _ = replay_all(spill)
    assert [r.record_id for c in chunks for r in c] == ["r10", "r11"]


def test_a_failed_replay_keeps_the_claim_and_it_comes_back_first(tmp_path: Path) -> None:
    spill = SpillFile(tmp_path / "spill.jsonl")
    spill.append(records(4))
    claim = spill.claim()
    assert claim is not None

    def replay_failing() -> None:
        with claim:
            for _ in claim.chunks(2):
                raise RuntimeError("ledger broke")

    with pytest.raises(RuntimeError, match="ledger broke"):
        replay_failing()
    assert not claim.completed
    assert spill.replaying_path.exists()
    spill.append(records(1, start=100))  # a newer spill must wait behind the kept claim
    assert spill.pending() == 5
    again = spill.claim()
    assert again is not None
    assert again.path == spill.replaying_path
    with again:
        assert [r.record_id for c in again.chunks(10) for r in c] == ["r0", "r1", "r2", "r3"]
    chunks, _ = replay_all(spill)
    assert [r.record_id for c in chunks for r in c] == ["r100"]
    assert spill.pending() == 0


def test_leaving_before_the_end_keeps_the_claim(tmp_path: Path) -> None:
    spill = SpillFile(tmp_path / "spill.jsonl")
    spill.append(records(4))
    claim = spill.claim()
    assert claim is not None
    with claim:
        for _ in claim.chunks(2):
            break
    assert not claim.completed
    assert spill.replaying_path.exists()
    assert spill.pending() == 4


def test_files_left_by_a_previous_run_are_counted_and_replayed_claim_first(tmp_path: Path) -> None:
    before = SpillFile(tmp_path / "spill.jsonl")
    before.append(records(3))
    claim = before.claim()
    assert claim is not None  # claimed, then the process "died" before replaying it
    before.append(records(2, start=3))

    spill = SpillFile(tmp_path / "spill.jsonl")
    assert spill.pending() == 5
    chunks, skipped = replay_all(spill)
    assert [r.record_id for c in chunks for r in c] == ["r0", "r1", "r2", "r3", "r4"]
    assert skipped == 0
    assert not spill.path.exists()
    assert not spill.replaying_path.exists()


def test_a_truncated_last_line_is_skipped_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "spill.jsonl"
    SpillFile(path).append(records(3))
    whole = path.read_bytes()
    path.write_bytes(whole + record(3).to_json().encode()[:25])  # a crash mid-write

    spill = SpillFile(path)
    assert spill.pending() == 3
    chunks, skipped = replay_all(spill)
    assert [r for c in chunks for r in c] == records(3)
    assert skipped == 1


def test_an_append_after_a_truncated_line_is_not_glued_to_it(tmp_path: Path) -> None:
    path = tmp_path / "spill.jsonl"
    path.write_bytes(record(0).to_json().encode()[:30])  # a previous run's half line, no newline
    spill = SpillFile(path)
    spill.append(records(2, start=1))
    chunks, skipped = replay_all(spill)
    assert [r.record_id for c in chunks for r in c] == ["r1", "r2"]
    assert skipped == 1


def test_damaged_lines_anywhere_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "spill.jsonl"
    good = [r.to_json() for r in records(2)]
    path.write_bytes(
        "\n".join([good[0], "{not json", '{"no_record_id": 1}', "[1, 2]", "", good[1]]).encode()
        + b"\n\xff\xfe\n"
    )
    chunks, skipped = replay_all(SpillFile(path))
    assert [r for c in chunks for r in c] == records(2)
    assert skipped == 4


def test_append_into_a_missing_directory_raises(tmp_path: Path) -> None:
    spill = SpillFile(tmp_path / "missing" / "spill.jsonl")
    with pytest.raises(FileNotFoundError):
        spill.append(records(1))
    assert spill.pending() == 0
    assert spill.claim() is None


def test_fsync_is_off_by_default_and_on_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    monkeypatch.setattr(os, "fsync", synced.append)
    SpillFile(tmp_path / "a.jsonl").append(records(2))
    assert synced == []
    SpillFile(tmp_path / "b.jsonl", fsync=True).append(records(2))
    assert len(synced) == 1


def test_chunk_size_must_be_positive(tmp_path: Path) -> None:
    spill = SpillFile(tmp_path / "spill.jsonl")
    spill.append(records(1))
    claim = spill.claim()
    assert claim is not None
    with pytest.raises(ValueError, match="at least 1"), claim:
        next(claim.chunks(0))
    assert spill.replaying_path.exists()
