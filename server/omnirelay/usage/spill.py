"""The spill file: usage records the ledger could not take yet, kept on local disk until it can.

An append-only file of JSON lines (``UsageRecord.to_json``), one record a line.
Appending is one write and one flush per call: a process that is killed keeps
whatever reached the OS, and only a machine crash can lose the unsynced tail
(``fsync=True`` closes that gap at the cost of a disk sync per append).

Replaying works on a *claim*: the file is renamed to a ``.replaying`` sibling,
so records spilled while the replay runs start a fresh file, and the claimed
file is removed only once every line of it was read and written. A replay that
fails midway keeps the claimed file and the next claim returns it again, before
the live file; a ``.replaying`` file left by a crash is picked up the same way.
Records are idempotent by ``record_id``, so writing part of a file twice is safe.

A line that does not parse (the half-written last line of a crash, or damage)
is skipped and counted, never fatal.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from omnirelay.usage.records import UsageRecord

REPLAYING_SUFFIX = ".replaying"
_COUNT_CHUNK_BYTES = 1 << 20

# What a damaged line can raise on its way through json.loads and from_dict
# (UnicodeDecodeError and JSONDecodeError are ValueErrors).
_BAD_LINE_ERRORS = (ValueError, KeyError, TypeError, AttributeError)


def _count_lines(path: Path) -> int:
    """Newline-terminated lines in ``path`` (0 if it does not exist); a half-written last line is not one."""
    try:
        with path.open("rb") as f:
            lines = 0
            while chunk := f.read(_COUNT_CHUNK_BYTES):
                lines += chunk.count(b"\n")
            return lines
    except FileNotFoundError:
        return 0


class SpillClaim:
    """One claimed spill file being replayed; use it as a context manager around the replay.

    Leaving the ``with`` block normally after ``chunks()`` reached the end of the
    file removes it; leaving it any other way (an exception, a cancellation, a
    ``break`` out of the chunks) keeps it for the next claim.
    """

    def __init__(self, path: Path, on_done: Callable[[], None]) -> None:
        self.path = path
        self.records = 0  # records read so far
        self.skipped = 0  # lines that did not parse, so far
        self.completed = False  # true once the file was read to the end and removed
        self._on_done = on_done
        self._file: BinaryIO | None = None
        self._exhausted = False

    def chunks(self, size: int) -> Iterator[list[UsageRecord]]:
        """The claimed records, ``size`` at a time, read lazily (a big file is never all in memory)."""
        if size < 1:
            raise ValueError("chunk size must be at least 1")
        if self._file is not None:
            raise RuntimeError("a claim is read once")
        self._file = self.path.open("rb")
        chunk: list[UsageRecord] = []
        for raw in self._file:
            parsed = self._parse(raw)
            if parsed is None:
                continue
            chunk.append(parsed)
            if len(chunk) >= size:
                yield chunk
                chunk = []
        if chunk:
            yield chunk
        self._exhausted = True

    def _parse(self, raw: bytes) -> UsageRecord | None:
        if not raw.strip():
            return None
        try:
            record = UsageRecord.from_json(raw.decode("utf-8"))
        except _BAD_LINE_ERRORS:
            self.skipped += 1
            return None
        self.records += 1
        return record

    def __enter__(self) -> SpillClaim:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._file is not None:
            self._file.close()
        if exc_type is None and self._exhausted:
            self.path.unlink(missing_ok=True)
            self.completed = True
            self._on_done()


class SpillFile:
    """Records waiting for the ledger, at ``path`` (and ``path`` + ``.replaying`` while one is claimed).

    The parent directory must exist: a spill that cannot be written is a loss the
    caller has to report, and creating directories here would hide a bad path.
    Not thread-safe; meant for one event loop, where appends and claims never interleave.
    """

    def __init__(self, path: Path, *, fsync: bool = False) -> None:
        self.path = path
        self.replaying_path = path.with_name(path.name + REPLAYING_SUFFIX)
        self.fsync = fsync
        # Line counts of the live and the claimed file, read from disk on first use
        # (a previous run may have left both) and kept in memory after that.
        self._live: int | None = None
        self._claimed = 0
        # Whether the live file is known to end with a newline. After a crash or a
        # failed write it may not, and the next record must not be glued onto that
        # broken line, or it would be lost with it.
        self._tail_clean = False

    def _load_counts(self) -> int:
        if self._live is None:
            self._claimed = _count_lines(self.replaying_path)
            self._live = _count_lines(self.path)
        return self._live

    def pending(self) -> int:
        """Records waiting in the live and the claimed file (damaged lines included until replayed)."""
        return self._load_counts() + self._claimed

    def append(self, records: Sequence[UsageRecord]) -> None:
        """Append ``records`` in one write; raises OSError when they could not be written."""
        if not records:
            return
        live = self._load_counts()
        payload = "".join(r.to_json() + "\n" for r in records).encode("utf-8")
        with self.path.open("a+b") as f:
            if not self._tail_clean:
                payload = self._separator(f) + payload
            self._tail_clean = False
            f.write(payload)
            f.flush()
            if self.fsync:
                os.fsync(f.fileno())
        self._tail_clean = True
        self._live = live + len(records)

    @staticmethod
    def _separator(f: BinaryIO) -> bytes:
        """A newline if the file ends in a broken line, so it stays one (skipped) line apart from ours."""
        end = f.seek(0, os.SEEK_END)
        if end == 0:
            return b""
        f.seek(end - 1)
        return b"" if f.read(1) == b"\n" else b"\n"

    def claim(self) -> SpillClaim | None:
        """The file to replay next: a claim kept from before, else the live file renamed; None if none.

        Raises OSError when the rename fails.
        """
        live = self._load_counts()
        if self.replaying_path.exists():
            return SpillClaim(self.replaying_path, self._claim_done)
        if not self.path.exists():
            return None
        # Never renamed onto an existing claim (checked above), so no spilled record is overwritten.
        self.path.rename(self.replaying_path)
        self._claimed, self._live = live, 0
        self._tail_clean = True  # the next append starts a new file
        return SpillClaim(self.replaying_path, self._claim_done)

    def _claim_done(self) -> None:
        self._claimed = 0
