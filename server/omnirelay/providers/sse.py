"""An incremental Server-Sent Events decoder, to the WHATWG specification.

Feed it bytes as they arrive from the network (any split: mid-line, mid-CRLF,
mid-UTF-8 character); it returns the events completed so far. Lines end in
LF, CRLF or CR; ``data`` lines of one event are joined with LF; comments
(``:``) are skipped; an event is dispatched at a blank line. Lines that are
not SSE at all (Gemini appends a raw JSON error body after its frames) are
kept in ``stray`` so the adapter can read them when the stream ends.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass

_LINE_END = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True, slots=True)
class SSEEvent:
    data: str
    event: str = "message"
    id: str | None = None
    retry: int | None = None


class SSEDecoder:
    __slots__ = ("_data", "_event", "_id", "_pending_cr", "_retry", "_tail", "_utf8", "stray")

    def __init__(self) -> None:
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._tail = ""
        self._pending_cr = False
        self._data: list[str] = []
        self._event = ""
        self._id: str | None = None
        self._retry: int | None = None
        self.stray: list[str] = []

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        text = self._utf8.decode(chunk)
        if self._pending_cr:
            # A CR ended the previous chunk; an LF starting this one belongs to the same line end.
            self._pending_cr = False
            if text.startswith("\n"):
                text = text[1:]
        if not text:
            return []
        buffer = self._tail + text
        self._pending_cr = buffer.endswith("\r")
        # Only CR, LF and CRLF end lines (str.splitlines would also split on U+2028 inside JSON).
        lines = _LINE_END.split(buffer)
        self._tail = lines.pop()
        events: list[SSEEvent] = []
        for raw in lines:
            event = self._line(raw)
            if event is not None:
                events.append(event)
        return events

    def flush(self) -> list[SSEEvent]:
        """End of stream. The spec drops an event whose blank line never came; we deliver it,
        because a provider that forgets the last blank line still meant its last frame."""
        tail = self._tail + self._utf8.decode(b"", final=True)
        self._tail = ""
        if tail:
            self._line(tail)
        event = self._dispatch()
        return [event] if event is not None else []

    def _line(self, line: str) -> SSEEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self._id = value
        elif name == "retry":
            if value.isdigit():
                self._retry = int(value)
        else:
            self.stray.append(line)
        return None

    def _dispatch(self) -> SSEEvent | None:
        if not self._data:
            self._event = ""
            return None
        event = SSEEvent("\n".join(self._data), self._event or "message", self._id, self._retry)
        self._data = []
        self._event = ""
        self._retry = None
        return event
