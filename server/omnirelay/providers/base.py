"""The Protocols a provider adapter satisfies.

A chat provider answers unary and streamed completions; embedding, token
counting and model listing are separate Protocols because many providers lack
them. Every method takes one frozen ``ProviderCall`` so adding a field never breaks a signature.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from typing import Protocol, runtime_checkable

from omnirelay.domain import CompletionResult, Deployment, EmbeddingResult, Message, ProviderCall, StreamChunk


@runtime_checkable
class ChatProvider(Protocol):
    """Completions from one upstream."""

    @property
    def name(self) -> str:
        """The configured provider name (``local``, ``openai``…)."""
        ...

    @property
    def unsupported_parameters(self) -> frozenset[str]:
        """Sampling parameter names this provider cannot honour (dropped or refused)."""
        ...

    @property
    def strict_parameters(self) -> bool:
        """Refuse unsupported parameters for every request to this provider (not only strict ones)."""
        ...

    async def aclose(self) -> None:
        """Release pooled connections; called once at shutdown."""
        ...

    async def complete(self, call: ProviderCall) -> CompletionResult:
        """The whole answer. Raises an ``OmniRelayError`` subclass on failure."""
        ...

    def stream(self, call: ProviderCall) -> AsyncGenerator[StreamChunk, None]:
        """The answer as chunks: deltas, one finish per choice, then one usage chunk.

        Closing the iterator early (the caller left) must stop generation upstream.
        """
        ...


@runtime_checkable
class EmbeddingProvider(Protocol):
    """Embeddings from one upstream."""

    async def embed(self, deployment: Deployment, inputs: Sequence[str], dimensions: int) -> EmbeddingResult:
        """One vector per input, in order."""
        ...


@runtime_checkable
class TokenCounter(Protocol):
    """Exact input token counts with the provider's own tokenizer."""

    async def count_tokens(self, deployment: Deployment, messages: Sequence[Message]) -> int:
        """Input tokens the messages would use."""
        ...


@runtime_checkable
class ModelLister(Protocol):
    """The upstream's model list, for active health probes that must never spend tokens."""

    async def list_models(self) -> tuple[str, ...]:
        """Model ids the upstream offers, from its free listing endpoint (no tokens spent)."""
        ...
