"""The real `omnirelay cache stats|clear` command against a running `omnirelay serve` process."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from omnirelay_client.v1 import completion_pb2, completion_pb2_grpc, stream_pb2, stream_pb2_grpc, types_pb2
from tests.helpers import request, text
from tests.integration.serve import Served, run_cli, start

pytestmark = pytest.mark.subprocess
NO_DRAIN = {"OMNIRELAY_SERVER__SHUTDOWN_DRAIN_SECONDS": "0"}


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    server = start("--profile", "development", extra_env=NO_DRAIN)
    yield server
    assert server.stop() == 0


def complete(address: str, prompt: str, model: str = "local-small") -> completion_pb2.CompleteResponse:
    with grpc.insecure_channel(address) as channel:
        response: completion_pb2.CompleteResponse = completion_pb2_grpc.CompletionServiceStub(
            channel
        ).Complete(request(prompt, model, temperature=0.0, max_tokens=8), timeout=10)
        return response


def stats(address: str) -> dict[str, str]:
    result = run_cli("cache", "stats", "--target", address)
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines() if line.strip()]
    assert all(len(row) == 2 for row in rows), result.stdout
    return dict((name, value) for name, value in rows)


def clear(address: str, *args: str) -> str:
    result = run_cli("cache", "clear", "--target", address, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_stats_and_clear_after_cached_calls(served: Served) -> None:
    before = stats(served.address)
    assert list(before) == [
        "backend",
        "hits",
        "misses",
        "coalesced",
        "bypassed",
        "stored",
        "evictions",
        "backend_errors",
        "entries",
        "bytes",
    ]
    assert before["backend"] == "memory"
    clear(served.address)  # start from an empty store, whatever other tests of this module left

    first = complete(served.address, "cli cache stats")
    assert first.route.cache == types_pb2.CACHE_OUTCOME_MISS
    second = complete(served.address, "cli cache stats", model="fast")  # an alias of local-small
    assert second.route.cache == types_pb2.CACHE_OUTCOME_HIT
    assert text(second) == text(first)
    complete(served.address, "cli cache other")

    after = stats(served.address)
    assert int(after["hits"]) == int(before["hits"]) + 1
    assert int(after["misses"]) == int(before["misses"]) + 2
    assert int(after["stored"]) == int(before["stored"]) + 2
    assert after["entries"] == "2"
    assert int(after["bytes"]) > 0
    assert after["backend_errors"] == "0"

    # By alias: local-small's answers go.
    assert clear(served.address, "--model", "fast") == "removed 2 cached answers"
    emptied = stats(served.address)
    assert (emptied["entries"], emptied["bytes"]) == ("0", "0")
    assert complete(served.address, "cli cache stats").route.cache == types_pb2.CACHE_OUTCOME_MISS
    assert clear(served.address) == "removed 1 cached answers"
    assert clear(served.address) == "removed 0 cached answers"


def test_clear_a_stream_stored_answer_by_model(served: Served) -> None:
    with grpc.insecure_channel(served.address) as channel:
        call = stream_pb2_grpc.StreamCompletionServiceStub(channel).StreamComplete(
            stream_pb2.StreamCompleteRequest(request=request("cli streamed", temperature=0.0, max_tokens=5)),
            timeout=10,
        )
        events = list(call)
    assert events[-1].done.route.cache == types_pb2.CACHE_OUTCOME_MISS
    assert int(stats(served.address)["entries"]) >= 1
    assert clear(served.address, "--model", "local-small").startswith("removed ")
    assert stats(served.address)["entries"] == "0"


def test_clear_an_unknown_model_fails_with_exit_1(served: Served) -> None:
    result = run_cli("cache", "clear", "--model", "no-such-model", "--target", served.address)
    assert result.returncode == 1
    assert "NOT_FOUND" in result.stderr
    assert "no-such-model" in result.stderr


def test_an_unreachable_target_fails_with_exit_1() -> None:
    result = run_cli("cache", "stats", "--target", "127.0.0.1:1", "--timeout", "2")
    assert result.returncode == 1
    assert result.stderr.startswith("omnirelay: ")
    assert "UNAVAILABLE" in result.stderr


def test_with_the_cache_off_stats_say_so_and_clear_fails() -> None:
    server = start("--profile", "development", extra_env={**NO_DRAIN, "OMNIRELAY_CACHE__BACKEND": "off"})
    try:
        shown = stats(server.address)
        assert shown["backend"] == "off"
        assert complete(server.address, "uncached").route.cache == types_pb2.CACHE_OUTCOME_UNSPECIFIED
        assert stats(server.address)["entries"] == "0"
        result = run_cli("cache", "clear", "--target", server.address)
        assert result.returncode == 1
        assert "FAILED_PRECONDITION" in result.stderr
        assert 'cache.backend = "off"' in result.stderr
    finally:
        assert server.stop() == 0
