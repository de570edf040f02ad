"""The real command: serve with signals, config validation, chat, models, health."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Iterator

import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from omnirelay_client.v1 import stream_pb2_grpc
from tests.helpers import event_kinds, first_kind, stream_request
from tests.integration.serve import Served, run_cli, start

pytestmark = pytest.mark.subprocess


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    server = start("--profile", "development")
    yield server
    assert server.stop() == 0


def test_config_validate_accepts_shipped_profiles() -> None:
    for profile in ("development", "staging", "production"):
        result = run_cli("config", "validate", "--profile", profile)
        assert result.returncode == 0, result.stderr
        assert f"profile {profile!r} are valid" in result.stdout


def test_bad_config_exits_2_with_one_line_per_problem() -> None:
    result = run_cli(
        "config",
        "validate",
        extra_env={"OMNIRELAY_SERVER__PORT": "-1", "OMNIRELAY_LOGGING__FORMAT": "xml"},
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "config error: server.port = -1: expected an integer from 0 to 65535",
        "config error: logging.format = 'xml': expected one of json, text",
    ]


def test_serve_with_bad_config_stops_before_listening() -> None:
    result = run_cli(
        "serve", "--port", "0", extra_env={"OMNIRELAY_SERVER__SHUTDOWN_GRACE_SECONDS": "forever"}
    )
    assert result.returncode == 2
    assert "server.shutdown_grace_seconds = 'forever': expected a number from 0 to 3600" in result.stderr
    assert "serving on" not in result.stdout


def test_config_show_masks_secrets_and_applies_overrides() -> None:
    result = run_cli(
        "config",
        "show",
        "--profile",
        "production",
        extra_env={"OMNIRELAY_PROVIDERS__LOCAL__API_KEY": "sk-live-abcdef", "OMNIRELAY_SERVER__PORT": "7070"},
    )
    assert result.returncode == 0, result.stderr
    assert "sk-live-abcdef" not in result.stdout
    shown = json.loads(result.stdout)
    assert shown["profile"] == "production"
    assert shown["providers"]["local"]["api_key"] == "********"
    assert shown["server"]["port"] == 7070
    assert shown["server"]["host"] == "0.0.0.0"


def test_profile_flag_and_env_select_the_profile() -> None:
    no_drain = {"OMNIRELAY_SERVER__SHUTDOWN_DRAIN_SECONDS": "0"}
    served = start(extra_env={"OMNIRELAY_ENV": "staging", **no_drain})
    try:
        assert served.profile == "staging"
    finally:
        assert served.stop() == 0
    served = start("--profile", "production", extra_env={"OMNIRELAY_ENV": "staging", **no_drain})
    try:
        assert served.profile == "production"
    finally:
        assert served.stop() == 0


def test_chat_unary_and_stream_print_the_same_text(served: Served) -> None:
    unary = run_cli("chat", "hello there", "--target", served.address, "--max-tokens", "6")
    streamed = run_cli("chat", "hello there", "--target", served.address, "--max-tokens", "6", "--stream")
    assert unary.returncode == streamed.returncode == 0, unary.stderr + streamed.stderr
    assert len(unary.stdout.split()) == 6
    assert unary.stdout.strip() == streamed.stdout.strip()


def test_chat_reports_bad_input_and_exits_1(served: Served) -> None:
    result = run_cli("chat", "hi", "--target", served.address, "--temperature", "7")
    assert result.returncode == 1
    assert "sampling.temperature: must be in [0, 2], got 7" in result.stderr
    missing = run_cli("chat", "hi", "--target", served.address, "--model", "gpt-4oo")
    assert missing.returncode == 1
    assert "NOT_FOUND: unknown model 'gpt-4oo'" in missing.stderr


def test_models_from_settings_and_from_the_server(served: Served) -> None:
    local = run_cli("models")
    remote = run_cli("models", "--target", served.address)
    assert local.returncode == remote.returncode == 0
    assert local.stdout == remote.stdout
    lines = local.stdout.splitlines()
    assert lines[0].split() == ["MODEL", "PROVIDERS", "ALIASES", "CONTEXT", "USD/M", "IN/OUT", "CAPABILITIES"]
    assert lines[2].split()[:5] == ["local-small", "local", "default,fast,cheap", "8192", "0/0"]
    # The shipped registry is listed too with --all; models no provider serves here say so.
    everything = run_cli("models", "--all").stdout.splitlines()
    gpt4o = next(line.split() for line in everything if line.startswith("gpt-4o "))
    assert gpt4o[1:3] == ["(unavailable)", "azure,openai"]
    assert gpt4o[5] == "2.5/10"


def test_health_command(served: Served) -> None:
    ok = run_cli("health", "--target", served.address)
    assert ok.returncode == 0
    assert ok.stdout.strip() == "SERVING"
    unknown = run_cli("health", "--target", served.address, "--service", "nope.Service")
    assert unknown.returncode == 1


async def test_sigterm_goes_not_serving_finishes_streams_and_exits_0() -> None:
    served = start(
        extra_env={
            "OMNIRELAY_PROVIDERS__LOCAL__TOKENS_PER_SECOND": "50",
            "OMNIRELAY_SERVER__SHUTDOWN_DRAIN_SECONDS": "0.3",
        }
    )
    try:
        async with aio.insecure_channel(served.address) as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
            assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
            stream = stream_pb2_grpc.StreamCompletionServiceStub(channel).StreamComplete(
                stream_request(max_tokens=25)
            )
            assert await first_kind(stream) == "route_started"
            served.process.terminate()
            assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
            kinds = await event_kinds(stream)
            assert kinds.count("text_delta") == 25
            assert kinds[-1] == "done"
        code = await asyncio.to_thread(served.stop, 20, None)
        assert code == 0
        assert "health NOT_SERVING" in served.stderr
        assert "stopped" in served.stderr
    finally:
        if served.process.poll() is None:
            served.stop()


def test_sigint_also_exits_0() -> None:
    served = start()
    assert served.stop(sig=signal.SIGINT) == 0
