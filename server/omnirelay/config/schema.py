"""The validated settings: frozen dataclasses, and the one pass that builds them.

Validation and conversion are one walk over the raw mapping so that every
problem is found in a single run (an operator fixes them all at once), each
reported as ``key = value: what is allowed``. Unknown keys are problems too: a
misspelt key silently ignored is a production incident later.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from omnirelay.domain import Sampling

PROFILES = ("development", "staging", "production")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("json", "text")
CAPABILITIES = ("streaming", "tools", "json_mode", "json_schema", "vision", "reasoning", "embeddings")
PROVIDER_KINDS = ("local", "openai", "azure", "anthropic", "gemini", "ollama")
# OpenAI-compatible servers whose small differences the openai adapter knows.
OPENAI_FLAVORS = (
    "",
    "vllm",
    "llamacpp",
    "ollama",
    "groq",
    "deepseek",
    "mistral",
    "together",
    "openrouter",
    "xai",
)
# Keys whose values are secrets (matched at the end of the name: `max_output_tokens` is not one).
SECRET_KEYS = ("api_key", "token", "secret", "password")


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    key: str
    value: object
    allowed: str

    def __str__(self) -> str:
        shown = "<missing>" if self.value is _MISSING else repr(self.value)
        return f"{self.key} = {shown}: {self.allowed}"


class ConfigError(Exception):
    """The settings are invalid; ``problems`` holds one entry per bad key."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class ServerSettings:
    host: str
    port: int
    reflection: bool
    max_receive_message_bytes: int
    max_send_message_bytes: int
    keepalive_time_ms: int
    keepalive_timeout_ms: int
    keepalive_permit_without_calls: bool
    shutdown_drain_seconds: float
    shutdown_grace_seconds: float


@dataclass(frozen=True, slots=True)
class LoggingSettings:
    level: str
    format: str


@dataclass(frozen=True, slots=True)
class LocalProviderSettings:
    """The offline ``local`` provider. Zero latency knobs mean "as fast as possible"."""

    name: str
    ttft_ms: float = 0.0
    tokens_per_second: float = 0.0
    default_output_tokens: int = 24
    embedding_dimensions: int = 64
    api_key: str = field(default="", repr=False)
    kind: str = "local"


@dataclass(frozen=True, slots=True)
class HttpProviderSettings:
    """An upstream reached over HTTP: where, with which key, and how patiently."""

    name: str
    kind: str
    base_url: str
    api_key: str = field(default="", repr=False)
    flavor: str = ""
    # Azure's api-version query parameter; Anthropic's anthropic-version header.
    api_version: str = ""
    connect_timeout: float = 5.0
    read_timeout: float = 120.0
    total_timeout: float = 600.0
    max_connections: int = 100
    max_keepalive_connections: int = 100
    http2: bool = False
    strict_parameters: bool = False
    headers: tuple[tuple[str, str], ...] = ()


ProviderSettings = LocalProviderSettings | HttpProviderSettings


@dataclass(frozen=True, slots=True)
class ModelSettings:
    name: str
    provider: str
    provider_model: str
    family: str
    aliases: tuple[str, ...]
    capabilities: tuple[str, ...]
    context_window: int
    max_output_tokens: int
    presets: Mapping[str, Sampling]


@dataclass(frozen=True, slots=True)
class Settings:
    profile: str
    default_model: str
    server: ServerSettings
    logging: LoggingSettings
    providers: Mapping[str, ProviderSettings]
    models: Mapping[str, ModelSettings]
    presets: Mapping[str, Sampling]


_MISSING: Any = object()


