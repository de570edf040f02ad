"""The shared stream decoders: SSE to the WHATWG rules, NDJSON, across any network split."""

from __future__ import annotations

import pytest

from omnirelay.providers.ndjson import NDJSONDecoder
from omnirelay.providers.sse import SSEDecoder, SSEEvent


def decode(raw: bytes, size: int) -> tuple[list[SSEEvent], list[str]]:
    decoder = SSEDecoder()
    events: list[SSEEvent] = []
    for start in range(0, len(raw), size):
        events.extend(decoder.feed(raw[start : start + size]))
    events.extend(decoder.flush())
    return events, decoder.stray


SPLITS = [1, 2, 3, 7, 64, 100_000]


@pytest.mark.parametrize("size", SPLITS)
def test_lf_crlf_and_cr_line_ends_and_multiline_data(size: int) -> None:
    raw = b"data: one\n\ndata: two\r\ndata: lines\r\n\r\nevent: ping\rdata: {}\r\r"
    events, stray = decode(raw, size)
    assert events == [SSEEvent("one"), SSEEvent("two\nlines"), SSEEvent("{}", "ping")]
    assert stray == []


@pytest.mark.parametrize("size", SPLITS)
def test_comments_ids_retry_and_field_without_space(size: int) -> None:
    raw = b': keep-alive\nid: 7\nretry: 1500\nevent:delta\ndata:{"a":1}\n\n'
    events, _ = decode(raw, size)
    assert events == [SSEEvent('{"a":1}', "delta", "7", 1500)]


@pytest.mark.parametrize("size", SPLITS)
def test_multibyte_utf8_split_across_reads(size: int) -> None:
    raw = "data: héllo — 世界 \u2028 still one line\n\n".encode()
    events, _ = decode(raw, size)
    assert events == [SSEEvent("héllo — 世界 \u2028 still one line")]


def test_event_without_data_is_not_dispatched_and_its_name_does_not_leak() -> None:
    events, _ = decode(b"event: lonely\n\ndata: x\n\n", 5)
    assert events == [SSEEvent("x", "message")]


def test_non_sse_lines_are_kept_as_stray() -> None:
    raw = b'data: {"ok":1}\r\n\r\n{\n  "error": {\n    "code": 503\n  }\n}\n'
    events, stray = decode(raw, 4)
    assert events == [SSEEvent('{"ok":1}')]
    assert "".join(stray).replace(" ", "") == '{"error":{"code":503}}'


def test_final_event_without_blank_line_is_delivered_at_flush() -> None:
    events, _ = decode(b"data: last", 3)
    assert events == [SSEEvent("last")]


@pytest.mark.parametrize("size", SPLITS)
def test_ndjson_any_split(size: int) -> None:
    raw = b'{"a": 1}\n\n{"b": "x\\ny"}\n{"done": true}'
    decoder = NDJSONDecoder()
    values = []
    for start in range(0, len(raw), size):
        values.extend(decoder.feed(raw[start : start + size]))
    values.extend(decoder.flush())
    assert values == [{"a": 1}, {"b": "x\ny"}, {"done": True}]
