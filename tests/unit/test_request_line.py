"""The request line's text fast path says exactly what the general path says, or stands aside."""

from __future__ import annotations

import io
import itertools
import logging

import pytest

from omnirelay.domain import TokenUsage
from omnirelay.telemetry import logs
from omnirelay.telemetry.redact import SECRET_MASK, Secrets
from omnirelay.telemetry.sink import LineSink
from omnirelay.usage.records import BilledAttempt, UsageRecord

ONE = (BilledAttempt("local-small", "local", "local/small", "success"),)
TWO = (
    BilledAttempt("local-small", "local", "local/small", "upstream_error"),
    BilledAttempt("local-small", "local", "local/small", "success"),
)


def plain(model: str, project: str = "", attempts: tuple[BilledAttempt, ...] = ONE) -> UsageRecord:
    """A call served by local/small, asked for ``model``."""
    return UsageRecord(
        "rec",
        "rid",
        1.7e9,
        model,
        0,
        project=project,
        resolved_model="local-small",
        provider="local",
        deployment="local/small",
        attempts=attempts,
    )


def general(record: UsageRecord) -> str:
    return logs._pairs(logs.RequestLog(False, lambda s: s)._fields(record, "", None))


def records() -> list[UsageRecord]:
    found = []
    for (
        model,
        trace_id,
        ttft,
        usage,
        project,
        cache,
        streamed,
        fallback,
        status,
        attempts,
    ) in itertools.product(
        ("local-small", "fast", "", "a model", "k=v", 'q"uote', "naïve"),
        ("", "4bf92f3577b34da6a3ce929d0e0e4736"),
        (None, 0.0123456),
        (
            TokenUsage(5, 16),
            TokenUsage(5, 16, cached_input_tokens=3, reasoning_tokens=2, estimated=True, cost_micros=41),
        ),
        ("", "team-a", "team a"),
        ("", "hit", "bypass"),
        (False, True),
        (False, True),
        (0, 4, 14, 99),
        (ONE, TWO),
    ):
        found.append(
            UsageRecord(
                "rec",
                "5bc966a82659d0ec0000000000000001",
                1.7e9,
                model,
                status,
                trace_id=trace_id,
                project=project,
                resolved_model="local-small" if model else "",
                provider="local",
                deployment="local/small",
                attempts=attempts,
                usage=usage,
                latency_seconds=0.031536,
                ttft_seconds=ttft,
                cache=cache,
                streamed=streamed,
                fallback_used=fallback,
            )
        )
    return found


def test_the_fast_path_matches_the_general_path_wherever_it_answers() -> None:
    answered = 0
    for record in records():
        fast = logs._text_pairs(record, logs._given(record))
        if fast is not None:
            answered += 1
            assert fast == general(record), record
    # It answers for the common calls, not just for none of them.
    assert answered >= 1000


@pytest.mark.parametrize(
    ("model", "project", "attempts"),
    [("a model", "", ONE), ("k=v", "", ONE), ("local-small", "team a", ONE), ("", "", ONE), ("x", "", TWO)],
)
def test_the_fast_path_stands_aside_for_quoting_empty_values_and_retries(
    model: str, project: str, attempts: tuple[BilledAttempt, ...]
) -> None:
    record = plain(model, project, attempts)
    assert logs._text_pairs(record, logs._given(record)) is None


@pytest.mark.parametrize("kind", [logs.TextFormatter, logs.JsonFormatter])
@pytest.mark.parametrize(
    ("model", "project"),
    [("sk-proj-Tq4xW9bNc2LmRv7KpYz3", ""), ("local-small", "hunter2hunter2"), ("a-hunter2hunter2-b", "")],
)
def test_a_secret_in_a_callers_string_takes_the_masked_path(
    kind: type[logs.LineFormatter], model: str, project: str
) -> None:
    formatter = kind(Secrets(["hunter2hunter2"]))
    record = plain(model, project)
    assert not formatter.clean(logs._given(record))
    line = observed(formatter, record)
    ended = record.time + record.latency_seconds
    assert line == formatter.line(
        logs.Line(ended, "INFO", logs.ACCESS_LOGGER, "request", "rid", _fields(record))
    )
    assert SECRET_MASK in line
    assert "hunter2hunter2" not in line
    assert "Tq4xW9bNc2LmRv7KpYz3" not in line


def _fields(record: UsageRecord) -> dict[str, object]:
    return logs.RequestLog(False, lambda s: s)._fields(record, "", None)


def observed(formatter: logs.LineFormatter, record: UsageRecord) -> str:
    """The line a RequestLog writing through ``formatter`` to a sink makes of ``record``."""
    stream = io.StringIO()
    request_log = logs.RequestLog(False, lambda s: s)
    request_log._sink, request_log._formatter = LineSink(stream), formatter
    access = logging.getLogger(logs.ACCESS_LOGGER)
    level = access.level
    access.setLevel(logging.INFO)
    try:
        request_log.observe(record, "", None)
    finally:
        access.setLevel(level)
    return stream.getvalue().removesuffix("\n")


def test_a_clean_line_is_written_without_a_second_pass_of_the_mask() -> None:
    formatter = logs.TextFormatter(Secrets(["hunter2hunter2"]))
    record = UsageRecord(
        "rec", "rid", 1.7e9, "m", 0, resolved_model="m", provider="p", deployment="p/m", attempts=ONE
    )
    assert formatter.clean(logs._given(record))
    pairs = logs._text_pairs(record, logs._given(record))
    assert pairs is not None
    line = formatter.with_pairs(1.7e9, "INFO", logs.ACCESS_LOGGER, "request", pairs)
    assert line == formatter.line(
        logs.Line(1.7e9, "INFO", logs.ACCESS_LOGGER, "request", "rid", _fields(record))
    )
    assert observed(formatter, record) == line


def test_a_json_line_of_a_clean_call_is_the_general_paths_line() -> None:
    formatter = logs.JsonFormatter(Secrets(["hunter2hunter2"]))
    checked = 0
    for record in records():
        if not formatter.clean(logs._given(record)):
            continue
        fields = _fields(record)
        line = logs.Line(1.7e9, "INFO", logs.ACCESS_LOGGER, "request", record.request_id, fields)
        general_line = formatter.line(line)
        assert formatter.unmasked(line) == general_line
        checked += 1
    assert checked == len(records())
