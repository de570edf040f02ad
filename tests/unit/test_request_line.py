"""The request line's text fast path says exactly what the general path says, or stands aside."""

from __future__ import annotations

import io
import itertools
import logging
import random

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


def checked(record: UsageRecord, formatter: logs.LineFormatter | None = None) -> tuple[bool, bool]:
    """(clean, bare): what a RequestLog finds of the strings a caller or the configuration chose."""
    return logs.RequestLog(False, lambda s: s)._checked(record, formatter or logs.TextFormatter(Secrets([])))


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
        fast = logs._text_pairs(record, checked(record)[1])
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
    assert logs._text_pairs(record, checked(record)[1]) is None


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
    assert not checked(record, formatter)[0]
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


def observed(formatter: logs.LineFormatter, record: UsageRecord, *more: UsageRecord) -> str:
    """The lines one RequestLog writing through ``formatter`` to a sink makes of the records."""
    stream = io.StringIO()
    request_log = logs.RequestLog(False, lambda s: s)
    request_log._sink, request_log._formatter = LineSink(stream), formatter
    access = logging.getLogger(logs.ACCESS_LOGGER)
    level = access.level
    access.setLevel(logging.INFO)
    try:
        for each in (record, *more):
            request_log.observe(each, "", None)
    finally:
        access.setLevel(level)
    return stream.getvalue().removesuffix("\n")


def test_a_clean_line_is_written_without_a_second_pass_of_the_mask() -> None:
    formatter = logs.TextFormatter(Secrets(["hunter2hunter2"]))
    record = UsageRecord(
        "rec", "rid", 1.7e9, "m", 0, resolved_model="m", provider="p", deployment="p/m", attempts=ONE
    )
    assert checked(record, formatter) == (True, True)
    pairs = logs._text_pairs(record, True)
    assert pairs is not None
    line = formatter.with_pairs(1.7e9, "INFO", logs.ACCESS_LOGGER, "request", pairs)
    assert line == formatter.line(
        logs.Line(1.7e9, "INFO", logs.ACCESS_LOGGER, "request", "rid", _fields(record))
    )
    assert observed(formatter, record) == line


def test_a_json_line_of_a_clean_call_is_the_general_paths_line() -> None:
    formatter = logs.JsonFormatter(Secrets(["hunter2hunter2"]))
    counted = 0
    for record in records():
        if not checked(record, formatter)[0]:
            continue
        fields = _fields(record)
        line = logs.Line(1.7e9, "INFO", logs.ACCESS_LOGGER, "request", record.request_id, fields)
        general_line = formatter.line(line)
        assert formatter.unmasked(line) == general_line
        counted += 1
    assert counted == len(records())


def test_a_routes_checked_names_are_remembered_but_each_calls_ids_are_checked_again() -> None:
    formatter = logs.TextFormatter(Secrets(["hunter2hunter2"]))
    request_log = logs.RequestLog(False, lambda s: s)
    record = plain("local-small")
    assert request_log._checked(record, formatter) == (True, True)
    assert request_log._names_checked.cache_info().currsize == 1
    # The same route again, but the caller's request id carries a secret, then a quote.
    leaked = record._replace(request_id="id-hunter2hunter2")
    assert request_log._checked(leaked, formatter) == (False, True)
    assert request_log._checked(record._replace(trace_id='a"b'), formatter) == (True, False)
    assert request_log._names_checked.cache_info().currsize == 1
    # A route whose names need the mask is remembered as such.
    dirty = plain("local-small", project="hunter2hunter2")
    assert request_log._checked(dirty, formatter)[0] is False
    assert request_log._checked(dirty, formatter)[0] is False
    assert request_log._names_checked.cache_info().currsize == 2


def test_the_remembered_routes_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logs, "_NAMES_MAX", 4)
    request_log = logs.RequestLog(False, lambda s: s)
    formatter = logs.TextFormatter(Secrets([]))
    for i in range(20):
        assert request_log._checked(plain(f"model-{i}"), formatter) == (True, True)
    assert 0 < request_log._names_checked.cache_info().currsize <= 4


def test_a_secret_in_a_request_id_is_masked_on_a_route_already_checked() -> None:
    formatter = logs.TextFormatter(Secrets(["hunter2hunter2"]))
    route = plain("local-small")
    lines = observed(formatter, route, route._replace(request_id="hunter2hunter2"))
    first, second = lines.splitlines()
    assert "request_id=rid " in first
    assert "hunter2hunter2" not in second
    assert SECRET_MASK in second


def test_stamps_show_the_milliseconds_as_before() -> None:
    text = logs.TextFormatter(Secrets([]))
    json_formatter = logs.JsonFormatter(Secrets([]))
    for fraction, millis in ((0.0, "000"), (0.0071, "007"), (0.5, "500"), (0.9995, "999")):
        line = text.with_pairs(1.7e9 + fraction, "INFO", "x", "m", "k=v")
        assert line.split(" ")[1].endswith("," + millis), line
        assert f'.{millis}Z"' in json_formatter.unmasked(logs.Line(1.7e9 + fraction, "INFO", "x", "m"))
    # Levels keep their padded column, the usual ones and any other.
    assert text.with_pairs(1.7e9, "INFO", "x", "m", "k=v").endswith(" INFO    x m k=v")
    assert text.line(logs.Line(1.7e9, "TRACE", "x", "m")).endswith(" TRACE   x m")


def test_durations_read_as_the_general_path_writes_them() -> None:
    rng = random.Random(7)
    values = [
        0.0,
        1e-9,
        0.0000004,
        0.0000005,
        0.0000015,
        0.001,
        0.0315,
        0.031536,
        1.0,
        2.5,
        59.9999,
        1e6,
        1e10,
    ]
    values += [rng.uniform(0, 0.01) for _ in range(3000)]
    values += [rng.uniform(0, 120) for _ in range(3000)]
    values += [round(rng.uniform(0, 5), 7) for _ in range(3000)]
    for seconds in values:
        assert logs._ms_text(seconds) == str(round(seconds * 1000, 3)), seconds
