"""The real `omnirelay usage [summary|export]` and `omnirelay pricing show|diff` commands.

`usage` runs against an `omnirelay serve` child process whose ledger and spill
file live in the test's directory and whose local models are priced through an
operator config file; the calls are made over gRPC with distinct attribution,
and every expected count, token sum and cost is computed here from the replies.
`pricing` reads the settings; its expected prices come straight from the shipped
registry file.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import re
import tomllib
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import grpc
import pytest

from omnirelay_client.v1 import completion_pb2, completion_pb2_grpc
from tests.helpers import request
from tests.integration.serve import Served, run_cli, start

pytestmark = pytest.mark.subprocess

ROOT = Path(__file__).resolve().parents[2]
REGISTRY = ROOT / "server" / "omnirelay" / "routing" / "models.toml"
# USD per million tokens, awkward on purpose so rounding shows.
PRICES = {"local-small": (Fraction("2.5"), Fraction("10")), "local-large": (Fraction("3.75"), Fraction("15"))}
CONFIG = """
[default.models.local-small.pricing]
input = 2.5
output = 10.0
source = "cli-test"
as_of = "2026-01-01"

[default.models.local-large.pricing]
input = 3.75
output = 15.0
source = "cli-test"
as_of = "2026-01-01"
"""
OPENAI = {"OMNIRELAY_PROVIDERS__OPENAI__KIND": "openai", "OMNIRELAY_PROVIDERS__OPENAI__API_KEY": "sk-test"}


@dataclass(frozen=True)
class Call:
    project: str
    user: str
    tags: dict[str, str]
    model: str
    prompt: str


CALLS = (
    Call("harbor", "ana", {"feature": "search"}, "local-small", "where are the lighthouses"),
    Call("harbor", "bo", {"feature": "chat"}, "local-large", "tell me about the tides of the bay"),
    Call("dock", "ana", {}, "local-small", "list the cranes"),
    Call("dock", "cy", {"feature": "search", "env": "prod"}, "local-small", "how deep is berth seven"),
    Call("harbor", "ana", {}, "local-small", "and the second lighthouse, how tall is it exactly"),
)


@dataclass(frozen=True)
class Made:
    call: Call
    reply: completion_pb2.CompleteResponse


@dataclass(frozen=True)
class Setup:
    served: Served
    made: tuple[Made, ...]
    started: dt.datetime


def cost_micros(model: str, input_tokens: int, output_tokens: int) -> int:
    """Tokens x USD per million, rounded half up to micro-USD: computed apart from the gateway."""
    price_in, price_out = PRICES[model]
    return int(price_in * input_tokens + price_out * output_tokens + Fraction(1, 2))


@pytest.fixture(scope="module")
def calls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    directory = tmp_path_factory.mktemp("usage-cli")
    config = directory / "omnirelay.toml"
    config.write_text(CONFIG, encoding="utf-8")
    served = start(
        "--profile",
        "development",
        extra_env={
            "OMNIRELAY_CONFIG": str(config),
            "OMNIRELAY_USAGE__SQLITE_PATH": str(directory / "usage.db"),
            "OMNIRELAY_USAGE__SPILL_PATH": str(directory / "usage-spill.jsonl"),
            "OMNIRELAY_METRICS__PORT": "0",
            "OMNIRELAY_SERVER__SHUTDOWN_DRAIN_SECONDS": "0",
        },
    )
    try:
        started = dt.datetime.now(dt.UTC)
        made = []
        with grpc.insecure_channel(served.address) as channel:
            stub = completion_pb2_grpc.CompletionServiceStub(channel)
            for call in CALLS:
                req = request(call.prompt, call.model)
                req.attribution.project = call.project
                req.attribution.user = call.user
                req.attribution.tags.update(call.tags)
                reply: completion_pb2.CompleteResponse = stub.Complete(req, timeout=10)
                made.append(Made(call, reply))
        yield Setup(served, tuple(made), started)
    finally:
        assert served.stop() == 0


def test_the_calls_cost_what_the_prices_say(calls: Setup) -> None:
    # The premise of every count below: each call was served and billed at its configured price.
    assert len({m.reply.route.request_id for m in calls.made}) == len(CALLS)
    for m in calls.made:
        u = m.reply.usage
        assert u.cost_micros == cost_micros(m.call.model, u.input_tokens, u.output_tokens) > 0


# --- usage summary -----------------------------------------------------------------------------

HEADER = [
    "CALLS",
    "ERR%",
    "IN",
    "OUT",
    "CACHED",
    "COST $",
    "SAVED $",
    "HIT%",
    "FALLBK%",
    "P50 ms",
    "P95 ms",
    "P99 ms",
]


def table(stdout: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a printed table: cells are separated by two spaces or more."""
    lines = [re.split(r"\s{2,}", line.strip()) for line in stdout.splitlines() if line.strip()]
    return lines[0], lines[1:]


