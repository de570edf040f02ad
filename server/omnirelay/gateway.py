"""The business core: one function per call kind, between the thin services and the providers.

It resolves the model, applies the preset, checks the provider's supported
parameters, calls the provider within the caller's deadline, and measures the
route facts. Routing strategies, retries and fallback (a later layer) slot in
at ``_plan``; services never call providers directly.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Sequence
from dataclasses import replace
from typing import Any

from omnirelay.domain import (
    Completion,
    CompletionRequest,
    EmbeddingResult,
    GatewayEvent,
    Message,
    ProviderCall,
    ResponseFormatType,
    RouteInfo,
    RouteStart,
    Sampling,
    StreamDone,
    TextDelta,
    ToolCallDelta,
)
from omnirelay.errors import DeadlineExceededError, FieldViolation, InvalidArgumentError, UnimplementedError
from omnirelay.providers import tokenizer
from omnirelay.providers.base import ChatProvider, EmbeddingProvider, TokenCounter
from omnirelay.providers.registry import ProviderRegistry
from omnirelay.routing.catalog import ModelCatalog, ResolvedModel


class Gateway:
    def __init__(self, catalog: ModelCatalog, providers: ProviderRegistry) -> None:
        self.catalog = catalog
        self.providers = providers

    async def complete(self, request: CompletionRequest, deadline: float | None) -> Completion:
        """The whole answer, within ``deadline`` (event-loop time; None: no deadline)."""
        started = time.perf_counter()
        provider, call, route = self._plan(request)
        if deadline is None:
            result = await provider.complete(call)
        else:
            try:
                async with asyncio.timeout_at(deadline):
                    result = await provider.complete(call)
            except TimeoutError:
                raise _deadline(route) from None
        latency = time.perf_counter() - started
        return Completion(result, replace(route, latency_seconds=latency, ttft_seconds=latency))

    async def stream(self, request: CompletionRequest) -> AsyncGenerator[GatewayEvent, None]:
        """RouteStart, the provider's chunks, then StreamDone. Closing it early stops the upstream."""
        started = time.perf_counter()
        provider, call, route = self._plan(request)
        yield RouteStart(route)
        ttft: float | None = None
        chunks = provider.stream(call)
        # The deadline is not wrapped around the yields (an asyncio timeout there would cancel
        # the consumer's code, not ours): gRPC cancels the call at its deadline, and that
        # cancellation closes this generator and the provider's, reaching the upstream.
        try:
            async for chunk in chunks:
                if ttft is None and isinstance(chunk, TextDelta | ToolCallDelta):
                    ttft = time.perf_counter() - started
                yield chunk
        finally:
            # Close the upstream now rather than at garbage collection, so a caller who left
            # stops generation (and billing) at once.
            await chunks.aclose()
        yield StreamDone(replace(route, latency_seconds=time.perf_counter() - started, ttft_seconds=ttft))

    async def embed(self, model: str, inputs: Sequence[str], dimensions: int) -> tuple[str, EmbeddingResult]:
        resolved = self.catalog.resolve(model)
        provider = self.providers.get(resolved.deployment.provider)
        if not isinstance(provider, EmbeddingProvider):
            raise UnimplementedError(f"provider {provider.name!r} does not serve embeddings")
        return resolved.name, await provider.embed(resolved.deployment, inputs, dimensions)

    async def count_tokens(self, model: str, messages: Sequence[Message]) -> tuple[str, int, bool]:
        """(canonical model, input tokens, estimated?)."""
        resolved = self.catalog.resolve(model)
        provider = self.providers.get(resolved.deployment.provider)
        if isinstance(provider, TokenCounter):
            return resolved.name, await provider.count_tokens(resolved.deployment, messages), False
        return resolved.name, tokenizer.count_messages(messages), True

    def _plan(self, request: CompletionRequest) -> tuple[ChatProvider, ProviderCall, RouteInfo]:
        resolved = self.catalog.resolve(request.model)
        provider = self.providers.get(resolved.deployment.provider)
        sampling = request.sampling
        if request.preset:
            sampling = sampling.over(self.catalog.preset(resolved, request.preset))
        strict = request.routing.strict_parameters or provider.strict_parameters
        sampling, dropped = _supported(sampling, provider, resolved, strict)
        route = RouteInfo(
            requested_model=request.model,
            resolved_model=resolved.name,
            deployment=resolved.deployment,
            request_id=request.request_id,
            dropped_parameters=dropped,
        )
        return provider, ProviderCall(request, sampling, resolved.deployment), route


def _supported(
    sampling: Sampling, provider: ChatProvider, resolved: ResolvedModel, strict: bool
) -> tuple[Sampling, tuple[str, ...]]:
    """Sampling without the parameters the provider cannot honour, and their names."""
    unsupported = provider.unsupported_parameters
    if not unsupported:
        return sampling, ()
    present = set(sampling.set_fields())
    # Values that ask for nothing beyond the default need no support: n=1, logprobs off, text format.
    if sampling.response_format is not None and sampling.response_format.type is ResponseFormatType.TEXT:
        present.discard("response_format")
    if sampling.n == 1:
        present.discard("n")
    if sampling.logprobs is False:
        present.discard("logprobs")
    if sampling.top_logprobs == 0:
        present.discard("top_logprobs")
    bad = tuple(sorted(present & unsupported))
    if not bad:
        return sampling, ()
    if strict:
        raise InvalidArgumentError(
            [
                FieldViolation(
                    f"sampling.{name}", f"not supported by provider {provider.name!r} ({resolved.name})"
                )
                for name in bad
            ]
        )
    cleared: dict[str, Any] = {name: () if name == "stop" else None for name in bad}
    return replace(sampling, **cleared), bad


def _deadline(route: RouteInfo) -> DeadlineExceededError:
    return DeadlineExceededError(
        f"the deadline passed before {route.resolved_model} ({route.deployment.provider}) "
        "finished answering; raise the call's deadline or lower max_tokens"
    )
