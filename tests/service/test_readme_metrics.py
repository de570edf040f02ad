"""Every metric the README names (its table and its Grafana queries) is one the server exposes."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import httpx

from omnirelay.config import Settings
from omnirelay.config.telemetry import TracingSettings
from omnirelay_client.v1 import completion_pb2_grpc
from tests.conftest import StartServer
from tests.helpers import request

README = Path(__file__).resolve().parents[2] / "README.md"
_NAME = re.compile(r"\b((?:gen_ai|omnirelay)_[a-z_]+)")
_SUFFIXES = ("_bucket", "_sum", "_count", "_total")


def base(name: str) -> str:
    for suffix in _SUFFIXES:
        name = name.removesuffix(suffix)
    return name


def readme_names() -> set[str]:
    """Metric and label names in the README's metrics section."""
    text = README.read_text()
    section = text[text.index("### Metrics (Prometheus)") : text.index("### Logs")]
    return {base(found) for found in _NAME.findall(section)}


async def test_every_metric_the_readme_names_is_exposed(
    start_server: StartServer, settings: Settings
) -> None:
    # Tracing on (exporting nowhere) for the span counters.
    tracing = TracingSettings(enabled=True, exporter="none")
    app, channel = await start_server(dataclasses.replace(settings, tracing=tracing))
    await completion_pb2_grpc.CompletionServiceStub(channel).Complete(request(temperature=0.0))
    assert app.admin is not None
    async with httpx.AsyncClient() as client:
        scrape = (await client.get(f"http://127.0.0.1:{app.admin.port}/metrics")).text
    metrics = {base(n) for n in re.findall(r"^# TYPE (\S+) ", scrape, flags=re.M)}
    labels = set(re.findall(r"[{,]([a-z_]+)=\"", scrape))
    named = readme_names()
    assert len(named & metrics) >= 15  # the README's table and queries were found
    missing = sorted(n for n in named if n not in metrics and n not in labels)
    assert missing == [], f"named in the README, not exposed: {missing}"
