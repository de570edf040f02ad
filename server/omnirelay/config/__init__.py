"""Configuration: dynaconf loading, profiles, validation into frozen dataclasses."""

from omnirelay.config.loader import load_raw, load_settings, masked
from omnirelay.config.schema import ConfigError, ConfigProblem, LocalProviderSettings, ModelSettings, Settings

__all__ = [
    "ConfigError",
    "ConfigProblem",
    "LocalProviderSettings",
    "ModelSettings",
    "Settings",
    "load_raw",
    "load_settings",
    "masked",
]