def usage_cli(calls: Setup, *args: str) -> str:
    result = run_cli("usage", "--target", calls.served.address, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


Row = tuple[tuple[str, ...], int, int, int, int]


def expected_rows(made: list[Made], *dims: str) -> list[Row]:
    """(keys, calls, input, output, cost) per group, most expensive first, ties by keys."""
    sums: dict[tuple[str, ...], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for m in made:
        keys = tuple(m.call.model if d == "model" else str(getattr(m.call, d)) for d in dims)
        s = sums[keys]
        s[0] += 1
        s[1] += m.reply.usage.input_tokens
        s[2] += m.reply.usage.output_tokens
        s[3] += m.reply.usage.cost_micros
    rows: list[Row] = [(keys, s[0], s[1], s[2], s[3]) for keys, s in sums.items()]
    return sorted(rows, key=lambda r: (-r[4], r[0]))


def check_summary(stdout: str, made: list[Made], *dims: str) -> None:
    header, rows = table(stdout)
    assert header == [d.upper() for d in dims] + HEADER
    expected = expected_rows(made, *dims)
    assert [tuple(r[: len(dims)]) for r in rows] == [e[0] for e in expected]
    n = len(dims)
    for row, (_, calls, tokens_in, tokens_out, cost) in zip(rows, expected, strict=True):
        assert len(row) == len(header)
        assert (int(row[n]), int(row[n + 2]), int(row[n + 3]), int(row[n + 4])) == (
            calls,
            tokens_in,
            tokens_out,
            0,
        )
        assert Decimal(row[n + 5]) * 1_000_000 == cost  # COST $, exactly
        assert (row[n + 1], row[n + 6], row[n + 7], row[n + 8]) == ("0.0", "0", "0.0", "0.0")
        p50, p95, p99 = (int(c) for c in row[n + 9 :])
        assert 0 <= p50 <= p95 <= p99 < 10_000


def test_summary_by_model_and_project(calls: Setup) -> None:
    stdout = usage_cli(calls, "--by", "model,project")
    check_summary(stdout, list(calls.made), "model", "project")
    assert len(table(stdout)[1]) == 3  # (local-small, harbor), (local-small, dock), (local-large, harbor)


def test_summary_by_user(calls: Setup) -> None:
    check_summary(usage_cli(calls, "--by", "user"), list(calls.made), "user")


def test_summary_filtered_by_project(calls: Setup) -> None:
    stdout = usage_cli(calls, "--by", "project,model", "--project", "dock")
    check_summary(stdout, [m for m in calls.made if m.call.project == "dock"], "project", "model")
    assert {r[0] for r in table(stdout)[1]} == {"dock"}


def test_summary_filtered_by_tag_and_since(calls: Setup) -> None:
    stdout = usage_cli(calls, "--by", "project", "--tag", "feature=search", "--since", "1h")
    check_summary(stdout, [m for m in calls.made if m.call.tags.get("feature") == "search"], "project")


def test_summary_of_a_window_without_calls(calls: Setup) -> None:
    stdout = usage_cli(calls, "--start", "2001-01-01", "--end", "2001-01-02T00:00:00+00:00")
    assert stdout.strip() == "no usage recorded for this filter"


# --- usage export ------------------------------------------------------------------------------


def test_export_jsonl_to_a_file(calls: Setup, tmp_path: Path) -> None:
    out = tmp_path / "usage.jsonl"
    result = run_cli(
        "usage", "export", "--target", calls.served.address, "--format", "jsonl", "--output", str(out)
    )
    assert result.returncode == 0, result.stderr
    assert f"exported {len(CALLS)} records" in result.stderr
    lines = out.read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == len(CALLS)
    by_id = {r["request_id"]: r for r in records}
    assert set(by_id) == {m.reply.route.request_id for m in calls.made}
    for m in calls.made:
        r = by_id[m.reply.route.request_id]
        usage: dict[str, Any] = r["usage"]
        # int64 fields are strings in the JSON mapping of protobuf.
        assert int(usage["input_tokens"]) == m.reply.usage.input_tokens
        assert int(usage["output_tokens"]) == m.reply.usage.output_tokens
        assert int(usage["cost_micros"]) == m.reply.usage.cost_micros
        attribution = r["attribution"]
        assert (attribution.get("project"), attribution.get("user")) == (m.call.project, m.call.user)
        assert attribution.get("tags", {}) == m.call.tags
        assert (r["requested_model"], r["resolved_model"]) == (m.call.model, m.call.model)
        assert len(r["attempts"]) == 1
        when = dt.datetime.fromisoformat(r["time"].replace("Z", "+00:00"))
        assert calls.started - dt.timedelta(seconds=5) <= when <= dt.datetime.now(dt.UTC)
    # Oldest first: the calls were made one after the other.
    assert [r["request_id"] for r in records] == [m.reply.route.request_id for m in calls.made]


def test_export_csv_to_a_file(calls: Setup, tmp_path: Path) -> None:
    out = tmp_path / "usage.csv"
    result = run_cli(
        "usage", "export", "--target", calls.served.address, "--format", "csv", "--output", str(out)
    )
    assert result.returncode == 0, result.stderr
    with out.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(CALLS)
    assert [r["request_id"] for r in rows] == [m.reply.route.request_id for m in calls.made]
    for row, m in zip(rows, calls.made, strict=True):
        u = m.reply.usage
        assert (int(row["input_tokens"]), int(row["output_tokens"]), int(row["cost_micros"])) == (
            u.input_tokens,
            u.output_tokens,
            u.cost_micros,
        )
        assert (row["project"], row["user"], row["resolved_model"]) == (
            m.call.project,
            m.call.user,
            m.call.model,
        )
        assert row["tags"] == ";".join(f"{k}={v}" for k, v in sorted(m.call.tags.items()))
        assert (row["status_code"], row["attempts"], row["estimated"]) == ("0", "1", "False")
        assert float(row["latency_seconds"]) > 0
        assert row["ttft_seconds"] == ""  # unary calls have no first token
        when = dt.datetime.fromisoformat(row["time"])
        assert calls.started - dt.timedelta(seconds=5) <= when <= dt.datetime.now(dt.UTC)


def test_export_filtered_by_project_to_stdout(calls: Setup) -> None:
    result = run_cli("usage", "export", "--target", calls.served.address, "--project", "harbor")
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    expected = [m.reply.route.request_id for m in calls.made if m.call.project == "harbor"]
    assert [r["request_id"] for r in records] == expected
    assert "exported 3 records" in result.stderr


# --- usage: bad arguments ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--since", "yesterday"), "--since 'yesterday': expected a number and m, h, d or w"),
        (("--since", "10s"), "--since '10s'"),
        (("--start", "last tuesday"), "--start 'last tuesday': expected an ISO 8601 time"),
        (("--tag", "nokey"), "--tag 'nokey': expected KEY=VALUE"),
        (("--by", "model,colour"), "unknown --by colour"),
    ],
    ids=["since-word", "since-seconds", "start", "tag", "by"],
)
def test_bad_arguments_exit_2_with_a_message(calls: Setup, args: tuple[str, ...], message: str) -> None:
    result = run_cli("usage", "--target", calls.served.address, *args)
    assert result.returncode == 2
    assert result.stderr.startswith("omnirelay usage: ")
    assert message in result.stderr
    assert result.stdout == ""


