"""bench/procs.py's run_load_tool: the one way the bench runs a load generator and reads its result."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from bench.procs import LoadToolError, run_load_tool


def test_the_last_line_is_the_result(tmp_path: Path) -> None:
    script = "print('warming up'); print('{\"calls\": 12, \"errors\": 0}')"
    assert run_load_tool([sys.executable, "-c", script], tmp_path, None, 30) == {"calls": 12, "errors": 0}


def test_a_failed_tool_says_its_exit_status_and_the_end_of_its_errors(tmp_path: Path) -> None:
    script = "import sys; print('first', file=sys.stderr); print('the reason', file=sys.stderr); sys.exit(3)"
    with pytest.raises(LoadToolError, match="exited 3") as failed:
        run_load_tool([sys.executable, "-c", script], tmp_path, None, 30)
    assert str(failed.value).endswith("first\nthe reason")


def test_a_tool_that_prints_nothing_has_failed(tmp_path: Path) -> None:
    with pytest.raises(LoadToolError, match="exited 0"):
        run_load_tool([sys.executable, "-c", "pass"], tmp_path, None, 30)


def test_a_tool_over_its_time_is_stopped(tmp_path: Path) -> None:
    with pytest.raises(LoadToolError, match="ran over 1 s"):
        run_load_tool([sys.executable, "-c", "import time; time.sleep(30)"], tmp_path, None, 1.0)
