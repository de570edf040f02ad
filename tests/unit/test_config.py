"""Profiles, inheritance, environment overrides, validation and secret masking."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from omnirelay.config import ConfigError, LocalProviderSettings, load_raw, load_settings, masked
from omnirelay.config.routing import DeploymentSettings


def test_development_is_the_default_profile() -> None:
    settings = load_settings()
    assert settings.profile == "development"
    assert settings.logging.format == "text"


def test_profiles_inherit_default_and_override_only_what_they_set() -> None:
    dev = load_settings("development")
    prod = load_settings("production")
    # Set by [production]:
    assert prod.server.host == "0.0.0.0"
    assert prod.server.shutdown_grace_seconds == 30.0
    assert prod.logging.format == "json"
    # Inherited from [default], untouched by [production]:
    assert prod.server.port == dev.server.port == 50051
    assert prod.server.keepalive_time_ms == dev.server.keepalive_time_ms
    assert set(prod.models) == set(dev.models)
    assert {"local-small", "local-large", "gpt-4o", "claude-sonnet-4"} <= set(dev.models)
    # A nested table set in [default] is merged, not replaced, by a profile's partial table.
    assert prod.models["local-large"].presets["creative"].temperature == 1.0


def test_omnirelay_env_picks_the_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMNIRELAY_ENV", "staging")
    assert load_settings().profile == "staging"
    assert load_settings().server.shutdown_drain_seconds == 2.0


def test_explicit_profile_wins_over_omnirelay_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMNIRELAY_ENV", "staging")
    settings = load_settings("production")
    assert settings.profile == "production"
    assert settings.server.shutdown_drain_seconds == 5.0


def test_environment_overrides_nested_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMNIRELAY_SERVER__PORT", "6100")
    monkeypatch.setenv("OMNIRELAY_PROVIDERS__LOCAL__TOKENS_PER_SECOND", "250.5")
    monkeypatch.setenv("OMNIRELAY_DEFAULT_MODEL", "local-large")
    settings = load_settings("production")
    assert settings.server.port == 6100
    local = settings.providers["local"]
    assert isinstance(local, LocalProviderSettings)
    assert local.tokens_per_second == 250.5
    assert settings.default_model == "local-large"


def test_every_problem_is_reported_with_key_value_and_what_is_allowed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OMNIRELAY_SERVER__PORT", "70000")
    monkeypatch.setenv("OMNIRELAY_LOGGING__LEVEL", "LOUD")
    monkeypatch.setenv("OMNIRELAY_SERVER__REFLECTION", "maybe")
    monkeypatch.setenv("OMNIRELAY_SERVER__PROT", "1")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    lines = sorted(str(p) for p in caught.value.problems)
    assert lines == [
        "logging.level = 'LOUD': expected one of DEBUG, INFO, WARNING, ERROR",
        "server.port = 70000: expected an integer from 0 to 65535",
        "server.prot = 1: unknown key",
        "server.reflection = 'maybe': expected true or false",
    ]


def test_unknown_profile_is_rejected() -> None:
    with pytest.raises(
        ConfigError, match=r"profile = 'qa': expected one of development, staging, production"
    ):
        load_settings("qa")


def test_model_pointing_at_an_unknown_provider_is_rejected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    extra = tmp_path / "omnirelay.toml"
    extra.write_text(
        '[default.models.ghost]\nprovider = "nowhere"\ncontext_window = 10\nmax_output_tokens = 5\n'
    )
    monkeypatch.setenv("OMNIRELAY_CONFIG", str(extra))
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert [str(p) for p in caught.value.problems] == [
        "models.ghost.provider = 'nowhere': expected a configured provider (local) or a provider kind"
    ]


def test_operator_file_adds_models_and_presets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    extra = tmp_path / "omnirelay.toml"
    extra.write_text(
        "[default.models.local-tiny]\n"
        'provider = "local"\naliases = ["tiny"]\ncontext_window = 512\nmax_output_tokens = 64\n'
        "[default.presets.terse]\nmax_tokens = 3\n"
        "[production.presets.terse]\nmax_tokens = 5\n"
    )
    monkeypatch.setenv("OMNIRELAY_CONFIG", str(extra))
    dev = load_settings("development")
    assert dev.models["local-tiny"].aliases == ("tiny",)
    assert dev.models["local-tiny"].deployments == (DeploymentSettings("local", "local-tiny"),)
    assert dev.presets["terse"].max_tokens == 3
    assert load_settings("production").presets["terse"].max_tokens == 5


def test_secrets_file_is_loaded_and_masked_when_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secrets = tmp_path / "secrets.toml"
    secrets.write_text('[default.providers.local]\napi_key = "sk-very-secret-value"\n')
    monkeypatch.setenv("OMNIRELAY_SECRETS", str(secrets))
    assert load_settings().providers["local"].api_key == "sk-very-secret-value"
    assert "sk-very-secret-value" not in repr(load_settings())
    _, raw = load_raw()
    shown = masked(raw)
    assert shown["providers"]["local"]["api_key"] == "********"
    assert shown["server"]["port"] == 50051


def test_missing_secrets_file_is_a_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMNIRELAY_SECRETS", "/nonexistent/secrets.toml")
    with pytest.raises(ConfigError, match=re.escape("OMNIRELAY_SECRETS = '/nonexistent/secrets.toml'")):
        load_settings()


def test_token_counts_are_not_mistaken_for_secrets() -> None:
    shown = masked(
        {"models": {"m": {"max_output_tokens": 4096}}, "auth": {"token": "t0k3n", "client_secret": "s"}}
    )
    assert shown["models"]["m"]["max_output_tokens"] == 4096
    assert shown["auth"] == {"token": "********", "client_secret": "********"}
