"""The business core: one function per call kind, between the thin services and the providers.

Completions and streams go through the router (plan, attempts, retries,
fallback, breakers, deadlines); embeddings and token counts go to the model's
first deployment. Services never call providers directly.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Sequence

from msgspec import structs

from omnirelay.domain import Completion, CompletionRequest, EmbeddingResult, GatewayEvent, Message
from omnirelay.errors import DeadlineExceededError, UnimplementedError
from omnirelay.providers import tokenizer
from omnirelay.providers.base import EmbeddingProvider, TokenCounter
from omnirelay.providers.registry import ProviderRegistry
from omnirelay.resilience.deadlines import DeadlineReaper
from omnirelay.routing.catalog import ModelCatalog
from omnirelay.routing.router import Router
from omnirelay.usage.pricing import with_cost


class Gateway:
    def __init__(self, router: Router, providers: ProviderRegistry, reaper: DeadlineReaper) -> None:
        self.router = router
        self.catalog: ModelCatalog = router.catalog
        self.providers = providers
        self.reaper = reaper

    def complete(self, request: CompletionRequest, deadline: float | None) -> Awaitable[Completion]:
        """The whole answer, within ``deadline`` (event-loop time; None: the model's default)."""
        # Handing back the router's coroutine saves a coroutine layer on every call.
        return self.router.complete(request, deadline)

    def stream(
        self, request: CompletionRequest, deadline: float | None
    ) -> AsyncGenerator[GatewayEvent, None]:
        """RouteStart, the provider's chunks, then StreamDone. Closing it early stops the upstream."""
        return self.router.stream(request, deadline)

    def default_deadline(self, model: str) -> float | None:
        """When a call to ``model`` that set no deadline must end (event-loop time; None: never)."""
        return self.router.default_deadline(model)

    async def within_default_deadline(self, model: str, own: float | None, work: Awaitable[None]) -> None:
        """Run ``work`` (a stream being relayed) bounded by ``own``, the model's default deadline.

        The bound wraps the whole relay, not each chunk: on expiry the pending await is
        cancelled, which closes the gateway stream and the upstream with it. It is the reaper's
        one shared timer, not a timer per stream: asyncio.timeout_at here cost 11% of streaming
        throughput in `make bench`'s echo scenario.
        """
        if own is None:
            await work
            return
        try:
            await self.reaper.run(own, work)
        except TimeoutError:
            raise DeadlineExceededError(
                f"the stream passed the default deadline of model {model!r} (the caller set none); "
                "set a gRPC deadline on the call to choose your own"
            ) from None

    async def embed(self, model: str, inputs: Sequence[str], dimensions: int) -> tuple[str, EmbeddingResult]:
        entry = self.catalog.resolve(model)
        target = entry.targets[0]
        provider = target.provider
        if not isinstance(provider, EmbeddingProvider):
            raise UnimplementedError(f"provider {provider.name!r} does not serve embeddings")
        result = await provider.embed(entry.deployment, inputs, dimensions)
        priced = with_cost(result.usage, target.price)
        return entry.name, result if priced is result.usage else structs.replace(result, usage=priced)

    async def count_tokens(self, model: str, messages: Sequence[Message]) -> tuple[str, int, bool]:
        """(canonical model, input tokens, estimated?)."""
        entry = self.catalog.resolve(model)
        provider = entry.targets[0].provider
        if isinstance(provider, TokenCounter):
            return entry.name, await provider.count_tokens(entry.deployment, messages), False
        return entry.name, tokenizer.count_messages(messages), True
