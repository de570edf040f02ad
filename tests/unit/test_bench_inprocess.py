"""bench/inprocess.py: calls go through the servicer exactly as `serve` wires it, bookkeeping included.

It configures logging as `serve` does; the ``logging_state`` fixture puts it back afterwards.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.inprocess import main, run, settings_for
from tests.logging_state import LoggingState

CALLS = 12


async def test_every_call_is_answered_recorded_and_logged(
    tmp_path: Path, logging_state: LoggingState
) -> None:
    settings = settings_for("development", tmp_path)
    log = tmp_path / "server.log"
    outcome = await run(settings, CALLS, cache_hit=False, log=log)
    assert outcome.calls == CALLS
    assert outcome.seconds > 0
    # The usage layer, the recorder and the SQLite ledger ran: one record per call, written.
    assert outcome.recorded == CALLS
    assert (tmp_path / "inprocess-usage.db").exists()
    # The request line of each call went to the server's log, as `serve` writes it.
    lines = [line for line in log.read_text().splitlines() if "omnirelay.access request" in line]
    assert len(lines) == CALLS
    assert all("cache=bypass" in line for line in lines)  # the uncacheable request
    assert outcome.hits == 0


async def test_the_cacheable_request_is_answered_from_the_cache_after_the_first_call(
    tmp_path: Path, logging_state: LoggingState
) -> None:
    outcome = await run(settings_for("development", tmp_path), CALLS, cache_hit=True, log=tmp_path / "log")
    assert outcome.hits == CALLS - 1
    assert outcome.recorded == CALLS  # hits are recorded like any other call


def test_settings_point_the_ledger_at_the_run_s_own_directory_and_leave_the_environment_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMNIRELAY_USAGE__SQLITE_PATH", "/elsewhere/usage.db")
    monkeypatch.delenv("OMNIRELAY_USAGE__SPILL_PATH", raising=False)
    settings = settings_for("development", tmp_path)
    assert settings.usage.sqlite_path == str(tmp_path / "inprocess-usage.db")
    assert settings.usage.spill_path == str(tmp_path / "inprocess-usage-spill.jsonl")
    assert settings.metrics.port == 0
    assert os.environ["OMNIRELAY_USAGE__SQLITE_PATH"] == "/elsewhere/usage.db"
    assert "OMNIRELAY_USAGE__SPILL_PATH" not in os.environ


def test_the_command_prints_its_calls_records_and_hits(
    capsys: pytest.CaptureFixture[str], logging_state: LoggingState
) -> None:
    assert main(["--calls", "3", "--cache-hit"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("3 calls, ")
    assert "3 usage records written, 2 cache hits" in printed
