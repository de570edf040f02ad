"""An incremental newline-delimited JSON decoder (Ollama's native streaming format)."""

from __future__ import annotations

import json
from typing import Any


class NDJSONDecoder:
    """Feed bytes in any split; get back each complete JSON value. Blank lines are skipped."""

    __slots__ = ("_tail",)

    def __init__(self) -> None:
        self._tail = b""

    def feed(self, chunk: bytes) -> list[Any]:
        buffer = self._tail + chunk
        lines = buffer.split(b"\n")
        self._tail = lines.pop()
        return [json.loads(line) for line in lines if line.strip()]

    def flush(self) -> list[Any]:
        tail, self._tail = self._tail, b""
        return [json.loads(tail)] if tail.strip() else []
