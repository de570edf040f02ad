"""The model catalog: canonical names, aliases, direct ``provider/model`` calls, presets.

Resolution order: a canonical name, then an alias, then ``provider/model`` for
a configured provider. Anything else is NOT_FOUND with the closest known names,
so a typo costs the caller one round trip, not a support ticket.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from omnirelay.config.schema import ModelSettings
from omnirelay.domain import Deployment, Sampling
from omnirelay.errors import FieldViolation, InvalidArgumentError, ModelNotFoundError


@dataclass(frozen=True, slots=True)
class ResolvedModel:
    """A model name resolved to its canonical entry and the deployment that serves it."""

    name: str
    deployment: Deployment
    settings: ModelSettings | None


class ModelCatalog:
    def __init__(
        self,
        models: Mapping[str, ModelSettings],
        presets: Mapping[str, Sampling],
        providers: Iterable[str],
        default_model: str,
    ) -> None:
        self._models = dict(models)
        self._presets = dict(presets)
        self._providers = frozenset(providers)
        self._default = default_model
        self._by_name: dict[str, ResolvedModel] = {}
        for model in models.values():
            deployment = Deployment(
                f"{model.provider}/{model.provider_model}", model.provider, model.provider_model
            )
            resolved = ResolvedModel(model.name, deployment, model)
            self._by_name[model.name] = resolved
            for alias in model.aliases:
                self._by_name[alias] = resolved

    def resolve(self, name: str) -> ResolvedModel:
        """The model a request names (empty: the default model). Raises ModelNotFoundError."""
        wanted = name or self._default
        found = self._by_name.get(wanted)
        if found is not None:
            return found
        provider, sep, model = wanted.partition("/")
        if sep and model and provider in self._providers:
            return ResolvedModel(wanted, Deployment(wanted, provider, model), None)
        known = [*self._by_name, *(f"{p}/" for p in self._providers)]
        raise ModelNotFoundError(wanted, difflib.get_close_matches(wanted, known, n=3, cutoff=0.5))

    def preset(self, resolved: ResolvedModel, name: str) -> Sampling:
        """The named preset: the model's own first, then the global one."""
        if resolved.settings is not None and name in resolved.settings.presets:
            return resolved.settings.presets[name]
        if name in self._presets:
            return self._presets[name]
        known = sorted({*self._presets, *(resolved.settings.presets if resolved.settings else ())})
        raise InvalidArgumentError(
            [
                FieldViolation(
                    "preset", f"unknown preset {name!r}; configured presets: {', '.join(known) or 'none'}"
                )
            ]
        )

    def models(self) -> list[ModelSettings]:
        return [self._models[n] for n in sorted(self._models)]
