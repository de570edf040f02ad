"""The explicit registry of provider kinds, and the live providers built from settings."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from omnirelay.config.schema import LocalProviderSettings, ProviderSettings
from omnirelay.errors import FailedPreconditionError
from omnirelay.providers.base import ChatProvider


def _local(settings: ProviderSettings) -> ChatProvider:
    from omnirelay.providers.local import LocalProvider

    assert isinstance(settings, LocalProviderSettings)
    return LocalProvider(settings)


# One entry per provider kind; imports are lazy so an unused adapter costs nothing at start.
FACTORIES: Mapping[str, Callable[[ProviderSettings], ChatProvider]] = {
    "local": _local,
}


class ProviderRegistry:
    """The providers of one server, by configured name."""

    def __init__(self, providers: Mapping[str, ChatProvider]) -> None:
        self._providers = dict(providers)

    @classmethod
    def from_settings(cls, settings: Mapping[str, ProviderSettings]) -> ProviderRegistry:
        return cls({name: FACTORIES[s.kind](s) for name, s in settings.items()})

    def get(self, name: str) -> ChatProvider:
        try:
            return self._providers[name]
        except KeyError:
            raise FailedPreconditionError(f"provider {name!r} is not configured on this server") from None

    def names(self) -> list[str]:
        return sorted(self._providers)

    def __contains__(self, name: str) -> bool:
        return name in self._providers
