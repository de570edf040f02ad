"""bench/ab.py: the paired ratio and its noise, the base tree it extracts, and a short real run."""

from __future__ import annotations

import math
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.ab import Paired, main, materialize, report, run
from bench.procs import RunningServer, ServerSpec, start_server
from bench.run import REPO


def short_run(
    work_dir: Path,
    *,
    rounds: int = 2,
    duration: float = 0.3,
    mode: str = "unary",
    env: tuple[tuple[str, str], ...] = (),
    per_start: int = 0,
) -> Paired:
    """A real comparison of HEAD with the working tree, kept short (c=4, 0.1 s of warm-up)."""
    return run(
        "HEAD",
        rounds=rounds,
        duration=duration,
        warmup=0.1,
        concurrency=4,
        cache_hit=False,
        work_dir=work_dir,
        mode=mode,
        env=env,
        per_start=per_start,
    )


def test_the_ratio_is_the_mean_of_each_rounds_ratio() -> None:
    paired = Paired(base=(1000.0, 2000.0), change=(1100.0, 1800.0))
    assert paired.ratios == pytest.approx((1.1, 0.9))
    assert paired.mean == pytest.approx(1.0)
    # stdev of (1.1, 0.9) is 0.1414; over sqrt(2) rounds
    assert paired.stderr == pytest.approx(0.1)


def test_a_steady_gain_is_faster_a_steady_loss_slower_and_a_scatter_noise() -> None:
    assert Paired((100.0, 100.0, 100.0), (105.0, 104.0, 106.0)).verdict() == "faster"
    assert Paired((100.0, 100.0, 100.0), (95.0, 96.0, 94.0)).verdict() == "slower"
    assert Paired((100.0, 100.0, 100.0), (110.0, 92.0, 101.0)).verdict() == "within noise"


def test_one_round_has_no_error_estimate_and_is_never_a_verdict() -> None:
    paired = Paired((100.0,), (150.0,))
    assert math.isinf(paired.stderr)
    assert paired.verdict() == "within noise"


def test_the_report_names_both_versions_and_the_ratio() -> None:
    # Ratios 1.100, 1.071, 1.049: mean 1.073, standard deviation 0.0257, over sqrt(3) rounds 0.015.
    text = report(Paired((4000.0, 4200.0, 4100.0), (4400.0, 4500.0, 4300.0)), "main~3")
    assert "| base (main~3) | 4,100 | 4,000, 4,200, 4,100 |" in text
    assert "| change (working tree) | 4,400 | 4,400, 4,500, 4,300 |" in text
    assert (
        "change / base: 1.073 ± 0.015 (standard error over 3 paired rounds, one server start): faster" in text
    )


def test_with_several_starts_the_error_is_taken_over_the_starts() -> None:
    # Ratios 1.10, 1.10 | 1.00, 1.00 | 0.95, 0.95: every round agrees with its start's pair, so
    # the rounds alone would call this certain; the three starts (means 1.10, 1.00, 0.95) do not.
    paired = Paired(base=(100.0,) * 6, change=(110.0, 110.0, 100.0, 100.0, 95.0, 95.0), per_start=2)
    assert paired.starts == pytest.approx((1.10, 1.00, 0.95))
    assert paired.mean == pytest.approx(1.0167, abs=1e-4)
    # stdev of (1.10, 1.00, 0.95) is 0.0764; over sqrt(3) starts 0.0441
    assert paired.stderr == pytest.approx(0.0441, abs=1e-4)
    assert paired.verdict() == "within noise"
    text = report(paired, "HEAD")
    assert "change / base: 1.017 ± 0.044 (standard error over 3 server starts of 2 rounds each)" in text


def test_one_start_keeps_the_error_of_its_rounds() -> None:
    one = Paired((100.0, 100.0), (110.0, 90.0), per_start=0)
    assert one.starts == pytest.approx((1.0,))
    assert one.stderr == pytest.approx(0.1)


