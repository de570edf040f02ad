"""Load settings with dynaconf: shipped defaults, operator files, secrets, environment.

Layers, later wins: the shipped ``settings.toml``; the operator's file
(``OMNIRELAY_CONFIG``, default ``./omnirelay.toml`` when present); the secrets
file (``OMNIRELAY_SECRETS``, default ``./.secrets.toml`` when present, git-ignored);
then ``OMNIRELAY_…`` environment variables (``__`` separates nested keys).
Each file has ``[default]`` and per-profile tables; a profile inherits ``[default]``.

Tables merge key by key and every other value, lists included, is replaced by
the later layer: an operator who sets a model's ``aliases`` or ``deployments``
means those, not the shipped ones plus theirs. Dynaconf's global merge appends
lists and has no per-key switch, so the files are layered here and dynaconf
reads the environment (typed values, ``__`` nesting).
"""

from __future__ import annotations

import os
import re
import tomllib
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
    raw: dict[str, Any] = {}
    for path in _files(os.environ):
        try:
            with open(path, "rb") as f:
                data = _lower_keys(tomllib.load(f))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([ConfigProblem(path, "", f"expected valid TOML ({exc})")]) from None
        for section in ("default", chosen):
            table = data.get(section, {})
            if isinstance(table, Mapping):
                _merge(raw, table)
    env = Dynaconf(envvar_prefix="OMNIRELAY", environments=False, load_dotenv=False)
    # Dynaconf's own switches arrive as settings keys; they are not settings of ours.
    overrides = {k: v for k, v in _lower_keys(env.as_dict()).items() if k not in _SWITCHES}
    _merge(raw, overrides)
    return chosen, raw


_SWITCHES = frozenset({"load_dotenv", "env", "config", "secrets"})


def _merge(into: dict[str, Any], layer: Mapping[str, Any]) -> None:
    """``layer`` over ``into``: tables merge key by key, anything else is replaced."""
    for key, value in layer.items():
        current = into.get(key)
        if isinstance(current, dict) and isinstance(value, Mapping):
            _merge(current, value)
        elif isinstance(value, Mapping):
            into[key] = {}
            _merge(into[key], value)
        else:
            into[key] = value


def load_settings(profile: str | None = None) -> Settings:
    """Validated, frozen settings for a profile; raises ConfigError listing every problem."""
    chosen, raw = load_raw(profile)
    return build_settings(raw, chosen)


def masked(raw: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``raw`` with every secret value replaced, for display."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, Mapping) and key.lower() == "headers":
            # Extra headers (provider, OTLP exporter) are where ingest tokens and keys go.
            out[key] = {name: MASK for name in value}
        elif isinstance(value, Mapping):
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


_SECRET_HEADER_WORDS = ("key", "token", "auth", "secret")


def secret_values(settings: Settings) -> list[str]:
    """Every secret the settings hold, wherever it is configured."""
    found: list[str] = []
    for provider in settings.providers.values():
        key = getattr(provider, "api_key", "")
        if key:
            found.append(key)
        found.extend(
            value
            for name, value in getattr(provider, "headers", ())
            if any(word in name.lower() for word in _SECRET_HEADER_WORDS)
        )
    found.extend(value for _, value in settings.tracing.headers)
    if settings.budgets.webhook_secret:
        found.append(settings.budgets.webhook_secret)
    hook_path = _url_path(settings.budgets.webhook_url)
    if hook_path:
        found.append(hook_path)
    for url in (settings.cache.redis_url, settings.budgets.redis_url, settings.usage.postgres_dsn):
        password = _url_password(url)
        if password:
            found.append(password)
    return found


def _url_path(url: str) -> str:
    """The path and query of a URL: where a webhook's token lives; the host alone is no secret."""
    match = re.match(r"[a-z][a-z0-9+.-]*://[^/?#]*([/?][^#\s]*)", url, re.IGNORECASE)
    path = match.group(1) if match else ""
    return path if len(path.strip("/")) > 1 else ""


def _url_password(url: str) -> str:
    match = re.search(r"://[^/\s:@]*:([^/\s@]+)@", url)
    return match.group(1) if match else ""