def test_export_with_a_bad_since_exits_2(calls: Setup, tmp_path: Path) -> None:
    out = tmp_path / "never.jsonl"
    result = run_cli(
        "usage", "export", "--target", calls.served.address, "--since", "7x", "--output", str(out)
    )
    assert result.returncode == 2
    assert "--since '7x'" in result.stderr
    assert not out.exists()


def test_an_unreachable_target_fails_with_exit_1() -> None:
    result = run_cli("usage", "--target", "127.0.0.1:1", "--timeout", "2")
    assert result.returncode == 1
    assert "UNAVAILABLE" in result.stderr


# --- pricing -------------------------------------------------------------------------------------


def registry_rows() -> dict[tuple[str, str], dict[str, Any]]:
    """The shipped registry's prices of every model with an openai deployment, keyed (model, deployment)."""
    with REGISTRY.open("rb") as f:
        models = tomllib.load(f)["models"]
    rows = {}
    for name, model in models.items():
        for placed in model.get("deployments", []):
            if placed["provider"] == "openai":
                p = model["pricing"]
                rows[(name, f"openai/{placed['provider_model']}")] = {
                    "input": p["input"],
                    "output": p["output"],
                    "cached_input": p.get("cached_input", p["input"]),
                    "cache_write": p.get("cache_write", p["input"]),
                    "reasoning": p.get("reasoning", p["output"]),
                    "as_of": p["as_of"],
                    "source": p["source"],
                }
    return rows


LOCAL_ROWS = {("local-large", "local/large"), ("local-small", "local/small")}


