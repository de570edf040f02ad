"""Configuration: dynaconf loading, profiles, validation into frozen dataclasses."""

from omnirelay.config.loader import load_raw, load_settings, masked, secret_values
from omnirelay.config.schema import (
    ConfigError,
    ConfigProblem,
    HttpProviderSettings,
    LocalProviderSettings,
    ModelSettings,
    ProviderSettings,
    Settings,
)

__all__ = [
    "ConfigError",
    "ConfigProblem",
    "HttpProviderSettings",
    "LocalProviderSettings",
    "ModelSettings",
    "ProviderSettings",
    "Settings",
    "load_raw",
    "load_settings",
    "masked",
    "secret_values",
]