class _Section:
    """Typed reads from one table of the raw settings, collecting problems."""

    def __init__(self, raw: object, path: str, problems: list[ConfigProblem]) -> None:
        self.path = path
        self.problems = problems
        if isinstance(raw, Mapping):
            self.raw: Mapping[str, Any] = {str(k).lower(): v for k, v in raw.items()}
        else:
            self.raw = {}
            problems.append(ConfigProblem(path, raw, "expected a table"))
        self.seen: set[str] = set()

    def _get(self, key: str, default: object) -> Any:
        self.seen.add(key)
        value = self.raw.get(key, default)
        if value is _MISSING:
            self.problem(key, _MISSING, "required")
        return value

    def problem(self, key: str, value: object, allowed: str) -> None:
        self.problems.append(ConfigProblem(f"{self.path}.{key}" if self.path else key, value, allowed))

    def get_int(self, key: str, lo: int, hi: int, default: object = _MISSING) -> int:
        value = self._get(key, default)
        if value is _MISSING:
            return lo
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            self.problem(key, value, f"expected an integer from {lo} to {hi}")
            return lo
        return value

    def get_float(self, key: str, lo: float, hi: float, default: object = _MISSING) -> float:
        value = self._get(key, default)
        if value is _MISSING:
            return lo
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not ok or not math.isfinite(value) or not lo <= value <= hi:
            self.problem(key, value, f"expected a number from {lo:g} to {hi:g}")
            return lo
        return float(value)

    def get_bool(self, key: str, default: object = _MISSING) -> bool:
        value = self._get(key, default)
        if value is _MISSING:
            return False
        if not isinstance(value, bool):
            self.problem(key, value, "expected true or false")
            return False
        return value

    def get_str(self, key: str, choices: tuple[str, ...] = (), default: object = _MISSING) -> str:
        value = self._get(key, default)
        if value is _MISSING:
            return ""
        if not isinstance(value, str) or (choices and value not in choices):
            self.problem(
                key, value, f"expected one of {', '.join(choices)}" if choices else "expected a string"
            )
            return choices[0] if choices else ""
        return value

    def get_str_list(
        self, key: str, choices: tuple[str, ...] = (), default: object = _MISSING
    ) -> tuple[str, ...]:
        value = self._get(key, default)
        if value is _MISSING:
            return ()
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            self.problem(key, value, "expected a list of strings")
            return ()
        bad = [v for v in value if choices and v not in choices]
        if bad:
            self.problem(key, value, f"unknown {', '.join(bad)}; expected any of {', '.join(choices)}")
        return tuple(v for v in value if v not in bad)

    def get_str_map(self, key: str) -> tuple[tuple[str, str], ...]:
        self.seen.add(key)
        value = self.raw.get(key, {})
        if not isinstance(value, Mapping) or not all(isinstance(v, str) for v in value.values()):
            self.problem(key, value, "expected a table of strings")
            return ()
        return tuple((str(k), v) for k, v in value.items())

    def tables(self, key: str) -> dict[str, _Section]:
        self.seen.add(key)
        raw = self.raw.get(key, {})
        if not isinstance(raw, Mapping):
            self.problem(key, raw, "expected a table of tables")
            return {}
        prefix = f"{self.path}.{key}" if self.path else key
        return {str(name): _Section(value, f"{prefix}.{name}", self.problems) for name, value in raw.items()}

    def section(self, key: str) -> _Section:
        self.seen.add(key)
        return _Section(self.raw.get(key, {}), f"{self.path}.{key}" if self.path else key, self.problems)

    def reject_unknown(self, ignore: tuple[str, ...] = ()) -> None:
        for key in sorted(set(self.raw) - self.seen - set(ignore)):
            self.problem(key, self.raw[key], "unknown key")


def build_settings(raw: Mapping[str, Any], profile: str) -> Settings:
    """Validate ``raw`` (already merged for ``profile``) into Settings, or raise ConfigError."""
    problems: list[ConfigProblem] = []
    if profile not in PROFILES:
        problems.append(ConfigProblem("profile", profile, f"expected one of {', '.join(PROFILES)}"))
    top = _Section(raw, "", problems)
    server = _server(top.section("server"))
    logging = _logging(top.section("logging"))
    providers = {name: _provider(name, s) for name, s in top.tables("providers").items()}
    presets = {name: _sampling(s) for name, s in top.tables("presets").items()}
    models = {name: _model(name, s, providers) for name, s in top.tables("models").items()}
    default_model = top.get_str("default_model")
    known = set(models) | {a for m in models.values() for a in m.aliases}
    if default_model and default_model not in known and "/" not in default_model:
        top.problem(
            "default_model", default_model, f"expected a configured model: {', '.join(sorted(known))}"
        )
    _check_aliases(models, problems)
    # Dynaconf's own switches arrive as settings keys; they are not ours to validate.
    top.reject_unknown(ignore=("env", "load_dotenv", "config", "secrets"))
    if problems:
        raise ConfigError(problems)
    return Settings(profile, default_model, server, logging, providers, models, presets)


def _server(s: _Section) -> ServerSettings:
    result = ServerSettings(
        host=s.get_str("host"),
        port=s.get_int("port", 0, 65535),
        reflection=s.get_bool("reflection"),
        max_receive_message_bytes=s.get_int("max_receive_message_bytes", 1024, 2**31 - 1),
        max_send_message_bytes=s.get_int("max_send_message_bytes", 1024, 2**31 - 1),
        keepalive_time_ms=s.get_int("keepalive_time_ms", 1000, 86_400_000),
        keepalive_timeout_ms=s.get_int("keepalive_timeout_ms", 100, 3_600_000),
        keepalive_permit_without_calls=s.get_bool("keepalive_permit_without_calls"),
        shutdown_drain_seconds=s.get_float("shutdown_drain_seconds", 0.0, 600.0),
        shutdown_grace_seconds=s.get_float("shutdown_grace_seconds", 0.0, 3600.0),
    )
    s.reject_unknown()
    return result


def _logging(s: _Section) -> LoggingSettings:
    result = LoggingSettings(level=s.get_str("level", LOG_LEVELS), format=s.get_str("format", LOG_FORMATS))
    s.reject_unknown()
    return result


