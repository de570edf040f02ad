"""The shipped model registry, operator overrides of it, and routing config validation."""

from __future__ import annotations

import re
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from omnirelay.config import ConfigError, Settings, load_settings
from omnirelay.config.routing import DeploymentSettings, PricingSettings
from omnirelay.config.schema import CAPABILITIES, PROFILES, PROVIDER_KINDS

DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def shipped() -> dict[str, Any]:
    with resources.files("omnirelay.routing").joinpath("models.toml").open("rb") as f:
        models: dict[str, Any] = tomllib.load(f)["models"]
    return models


SHIPPED = shipped()


@pytest.fixture
def operator_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Write an operator TOML file and point OMNIRELAY_CONFIG at it."""

    def write(text: str) -> Path:
        path = tmp_path / "omnirelay.toml"
        path.write_text(text)
        monkeypatch.setenv("OMNIRELAY_CONFIG", str(path))
        return path

    return write


def problems(caught: pytest.ExceptionInfo[ConfigError]) -> list[str]:
    return [str(p) for p in caught.value.problems]


# --- the shipped registry ---


def test_the_shipped_registry_is_a_sizeable_list_of_well_known_models() -> None:
    assert len(SHIPPED) >= 20
    assert {"gpt-4o", "gpt-4o-mini", "claude-sonnet-4", "gemini-2.5-pro", "llama3.1:8b"} <= set(SHIPPED)


@pytest.mark.parametrize("profile", PROFILES)
def test_the_shipped_registry_loads_into_settings_with_no_problems(profile: str) -> None:
    settings = load_settings(profile)
    assert set(SHIPPED) <= set(settings.models)
    assert {"local-small", "local-large"} <= set(settings.models)
    assert settings.routing.shipped_models


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_every_shipped_model_is_complete(settings: Settings, name: str) -> None:
    m = settings.models[name]
    assert m.name == name
    assert m.family
    assert m.context_window > 0
    assert m.max_output_tokens > 0
    assert m.capabilities
    assert set(m.capabilities) <= set(CAPABILITIES)
    assert len(set(m.capabilities)) == len(m.capabilities)
    # Pricing with where and when it was read.
    assert m.pricing is not None
    assert m.pricing.input >= 0
    assert m.pricing.output >= 0
    assert m.pricing.source == "self-hosted" or m.pricing.source.startswith("https://")
    assert DATE.match(m.pricing.as_of), m.pricing.as_of
    if m.pricing.cached_input is not None:
        assert 0 <= m.pricing.cached_input <= m.pricing.input
    # At least one deployment, each naming a provider kind and the id sent upstream.
    assert m.deployments
    for d in m.deployments:
        assert d.provider in PROVIDER_KINDS
        assert d.provider != "local"
        assert d.provider_model
        assert d.weight > 0
    assert m.deprecation_date == "" or DATE.match(m.deprecation_date)


def test_shipped_prices_are_read_as_written() -> None:
    settings = load_settings()
    assert settings.models["gpt-4o"].pricing == PricingSettings(
        input=2.50,
        output=10.00,
        cached_input=1.25,
        source="https://openai.com/api/pricing/",
        as_of="2025-06-01",
    )
    embed = settings.models["text-embedding-3-small"]
    assert embed.pricing is not None
    assert embed.pricing.cached_input is None
    assert embed.pricing.output == 0.0
    assert settings.models["gpt-4o"].deployments == (
        DeploymentSettings("openai", "gpt-4o-2024-08-06"),
        DeploymentSettings("azure", "gpt-4o"),
    )


def test_aliases_are_unique_and_never_a_model_name() -> None:
    settings = load_settings()
    seen: dict[str, str] = {}
    for m in settings.models.values():
        for alias in m.aliases:
            assert alias not in settings.models, alias
            assert alias not in seen, f"{alias!r} names both {seen[alias]!r} and {m.name!r}"
            seen[alias] = m.name
    # The short aliases are left to settings.
    shipped_aliases = {a for m in SHIPPED.values() for a in m.get("aliases", [])}
    assert not {"default", "fast", "cheap", "powerful"} & shipped_aliases
    assert seen["fast"] == "local-small"
    assert seen["powerful"] == "local-large"


# --- operator overrides ---


def test_an_operator_overrides_one_key_of_a_shipped_model_and_keeps_the_rest(operator_file: Any) -> None:
    before = load_settings().models
    base = before["gpt-4o"]
    operator_file("[default.models.gpt-4o]\ncontext_window = 64000\n")
    after = load_settings().models
    m = after["gpt-4o"]
    assert m.context_window == 64000
    assert base.context_window == 128000
    assert m.max_output_tokens == base.max_output_tokens == 16384
    assert m.pricing == base.pricing
    assert m.deployments == base.deployments
    assert m.aliases == base.aliases
    assert m.capabilities == base.capabilities
    assert m.family == base.family
    assert m.deprecation_date == base.deprecation_date
    assert m.routing == base.routing
    # The other models are untouched.
    assert {n: v for n, v in after.items() if n != "gpt-4o"} == {
        n: v for n, v in before.items() if n != "gpt-4o"
    }


def test_an_operator_override_applies_in_every_profile_and_per_profile(operator_file: Any) -> None:
    operator_file(
        "[default.models.gpt-4o]\ncontext_window = 64000\n"
        "[production.models.gpt-4o]\ncapabilities = ['streaming']\n"
    )
    dev, prod = load_settings("development"), load_settings("production")
    assert dev.models["gpt-4o"].context_window == prod.models["gpt-4o"].context_window == 64000
    assert prod.models["gpt-4o"].capabilities == ("streaming",)
    assert "tools" in dev.models["gpt-4o"].capabilities
    assert prod.models["gpt-4o"].pricing == dev.models["gpt-4o"].pricing


def test_an_operator_replaces_shipped_deployments_with_the_one_deployment_shorthand(
    operator_file: Any,
) -> None:
    operator_file('[default.models.gpt-4o]\nprovider = "local"\nprovider_model = "large"\n')
    m = load_settings().models["gpt-4o"]
    assert m.deployments == (DeploymentSettings("local", "large"),)
    assert m.pricing is not None
    assert m.pricing.input == 2.50


def test_an_operator_replaces_shipped_deployments_with_a_list(operator_file: Any) -> None:
    operator_file(
        "[default.models.claude-sonnet-4]\n"
        'deployments = [{ provider = "local", provider_model = "small", weight = 2.0, priority = 1 }]\n'
        'strategy = "weighted"\nfallbacks = ["gpt-4o"]\n'
    )
    m = load_settings().models["claude-sonnet-4"]
    assert m.deployments == (DeploymentSettings("local", "small", weight=2.0, priority=1),)
    assert m.routing.strategy == "weighted"
    assert m.routing.fallbacks == ("gpt-4o",)
    assert m.aliases == tuple(SHIPPED["claude-sonnet-4"]["aliases"])


def test_an_operator_adds_a_model_beside_the_shipped_ones(operator_file: Any) -> None:
    operator_file(
        '[default.models.my-model]\nprovider = "openai"\nprovider_model = "ft:gpt-4o:acme"\n'
        "context_window = 1000\nmax_output_tokens = 100\naliases = ['acme']\n"
    )
    settings = load_settings()
    assert settings.models["my-model"].deployments == (DeploymentSettings("openai", "ft:gpt-4o:acme"),)
    assert settings.models["my-model"].pricing is None
    assert set(SHIPPED) <= set(settings.models)


def test_shipped_models_false_drops_the_registry(operator_file: Any) -> None:
    operator_file("[default.routing]\nshipped_models = false\n")
    settings = load_settings()
    assert not settings.routing.shipped_models
    assert set(settings.models) == {"local-small", "local-large"}


def test_shipped_models_false_keeps_the_operators_own_model_of_a_shipped_name(operator_file: Any) -> None:
    operator_file(
        "[default.routing]\nshipped_models = false\n"
        '[default.models.gpt-4o]\nprovider = "local"\ncontext_window = 500\nmax_output_tokens = 50\n'
    )
    settings = load_settings()
    assert set(settings.models) == {"local-small", "local-large", "gpt-4o"}
    m = settings.models["gpt-4o"]
    assert m.context_window == 500
    assert m.pricing is None  # nothing of the shipped entry leaks in
    assert m.aliases == ()


def test_a_profiles_deployments_list_replaces_the_default_ones(operator_file: Any) -> None:
    """Later layers win: a profile's list of deployments is the list, not an addition to [default]'s."""
    operator_file(
        '[default.models.gpt-4o]\ndeployments = [{ provider = "openai", provider_model = "a" }]\n'
        '[production.models.gpt-4o]\ndeployments = [{ provider = "azure", provider_model = "b" }]\n'
    )
    assert load_settings("development").models["gpt-4o"].deployments == (DeploymentSettings("openai", "a"),)
    assert load_settings("production").models["gpt-4o"].deployments == (DeploymentSettings("azure", "b"),)


def test_an_operator_list_replaces_a_settings_models_list(operator_file: Any) -> None:
    """The same key-by-key override as for registry models holds for the models in settings.toml."""
    operator_file("[default.models.local-small]\ncapabilities = ['streaming']\naliases = ['tiny']\n")
    m = load_settings().models["local-small"]
    assert m.capabilities == ("streaming",)
    assert m.aliases == ("tiny",)


# --- validation ---


def test_a_bad_global_strategy_name_is_rejected(operator_file: Any) -> None:
    operator_file('[default.routing]\nstrategy = "fastest"\n')
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert problems(caught) == [
        "routing.strategy = 'fastest': expected one of priority, weighted, least_in_flight, "
        "lowest_latency, lowest_cost, sticky"
    ]


def test_a_bad_model_strategy_name_is_rejected(operator_file: Any) -> None:
    operator_file('[default.models.gpt-4o]\nstrategy = "round_robin"\n')
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert len(problems(caught)) == 1
    assert problems(caught)[0].startswith("models.gpt-4o.strategy = 'round_robin': expected one of")
    assert "sticky" in problems(caught)[0]


def test_an_unknown_fallback_target_is_rejected(operator_file: Any) -> None:
    operator_file('[default.models.local-small]\nfallbacks = ["local-large", "gpt-5-ultra"]\n')
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert problems(caught) == [
        "models.local-small.fallbacks = 'gpt-5-ultra': expected a configured model or alias"
    ]


def test_fallbacks_may_name_aliases_shipped_models_and_direct_routes(operator_file: Any) -> None:
    operator_file('[default.models.local-small]\nfallbacks = ["powerful", "claude-sonnet", "local/large"]\n')
    assert load_settings().models["local-small"].routing.fallbacks == (
        "powerful",
        "claude-sonnet",
        "local/large",
    )


def test_an_unknown_fallback_on_class_is_rejected(operator_file: Any) -> None:
    operator_file(
        '[default.routing]\nfallback_on = ["rate_limited", "bad_request"]\n'
        '[default.models.gpt-4o]\nfallback_on = ["auth"]\n'
    )
    with pytest.raises(ConfigError) as caught:
        load_settings()
    lines = sorted(problems(caught))
    assert len(lines) == 2
    assert lines[0].startswith("models.gpt-4o.fallback_on = ['auth']: unknown auth; expected any of")
    assert lines[1].startswith(
        "routing.fallback_on = ['rate_limited', 'bad_request']: unknown bad_request; expected any of"
    )
    assert "content_filter" in lines[1]


def test_an_empty_deployments_list_is_rejected(operator_file: Any) -> None:
    operator_file(
        "[default.models.nowhere]\ndeployments = []\ncontext_window = 100\nmax_output_tokens = 10\n"
        "[default.models.gpt-4o]\ndeployments = []\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert sorted(problems(caught)) == [
        "models.gpt-4o.deployments = []: expected at least one deployment",
        "models.nowhere.deployments = []: expected at least one deployment",
    ]


def test_a_deployment_naming_neither_a_provider_nor_a_kind_is_rejected(operator_file: Any) -> None:
    operator_file(
        '[default.models.gpt-4o]\ndeployments = [{ provider = "openia", provider_model = "gpt-4o" }]\n'
    )
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert problems(caught) == [
        "models.gpt-4o.deployments[0].provider = 'openia': expected a configured provider (local) "
        "or a provider kind"
    ]


def test_an_unknown_deployment_key_is_rejected(operator_file: Any) -> None:
    operator_file(
        "[default.models.gpt-4o]\n"
        'deployments = [{ provider = "openai", provider_model = "gpt-4o", wieght = 2 }]\n'
    )
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert problems(caught) == ["models.gpt-4o.deployments[0].wieght = 2: unknown key"]


def test_a_duplicate_alias_is_rejected(operator_file: Any) -> None:
    operator_file("[default.models.gpt-4o-mini]\naliases = ['gpt-4o-2024-08-06']\n")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    lines = problems(caught)
    assert len(lines) == 1
    assert "aliases must be unique" in lines[0]
    assert "gpt-4o-2024-08-06" in lines[0]


def test_every_routing_problem_is_reported_at_once(operator_file: Any) -> None:
    operator_file(
        '[default.routing]\nstrategy = "fastest"\nstream_recovery = "retry"\nlatency_ewma_alpha = 0.0\n'
        "[default.resilience.breaker]\nfailure_threshold = 0\n"
        "[default.resilience.retry]\nmax_attempts = 50\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_settings()
    keys = sorted(p.key for p in caught.value.problems)
    assert keys == [
        "resilience.breaker.failure_threshold",
        "resilience.retry.max_attempts",
        "routing.latency_ewma_alpha",
        "routing.strategy",
        "routing.stream_recovery",
    ]
