"""The model catalog: names resolved to routes over live deployments.

Resolution order: a canonical name, then an alias, then ``provider/model`` for
a configured provider. Anything else is NOT_FOUND with the closest known names,
so a typo costs the caller one round trip, not a support ticket. A registry
model whose deployments name no configured provider is known but not routable:
FAILED_PRECONDITION says which provider to configure.

Everything a request needs from its model (targets, strategy, fallbacks,
timeouts) is precomputed here once, so routing a call is dictionary lookups.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass

from omnirelay.config.routing import RoutingSettings
from omnirelay.config.schema import HttpProviderSettings, ModelSettings, ProviderSettings
from omnirelay.domain import Deployment, Sampling
from omnirelay.errors import FailedPreconditionError, FieldViolation, InvalidArgumentError, ModelNotFoundError
from omnirelay.providers.registry import ProviderRegistry
from omnirelay.routing.targets import Target, TargetPool

# Direct provider/model routes are made on first use; a bound keeps arbitrary names from growing memory.
_MAX_DIRECT = 1024


@dataclass(frozen=True, slots=True)
class ModelEntry:
    """A routable model: its deployments and every routing choice, resolved from settings."""

    name: str
    settings: ModelSettings | None  # None: a direct provider/model call
    targets: tuple[Target, ...]
    strategy: str
    fallbacks: tuple[str, ...]
    fallback_on: frozenset[str]
    # None: unknown (a direct call), so capability checks do not apply.
    capabilities: frozenset[str] | None
    context_window: int  # 0: unknown
    deadline_seconds: float | None
    ttft_timeout_seconds: float | None
    attempt_timeout_seconds: float | None

    @property
    def deployment(self) -> Deployment:
        return self.targets[0].deployment


def _positive(value: float | None, default: float) -> float | None:
    chosen = default if value is None else value
    return chosen if chosen > 0 else None


class ModelCatalog:
    def __init__(
        self,
        models: Mapping[str, ModelSettings],
        presets: Mapping[str, Sampling],
        providers: ProviderRegistry,
        provider_settings: Mapping[str, ProviderSettings],
        default_model: str,
        routing: RoutingSettings,
        pool: TargetPool,
    ) -> None:
        self._models = dict(models)
        self._presets = dict(presets)
        self._providers = providers
        self._default = default_model
        self._routing = routing
        self._pool = pool
        self._entries: dict[str, ModelEntry] = {}
        self._by_name: dict[str, ModelEntry] = {}
        self._unroutable: dict[str, ModelSettings] = {}
        self._direct: dict[str, ModelEntry] = {}
        for model in models.values():
            entry = self._entry(model, provider_settings)
            if entry is None:
                for name in (model.name, *model.aliases):
                    self._unroutable[name] = model
                continue
            self._entries[model.name] = entry
            self._by_name[model.name] = entry
            for alias in model.aliases:
                self._by_name[alias] = entry

    def _entry(
        self, model: ModelSettings, provider_settings: Mapping[str, ProviderSettings]
    ) -> ModelEntry | None:
        targets = []
        for placed in model.deployments:
            for provider in bind_providers(placed.provider, provider_settings):
                deployment = Deployment(
                    f"{provider}/{placed.provider_model}", provider, placed.provider_model
                )
                targets.append(
                    self._pool.target(
                        deployment,
                        self._providers.get(provider),
                        weight=placed.weight,
                        priority=placed.priority,
                        pricing=placed.pricing or model.pricing,
                    )
                )
        if not targets:
            return None
        r = model.routing
        return ModelEntry(
            name=model.name,
            settings=model,
            targets=tuple(targets),
            strategy=r.strategy or self._routing.strategy,
            fallbacks=r.fallbacks,
            fallback_on=frozenset(r.fallback_on if r.fallback_on is not None else self._routing.fallback_on),
            capabilities=frozenset(model.capabilities),
            context_window=model.context_window,
            deadline_seconds=_positive(r.deadline_seconds, self._routing.default_deadline_seconds),
            ttft_timeout_seconds=_positive(r.ttft_timeout_seconds, self._routing.ttft_timeout_seconds),
            attempt_timeout_seconds=_positive(
                r.attempt_timeout_seconds, self._routing.attempt_timeout_seconds
            ),
        )

    def resolve(self, name: str) -> ModelEntry:
        """The model a request names (empty: the default model). Raises ModelNotFoundError."""
        wanted = name or self._default
        found = self._by_name.get(wanted) or self._direct.get(wanted)
        if found is not None:
            return found
        unroutable = self._unroutable.get(wanted)
        if unroutable is not None:
            kinds = ", ".join(sorted({d.provider for d in unroutable.deployments}))
            raise FailedPreconditionError(
                f"model {unroutable.name!r} is in the registry but no configured provider serves it; "
                f"configure a provider of kind {kinds} (or call provider/model directly)",
                metadata={"model": unroutable.name},
            )
        provider, sep, model = wanted.partition("/")
        if sep and model and provider in self._providers:
            return self._direct_entry(wanted, provider, model)
        known = [*self._by_name, *self._unroutable, *(f"{p}/" for p in self._providers.names())]
        raise ModelNotFoundError(wanted, difflib.get_close_matches(wanted, known, n=3, cutoff=0.5))

    def resolve_fallback(self, name: str) -> ModelEntry | None:
        """A fallback model, or None when it is a registry model no configured provider serves.

        Such fallbacks are skipped, not fatal: a chain like ``gpt-4o -> claude-sonnet-4`` must
        keep working on a server where only OpenAI is configured. Unknown names still raise.
        """
        if name in self._unroutable and name not in self._by_name:
            return None
        return self.resolve(name)

    def _direct_entry(self, name: str, provider: str, model: str) -> ModelEntry:
        target = self._pool.target(Deployment(name, provider, model), self._providers.get(provider))
        r = self._routing
        entry = ModelEntry(
            name=name,
            settings=None,
            targets=(target,),
            strategy=r.strategy,
            fallbacks=(),
            fallback_on=frozenset(r.fallback_on),
            capabilities=None,
            context_window=0,
            deadline_seconds=_positive(None, r.default_deadline_seconds),
            ttft_timeout_seconds=_positive(None, r.ttft_timeout_seconds),
            attempt_timeout_seconds=_positive(None, r.attempt_timeout_seconds),
        )
        if len(self._direct) < _MAX_DIRECT:
            self._direct[name] = entry
        return entry

    def preset(self, entry: ModelEntry, name: str) -> Sampling:
        """The named preset: the model's own first, then the global one."""
        own = entry.settings.presets if entry.settings is not None else {}
        if name in own:
            return own[name]
        if name in self._presets:
            return self._presets[name]
        known = sorted({*self._presets, *own})
        raise InvalidArgumentError(
            [
                FieldViolation(
                    "preset", f"unknown preset {name!r}; configured presets: {', '.join(known) or 'none'}"
                )
            ]
        )

    def models(self, include_unavailable: bool = False) -> list[tuple[ModelSettings, ModelEntry | None]]:
        """Registry models by name with their route (None: no configured provider serves them)."""
        return [
            (self._models[n], self._entries.get(n))
            for n in sorted(self._models)
            if include_unavailable or n in self._entries
        ]


def bind_providers(provider: str, settings: Mapping[str, ProviderSettings]) -> list[str]:
    """The configured providers a deployment names: that provider, else every plain one of that kind.

    OpenAI-compatible servers (a flavor set) are not bound by kind: a vLLM server does not
    serve gpt-4o just because it speaks the same API.
    """
    if provider in settings:
        return [provider]
    return [
        name
        for name, s in sorted(settings.items())
        if s.kind == provider and not (isinstance(s, HttpProviderSettings) and s.flavor)
    ]