def test_the_base_is_the_refs_code_and_is_imported_first(tmp_path: Path) -> None:
    pythonpath = materialize("HEAD", tmp_path)
    committed = subprocess.run(
        ["git", "show", "HEAD:server/omnirelay/app.py"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    assert (tmp_path / "server" / "omnirelay" / "app.py").read_text() == committed
    assert (tmp_path / "clients" / "python" / "omnirelay_client" / "v1").is_dir()
    imported = subprocess.run(
        [
            sys.executable,
            "-c",
            "import omnirelay, omnirelay_client; print(omnirelay.__file__); print(omnirelay_client.__file__)",
        ],
        cwd=tmp_path,
        env={"PYTHONPATH": pythonpath, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert imported == [
        str(tmp_path / "server" / "omnirelay" / "__init__.py"),
        str(tmp_path / "clients" / "python" / "omnirelay_client" / "__init__.py"),
    ]


def test_an_unknown_ref_fails_before_any_server_starts(tmp_path: Path) -> None:
    with pytest.raises(subprocess.CalledProcessError):
        materialize("no-such-ref-anywhere", tmp_path)


def test_both_versions_serve_load_in_alternating_rounds(tmp_path: Path) -> None:
    paired = short_run(tmp_path)
    assert len(paired.base) == len(paired.change) == 2
    assert all(rate > 0 for rate in (*paired.base, *paired.change))
    # Each version kept its own usage records.
    assert (tmp_path / "base-usage.db").exists()
    assert (tmp_path / "change-usage.db").exists()


def test_env_reaches_the_changes_server_only_and_the_report_names_it(tmp_path: Path) -> None:
    env = (("OMNIRELAY_USAGE__ENABLED", "false"),)
    paired = short_run(tmp_path, env=env)

    def records(name: str) -> int:
        with sqlite3.connect(tmp_path / f"{name}-usage.db") as db:
            count: int = db.execute("SELECT count(*) FROM usage_records").fetchone()[0]
        return count

    # Recording off on the change's server only: the base recorded its calls, the change none.
    assert records("base") > 0
    assert records("change") == 0
    text = report(paired, "HEAD", env=env)
    assert "| change (working tree, OMNIRELAY_USAGE__ENABLED=false) |" in text


def test_the_servers_are_started_again_every_per_start_rounds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    starts: list[tuple[str, int]] = []

    def counted(spec: ServerSpec, *args: Any) -> RunningServer:
        server = start_server(spec, *args)
        starts.append((spec.name, server.process.pid))
        return server

    monkeypatch.setattr("bench.stages.start_server", counted)
    paired = short_run(tmp_path, rounds=4, per_start=2)
    # Two starts of both servers, each a new process.
    assert [name for name, _ in starts] == ["base", "change", "base", "change"]
    assert len({pid for _, pid in starts}) == 4
    assert len(paired.base) == len(paired.change) == 4
    assert len(paired.starts) == 2
    assert all(rate > 0 for rate in (*paired.base, *paired.change))


@pytest.mark.parametrize("per_start", ["3", "-2", "4"])
def test_per_start_must_be_even_and_divide_the_rounds(per_start: str) -> None:
    # 3 is odd (one order more often than the other), 4 does not divide 6.
    with pytest.raises(SystemExit):
        main(["--rounds", "6", "--per-start", per_start])


@pytest.mark.parametrize("bad", ["NOEQUALS", "=value"])
def test_env_must_be_key_equals_value(bad: str) -> None:
    with pytest.raises(SystemExit):
        main(["--env", bad])


def test_a_stream_comparison_is_reported_in_messages() -> None:
    text = report(Paired((30000.0, 31000.0), (33000.0, 34100.0)), "HEAD", "messages/s")
    assert "| server | messages/s (median) | rounds |" in text
    assert "| change (working tree) | 33,550 | 33,000, 34,100 |" in text


def test_cache_hits_and_streams_are_one_or_the_other() -> None:
    with pytest.raises(SystemExit):
        main(["--cache-hit", "--stream"])


def test_both_versions_relay_streams_in_alternating_rounds(tmp_path: Path) -> None:
    paired = short_run(tmp_path, duration=0.5, mode="stream")
    # Messages, not calls: a streamed call here is 200 chunks, far more than a call per round.
    assert all(rate > 200 for rate in (*paired.base, *paired.change))