def _provider(name: str, s: _Section) -> ProviderSettings:
    kind = s.get_str("kind", PROVIDER_KINDS)
    if kind != "local":
        return _http_provider(name, kind, s)
    result = LocalProviderSettings(
        name=name,
        ttft_ms=s.get_float("ttft_ms", 0.0, 600_000.0, default=0.0),
        tokens_per_second=s.get_float("tokens_per_second", 0.0, 1e9, default=0.0),
        default_output_tokens=s.get_int("default_output_tokens", 1, 1_000_000, default=24),
        embedding_dimensions=s.get_int("embedding_dimensions", 1, 65_536, default=64),
        api_key=s.get_str("api_key", default=""),
    )
    s.reject_unknown()
    return result


_DEFAULT_URLS = {
    "openai": "https://api.openai.com/v1",
    "anthropic": "https://api.anthropic.com",
    "gemini": "https://generativelanguage.googleapis.com",
    "ollama": "http://127.0.0.1:11434",
}


def _http_provider(name: str, kind: str, s: _Section) -> HttpProviderSettings:
    base_url = s.get_str("base_url", default=_DEFAULT_URLS.get(kind, ""))
    if not base_url.startswith(("http://", "https://")):
        s.problem("base_url", base_url, "expected an http:// or https:// URL")
    api_key = s.get_str("api_key", default="")
    key_env = s.get_str("api_key_env", default="")
    if key_env and not api_key:
        # Keys stay out of files: name the variable that holds it.
        api_key = os.environ.get(key_env, "")
    result = HttpProviderSettings(
        name=name,
        kind=kind,
        base_url=base_url.rstrip("/"),
        api_key=api_key,
        flavor=s.get_str("flavor", OPENAI_FLAVORS if kind == "openai" else ("",), default=""),
        api_version=s.get_str("api_version", default=""),
        connect_timeout=s.get_float("connect_timeout", 0.01, 600.0, default=5.0),
        read_timeout=s.get_float("read_timeout", 0.01, 3600.0, default=120.0),
        total_timeout=s.get_float("total_timeout", 0.01, 86_400.0, default=600.0),
        max_connections=s.get_int("max_connections", 1, 100_000, default=100),
        # As many idle connections as total ones: httpcore closes pooled connections beyond the
        # keep-alive count after each request, which under load means a new TLS handshake per call.
        max_keepalive_connections=s.get_int("max_keepalive_connections", 0, 100_000, default=100),
        http2=s.get_bool("http2", default=False),
        strict_parameters=s.get_bool("strict_parameters", default=False),
        headers=s.get_str_map("headers"),
    )
    if kind == "azure" and not result.api_version:
        s.problem("api_version", "", "required for kind azure, e.g. 2024-10-21")
    s.reject_unknown()
    return result


def _model(name: str, s: _Section, providers: Mapping[str, ProviderSettings]) -> ModelSettings:
    provider = s.get_str("provider")
    if provider and provider not in providers:
        s.problem("provider", provider, f"expected a configured provider: {', '.join(sorted(providers))}")
    result = ModelSettings(
        name=name,
        provider=provider,
        provider_model=s.get_str("provider_model", default=name),
        family=s.get_str("family", default=name),
        aliases=s.get_str_list("aliases", default=[]),
        capabilities=s.get_str_list("capabilities", CAPABILITIES, default=[]),
        context_window=s.get_int("context_window", 1, 100_000_000),
        max_output_tokens=s.get_int("max_output_tokens", 1, 100_000_000),
        presets={preset: _sampling(p) for preset, p in s.tables("presets").items()},
    )
    s.reject_unknown()
    return result


def _sampling(s: _Section) -> Sampling:
    def opt_float(key: str, lo: float, hi: float) -> float | None:
        return s.get_float(key, lo, hi) if key in s.raw else None

    def opt_int(key: str, lo: int, hi: int) -> int | None:
        return s.get_int(key, lo, hi) if key in s.raw else None

    result = Sampling(
        temperature=opt_float("temperature", 0.0, 2.0),
        top_p=opt_float("top_p", 0.0, 1.0),
        top_k=opt_int("top_k", 1, 1_000_000),
        max_tokens=opt_int("max_tokens", 1, 100_000_000),
        stop=s.get_str_list("stop", default=[]),
        seed=opt_int("seed", -(2**63), 2**63 - 1),
        n=opt_int("n", 1, 16),
        presence_penalty=opt_float("presence_penalty", -2.0, 2.0),
        frequency_penalty=opt_float("frequency_penalty", -2.0, 2.0),
    )
    s.reject_unknown()
    return result


def _check_aliases(models: Mapping[str, ModelSettings], problems: list[ConfigProblem]) -> None:
    owner: dict[str, str] = {}
    for model in models.values():
        for alias in model.aliases:
            if alias in models or owner.setdefault(alias, model.name) != model.name:
                other = owner.get(alias, alias)
                problems.append(
                    ConfigProblem(
                        f"models.{model.name}.aliases",
                        alias,
                        f"alias already names {other!r}; aliases must be unique",
                    )
                )
