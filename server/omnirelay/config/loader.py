"""Load settings with dynaconf: shipped defaults, operator files, secrets, environment.

Layers, later wins: the shipped ``settings.toml``; the operator's file
(``OMNIRELAY_CONFIG``, default ``./omnirelay.toml`` when present); the secrets
file (``OMNIRELAY_SECRETS``, default ``./.secrets.toml`` when present, git-ignored);
then ``OMNIRELAY_…`` environment variables (``__`` separates nested keys).
Each file has ``[default]`` and per-profile tables; a profile inherits ``[default]``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dynaconf import Dynaconf

from omnirelay.config.schema import (
    PROFILES,
    SECRET_KEYS,
    ConfigError,
    ConfigProblem,
    Settings,
    build_settings,
)

SHIPPED = Path(__file__).with_name("settings.toml")
DEFAULT_PROFILE = "development"
MASK = "********"


def _files(environ: Mapping[str, str]) -> list[str]:
    files = [str(SHIPPED)]
    for var, fallback in (("OMNIRELAY_CONFIG", "omnirelay.toml"), ("OMNIRELAY_SECRETS", ".secrets.toml")):
        path = environ.get(var)
        if path:
            if not Path(path).is_file():
                raise ConfigError([ConfigProblem(var, path, "expected a readable TOML file")])
            files.append(path)
        elif Path(fallback).is_file():
            files.append(str(Path(fallback).resolve()))
    return files


def load_raw(profile: str | None = None) -> tuple[str, dict[str, Any]]:
    """The merged raw mapping for a profile (``None``: OMNIRELAY_ENV, else development)."""
    chosen = profile or os.environ.get("OMNIRELAY_ENV") or DEFAULT_PROFILE
    if chosen not in PROFILES:
        raise ConfigError([ConfigProblem("profile", chosen, f"expected one of {', '.join(PROFILES)}")])
    dyn = Dynaconf(
        settings_files=_files(os.environ),
        environments=True,
        env=chosen,
        env_switcher="OMNIRELAY_ENV",
        envvar_prefix="OMNIRELAY",
        merge_enabled=True,
        load_dotenv=False,
    )
    # An explicit profile must win over OMNIRELAY_ENV, which dynaconf also reads.
    if dyn.current_env.lower() != chosen:
        dyn.setenv(chosen)
    raw = _lower_keys(dyn.as_dict())
    return chosen, raw


def load_settings(profile: str | None = None) -> Settings:
    """Validated, frozen settings for a profile; raises ConfigError listing every problem."""
    chosen, raw = load_raw(profile)
    return build_settings(raw, chosen)


def masked(raw: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``raw`` with every secret value replaced, for display."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, Mapping):
            out[key] = masked(value)
        elif key.lower().endswith(SECRET_KEYS) and value:
            out[key] = MASK
        else:
            out[key] = value
    return out


def _lower_keys(raw: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in raw.items():
        out[str(key).lower()] = _lower_keys(value) if isinstance(value, Mapping) else value
    return out
