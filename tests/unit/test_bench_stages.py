"""bench/stages.py and bench/stage_server.py: each stage serves real calls, and the table adds up."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from bench.echo_server import build_unary_response
from bench.procs import ServerSpec, start_server, stop_server
from bench.run import REPO, abba
from bench.scenarios import usage_env
from bench.stage_server import install
from bench.stages import (
    Row,
    added_micros,
    in_turns,
    main,
    per_start_problem,
    run,
    serve_and_measure,
    stages,
    table,
)
from bench.workload import unary_request
from omnirelay_client.v1 import completion_pb2, completion_pb2_grpc


def _rows(*medians: float) -> list[Row]:
    return [Row(stage, (rate,)) for stage, rate in zip(stages(), medians, strict=False)]


def test_each_stage_costs_the_difference_of_its_time_per_call() -> None:
    rows = _rows(5000.0, 4000.0, 2500.0)
    added = added_micros(rows)
    assert added[0] is None
    assert added[1] == pytest.approx(50.0)  # 250 us - 200 us
    assert added[2] == pytest.approx(150.0)  # 400 us - 250 us


def test_the_table_shows_rates_ratios_and_added_time() -> None:
    rows = [Row(stages()[0], (6000.0, 6200.0, 5800.0)), Row(stages()[1], (3000.0, 3100.0, 2900.0))]
    text = table(rows)
    assert "| echo |" in text
    assert "| 6,000 | 6,000, 6,200, 5,800 | 1.00 |" in text
    assert "| edge |" in text
    assert "| 3,000 |" in text
    assert "| 0.50 | +167 us |" in text


def test_an_unknown_stage_is_refused_before_anything_is_replaced() -> None:
    with pytest.raises(ValueError, match="expected one of edge, service"):
        install("router")


async def _call(address: str) -> tuple[completion_pb2.CompleteResponse, tuple[tuple[str, str], ...]]:
    async with grpc.aio.insecure_channel(address) as channel:
        call = completion_pb2_grpc.CompletionServiceStub(channel).Complete(unary_request())
        response = await call
        trailers = tuple((k, v) for k, v in (await call.trailing_metadata() or ()) if isinstance(v, str))
    return response, trailers


@pytest.mark.parametrize("stage", ["edge", "service"])
async def test_a_stage_server_answers_like_omnirelay(stage: str, tmp_path: Path) -> None:
    spec = next(s for s in stages() if s.name == stage)
    server = start_server(
        ServerSpec(stage, spec.argv, spec.env + usage_env(tmp_path, stage)),
        tmp_path / "server.log",
        None,
        60.0,
        REPO,
    )
    try:
        first, trailers = await _call(server.address)
        second, _ = await _call(server.address)
    finally:
        stop_server(server)
    keys = {k for k, _ in trailers}
    assert {"x-request-id", "x-omnirelay-model", "x-omnirelay-provider"} <= keys
    if stage == "edge":
        assert first == build_unary_response()
    else:
        # A real completion from the local provider, made on the first call and rendered again for the next.
        assert first.usage.output_tokens == 16
        assert first.choices[0].message.content[0].text
        assert first.route.provider == "local"
        assert first.route.attempts[0].deployment == "local/small"
        assert second == first


def test_every_stage_serves_load_without_errors(tmp_path: Path) -> None:
    rows = run(rounds=1, duration=0.3, warmup=0.1, concurrency=4, log_dir=tmp_path)
    assert [r.stage.name for r in rows] == ["echo", "edge", "service", "routed", "full"]
    assert all(len(r.rates) == 1 and r.median > 0 for r in rows)
    # Only the full server records usage: the stages before it have it switched off.
    assert (tmp_path / "full-usage.db").exists()


def test_servers_are_measured_in_turns_the_order_reversed_every_other_round() -> None:
    asked: list[int] = []

    def measure_one(which: int) -> float:
        asked.append(which)
        return 1000.0 + 10 * len(asked)

    found = in_turns(3, 3, measure_one)
    assert asked == [0, 1, 2, 2, 1, 0, 0, 1, 2]
    # Each server's rates, in round order.
    assert found == [[1010.0, 1060.0, 1070.0], [1020.0, 1050.0, 1080.0], [1030.0, 1040.0, 1090.0]]


def test_make_bench_and_the_tools_share_one_order_a_copy_the_runner_may_change() -> None:
    targets = ["echo", "omnirelay", "cache-hit"]
    assert [abba(targets, r) for r in range(3)] == [targets, targets[::-1], targets]
    # `make bench` drops a dead target from its list while a round goes on: the round keeps its order.
    order = abba(targets, 0)
    targets.remove("omnirelay")
    assert order == ["echo", "omnirelay", "cache-hit"]


def test_per_start_must_be_even_and_divide_the_rounds() -> None:
    assert per_start_problem(4, 2) == ""
    assert per_start_problem(3, 0) == ""
    # Odd: one order more often than the other; 4 does not divide 6; negative is nonsense.
    for rounds, per_start in ((6, 3), (6, 4), (4, -2)):
        assert "--per-start" in per_start_problem(rounds, per_start)
    with pytest.raises(SystemExit):
        main(["--rounds", "3", "--per-start", "2"])


def test_servers_are_started_afresh_every_per_start_rounds(monkeypatch: pytest.MonkeyPatch) -> None:
    blocks: list[int] = []

    def serve_once(specs: object, rounds: int, log_dir: Path, measure_one: object) -> list[list[float]]:
        blocks.append(rounds)
        base = 100.0 * len(blocks)
        return [[base + r for r in range(rounds)], [base + 10 + r for r in range(rounds)]]

    monkeypatch.setattr("bench.stages._serve_once", serve_once)
    specs = (ServerSpec("a", ("serve",)), ServerSpec("b", ("serve",)))
    found = serve_and_measure(specs, 6, Path("."), lambda address, cpus: 0.0, per_start=2)
    assert blocks == [2, 2, 2]
    # Each server's rates in round order, across the starts.
    assert found == [[100.0, 101.0, 200.0, 201.0, 300.0, 301.0], [110.0, 111.0, 210.0, 211.0, 310.0, 311.0]]
    blocks.clear()
    serve_and_measure(specs, 3, Path("."), lambda address, cpus: 0.0)
    assert blocks == [3]
