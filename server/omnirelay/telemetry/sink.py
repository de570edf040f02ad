"""Where every log line goes: one stream, written in batches off the request path.

A line written on the event loop's thread waits in a buffer until the loop's next
flush (at most ``delay`` seconds later, or at once when ``max_lines`` are waiting),
so a busy server makes one write system call for many request lines instead of one
each (a write per line was 12% of the server's main-thread samples, by py-spy under
the bench's unary load, on a VM where system calls are dear). Lines from other
threads (the ledger's, the span exporter's), lines of level WARNING or worse, and
lines written with no event loop running are written at once, after whatever is
waiting, so the order of lines is kept and nothing important waits. ``flush``
writes what is waiting; the server calls it when it stops, and the logging module
flushes every handler (``SinkHandler.flush``) at interpreter exit. A process killed
with SIGKILL loses at most the lines of the last ``delay``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import TextIO

# A line waits at most this long on a busy server: shorter than a person notices in a terminal.
DEFAULT_DELAY = 0.05
DEFAULT_MAX_LINES = 256


class LineSink:
    """Lines (without their newline) to ``stream``, batched on the event loop's thread."""

    def __init__(
        self, stream: TextIO, delay: float = DEFAULT_DELAY, max_lines: int = DEFAULT_MAX_LINES
    ) -> None:
        self._stream = stream
        self._delay = delay
        self._max_lines = max_lines
        self._pending: list[str] = []
        self._armed = False
        self._armed_by = 0
        # Guards the buffer and the stream: loggers on other threads write here too.
        self._lock = threading.Lock()

    @property
    def stream(self) -> TextIO:
        return self._stream

    def write(self, line: str, urgent: bool = False) -> None:
        with self._lock:
            pending = self._pending
            pending.append(line)
            if urgent or len(pending) >= self._max_lines:
                self._write_locked()
                return
            if self._armed:
                if threading.get_ident() == self._armed_by:
                    return
                # Another thread: the timer's loop would write this line, but late.
                self._write_locked()
                return
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                # No loop on this thread (a CLI command, the exporter's thread): nobody would
                # flush later.
                self._write_locked()
                return
            self._armed = True
            self._armed_by = threading.get_ident()
        loop.call_later(self._delay, self._timer)

    def _timer(self) -> None:
        with self._lock:
            self._armed = False
            self._write_locked()

    def flush(self) -> None:
        with self._lock:
            # A timer armed on a loop that has since stopped will never fire: the next line arms
            # one on the loop that runs then.
            self._armed = False
            self._write_locked()

    def _write_locked(self) -> None:
        pending = self._pending
        if not pending:
            return
        text = "\n".join(pending) + "\n"
        pending.clear()
        try:
            self._stream.write(text)
            self._stream.flush()
        except (OSError, ValueError):
            # A closed or broken stream (a parent gone, a pipe closed): logging must never fail a
            # call, and there is nowhere left to say so.
            pass


class SinkHandler(logging.Handler):
    """A logging handler whose formatted lines go to a ``LineSink``."""

    def __init__(self, sink: LineSink) -> None:
        super().__init__()
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self.sink.write(line, record.levelno >= logging.WARNING)

    def flush(self) -> None:
        self.sink.flush()