def pricing_table(extra_env: dict[str, str] | None = None) -> tuple[str, dict[tuple[str, str], list[str]]]:
    result = run_cli("pricing", "show", extra_env=extra_env)
    assert result.returncode == 0, result.stderr
    first, *rest = result.stdout.splitlines()
    header, rows = table("\n".join(rest))
    assert header == [
        "MODEL",
        "DEPLOYMENT",
        "INPUT",
        "OUTPUT",
        "CACHED",
        "CACHE WRITE",
        "REASONING",
        "AS OF",
        "SOURCE",
    ]
    return first, {(r[0], r[1]): r[2:] for r in rows}


def test_pricing_show_lists_the_registry_prices_of_routable_models() -> None:
    first, rows = pricing_table(OPENAI)
    assert re.fullmatch(r"price table pt-[0-9a-f]{12} \(USD per million tokens\)", first)
    expected = registry_rows()
    assert len(expected) >= 5
    assert set(rows) == set(expected) | LOCAL_ROWS
    for key, want in expected.items():
        got = rows[key]
        names = ("input", "output", "cached_input", "cache_write", "reasoning")
        # Compared as numbers: 0.075 must read as 0.075 and 10.00 as ten.
        assert [Decimal(c) for c in got[:5]] == [Decimal(str(want[n])) for n in names], key
        assert got[5:] == [want["as_of"], want["source"]], key


def test_pricing_show_without_the_provider_lists_only_local_models() -> None:
    _, rows = pricing_table()
    assert set(rows) == LOCAL_ROWS
    assert all(Decimal(c) == 0 for r in rows.values() for c in r[:5])


def test_pricing_show_writes_whole_prices_without_an_exponent() -> None:
    _, rows = pricing_table(OPENAI)
    assert rows[("gpt-4o", "openai/gpt-4o-2024-08-06")][1] == "10"


def snapshot(path: Path) -> dict[str, Any]:
    result = run_cli("pricing", "show", "--format", "json", extra_env=OPENAI)
    assert result.returncode == 0, result.stderr
    path.write_text(result.stdout, encoding="utf-8")
    saved: dict[str, Any] = json.loads(result.stdout)
    return saved


def test_pricing_show_json_has_the_registry_prices(tmp_path: Path) -> None:
    saved = snapshot(tmp_path / "prices.json")
    assert re.fullmatch(r"pt-[0-9a-f]{12}", saved["version"])
    by_key = {(p["model"], p["deployment"]): p for p in saved["prices"]}
    expected = registry_rows()
    assert set(by_key) == set(expected) | LOCAL_ROWS
    for key, want in expected.items():
        got = by_key[key]
        assert got["known"] is True
        for name in ("input", "output", "cached_input", "cache_write", "reasoning"):
            assert Decimal(got[name]) == Decimal(str(want[name])), (key, name)
        assert (got["as_of"], got["source"]) == (want["as_of"], want["source"])


def test_pricing_diff_of_an_unchanged_snapshot_finds_nothing(tmp_path: Path) -> None:
    path = tmp_path / "prices.json"
    saved = snapshot(path)
    result = run_cli("pricing", "diff", str(path), extra_env=OPENAI)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"{saved['version']} -> {saved['version']}", "no price changes"]


def test_pricing_diff_names_a_changed_price(tmp_path: Path) -> None:
    path = tmp_path / "prices.json"
    saved = snapshot(path)
    (mini,) = [p for p in saved["prices"] if p["model"] == "gpt-4o-mini"]
    current = mini["input"]
    mini["input"] = "0.2"
    path.write_text(json.dumps(saved), encoding="utf-8")
    result = run_cli("pricing", "diff", str(path), extra_env=OPENAI)
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"{saved['version']} -> {saved['version']}"
    assert lines[1:] == [f"gpt-4o-mini @ {mini['deployment']}: input 0.2 -> {current}"]
    assert Decimal(current) == Decimal("0.15")


def test_pricing_diff_names_deployments_no_longer_priced(tmp_path: Path) -> None:
    path = tmp_path / "prices.json"
    saved = snapshot(path)
    result = run_cli("pricing", "diff", str(path))  # no openai provider now: its deployments are gone
    assert result.returncode == 1, result.stderr
    gone = sorted(f"{model} @ {deployment}: * present -> absent" for model, deployment in registry_rows())
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"{saved['version']} -> pt-")
    assert lines[0] != f"{saved['version']} -> {saved['version']}"
    assert lines[1:] == gone


def test_pricing_diff_of_a_missing_snapshot_exits_2(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.json"
    result = run_cli("pricing", "diff", str(missing), extra_env=OPENAI)
    assert result.returncode == 2
    assert f"cannot read {missing}" in result.stderr
    assert result.stdout == ""


def test_pricing_diff_without_a_snapshot_exits_2() -> None:
    result = run_cli("pricing", "diff")
    assert result.returncode == 2
    assert "name the snapshot file" in result.stderr
