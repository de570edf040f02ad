"""bench/run.py's runner: every repeat of a load scenario has server processes of its own."""

from __future__ import annotations

from pathlib import Path
from unittest import mock

from bench.procs import RunningServer, ServerSpec
from bench.results import BASELINE, ECHO_SCENARIO, SUBJECT, Measurement
from bench.scenarios import OMNIRELAY_SERVER, Target
from tests.bench_helpers import config, measured, run_load_scenario


def test_each_repeat_starts_and_stops_servers_of_its_own(tmp_path: Path) -> None:
    pids = iter(range(100, 200))
    started_pids: list[list[int]] = []
    stops: list[list[int]] = []
    seen: list[tuple[int, str, int]] = []

    def starts(started: list[RunningServer], levels: tuple[object, ...]) -> list[Target]:
        targets = []
        for name in (BASELINE, SUBJECT):
            pid = next(pids)
            process = mock.Mock(pid=pid, **{"poll.return_value": None})
            server = RunningServer(ServerSpec(name, ("serve",)), process, f"127.0.0.1:{pid}", tmp_path)
            started.append(server)
            targets.append(Target(name, server, "grpc", server.address, modes=("unary",)))
        started_pids.append([server.process.pid for server in started])
        return targets

    def stop_all(servers: list[RunningServer]) -> list[object]:
        stops.append(sorted(server.process.pid for server in servers))
        return []

    def measure_settled(
        runner: object, scenario: str, target: Target, mode: str, concurrency: int, repeat: int
    ) -> Measurement:
        seen.append((repeat, target.name, target.server.process.pid))
        return measured(target.name, repeat, 1000.0)

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    run_config = config(scenarios=(ECHO_SCENARIO,), modes=("unary",), concurrency=(64,), repeats=3)
    argv = {OMNIRELAY_SERVER: ("omnirelay", "serve")}
    out = run_load_scenario(tmp_path, data_dir, run_config, argv, starts, stop_all, measure_settled)

    # Three starts, each stopped after its own repeat and before the next start.
    assert started_pids == [[100, 101], [102, 103], [104, 105]]
    assert stops == [[100, 101], [102, 103], [104, 105]]
    # Each repeat measures that start's servers, in the flipping (abba) order.
    assert seen == [
        (0, BASELINE, 100),
        (0, SUBJECT, 101),
        (1, SUBJECT, 103),
        (1, BASELINE, 102),
        (2, BASELINE, 104),
        (2, SUBJECT, 105),
    ]
    assert [m.repeat for m in out.measurements] == [0, 0, 1, 1, 2, 2]
    assert out.failures == []
