"""The README's worked routing example is valid configuration and means what the README says."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from omnirelay.config import load_settings
from omnirelay.config.routing import DeploymentSettings

README = Path(__file__).resolve().parents[2] / "README.md"
# The example routes to Azure, Anthropic and Gemini too: those providers, as an operator would add.
PROVIDERS = """
[default.providers.openai]
kind = "openai"
[default.providers.azure]
kind = "azure"
base_url = "https://example.openai.azure.com"
api_version = "2024-10-21"
[default.providers.anthropic]
kind = "anthropic"
[default.providers.gemini]
kind = "gemini"
"""


def _routing_example() -> str:
    blocks: list[str] = re.findall(r"```toml\n(.*?)```", README.read_text(), flags=re.S)
    found = [b for b in blocks if b.startswith("[default.routing]")]
    assert len(found) == 1, "the README has one worked routing example"
    return found[0]


def test_the_worked_routing_example_loads_and_routes_as_described(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "omnirelay.toml"
    config.write_text(_routing_example() + PROVIDERS)
    monkeypatch.setenv("OMNIRELAY_CONFIG", str(config))
    monkeypatch.setenv("OPENAI_EU_KEY", "sk-readme-example")
    settings = load_settings()

    gpt4o = settings.models["gpt-4o"]
    assert gpt4o.routing.strategy == "weighted"
    assert gpt4o.routing.fallbacks == ("claude-sonnet-4", "gemini-2.5-pro")
    assert gpt4o.routing.ttft_timeout_seconds == 10.0
    assert gpt4o.deployments == (
        DeploymentSettings("openai", "gpt-4o-2024-08-06", weight=3.0),
        DeploymentSettings("openai-eu", "gpt-4o-2024-08-06", weight=1.0),
        DeploymentSettings("azure", "gpt-4o", priority=1),
    )
    # The shipped registry still supplies what the example does not say.
    assert gpt4o.pricing is not None
    assert gpt4o.pricing.input == 2.5
    eu = settings.providers["openai-eu"]
    assert eu.api_key == "sk-readme-example"
    assert eu.retry is not None
    assert eu.retry.max_attempts == 3
    assert eu.breaker is not None
    assert eu.breaker.failure_threshold == 3
    assert settings.resilience.retry_budget.ratio == 0.2
    assert settings.routing.stream_recovery == "error"


def test_the_tracing_example_is_valid_configuration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks: list[str] = re.findall(r"```toml\n(.*?)```", README.read_text(), flags=re.S)
    [example] = [b for b in blocks if b.startswith("[production.tracing]")]
    config = tmp_path / "omnirelay.toml"
    config.write_text(example)
    monkeypatch.setenv("OMNIRELAY_CONFIG", str(config))
    tracing = load_settings("production").tracing
    assert tracing.enabled
    assert tracing.exporter == "otlp_http"
    assert tracing.endpoint == "https://otel-collector.internal:4318"
    assert tracing.sample_ratio == 0.1
