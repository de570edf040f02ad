"""The explicit registry of provider kinds, and the live providers built from settings."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from omnirelay.config.schema import HttpProviderSettings, LocalProviderSettings, ProviderSettings
from omnirelay.errors import FailedPreconditionError
from omnirelay.providers.base import ChatProvider
from omnirelay.providers.http import HttpTransport


def _local(settings: ProviderSettings) -> ChatProvider:
    from omnirelay.providers.local import LocalProvider

    assert isinstance(settings, LocalProviderSettings)
    return LocalProvider(settings)


def _openai(settings: ProviderSettings) -> ChatProvider:
    from omnirelay.providers.openai import OpenAIProvider

    assert isinstance(settings, HttpProviderSettings)
    return OpenAIProvider(settings, HttpTransport(settings))


def _azure(settings: ProviderSettings) -> ChatProvider:
    from omnirelay.providers.azure import AzureOpenAIProvider

    assert isinstance(settings, HttpProviderSettings)
    return AzureOpenAIProvider(settings, HttpTransport(settings))


def _anthropic(settings: ProviderSettings) -> ChatProvider:
    from omnirelay.providers.anthropic import AnthropicProvider

    assert isinstance(settings, HttpProviderSettings)
    return AnthropicProvider(settings, HttpTransport(settings))


def _gemini(settings: ProviderSettings) -> ChatProvider:
    from omnirelay.providers.gemini import GeminiProvider

    assert isinstance(settings, HttpProviderSettings)
    return GeminiProvider(settings, HttpTransport(settings))


def _ollama(settings: ProviderSettings) -> ChatProvider:
    from omnirelay.providers.ollama import OllamaProvider

    assert isinstance(settings, HttpProviderSettings)
    return OllamaProvider(settings, HttpTransport(settings))


# One entry per provider kind; imports are lazy so an unused adapter costs nothing at start.
FACTORIES: Mapping[str, Callable[[ProviderSettings], ChatProvider]] = {
    "local": _local,
    "openai": _openai,
    "azure": _azure,
    "anthropic": _anthropic,
    "gemini": _gemini,
    "ollama": _ollama,
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

    async def aclose(self) -> None:
        """Close every provider's connection pool (at shutdown, after the last call)."""
        for provider in self._providers.values():
            await provider.aclose()
