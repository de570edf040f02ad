"""Route plans: which model and deployment to try, in what order, with which parameters.

A plan is lazy: the first candidate costs one strategy call, and fallback models
are resolved, checked and ordered only if an earlier candidate failed. Capability
and context checks happen here, before any upstream call; a model that cannot
serve the request is skipped when the route has a capable fallback and refused
otherwise.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
from msgspec import structs

from omnirelay.domain import (
    CompletionRequest,
    ImagePart,
    ProviderCall,
    ResponseFormatType,
    Sampling,
    TextPart,
)
from omnirelay.errors import FieldViolation, InvalidArgumentError
from omnirelay.providers import tokenizer
from omnirelay.providers.base import ChatProvider
from omnirelay.routing.catalog import ModelCatalog, ModelEntry
from omnirelay.routing.strategies import Strategy, arrange
from omnirelay.routing.targets import Target


class Candidate(msgspec.Struct, frozen=True):
    entry: ModelEntry
    target: Target
    call: ProviderCall
    dropped: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Skipped:
    """A model the plan passed over before any upstream call, and why."""

    entry: ModelEntry
    field: str
    reason: str


class _Needs:
    """What a request asks of a model, measured once and only as far as a check needs."""

    __slots__ = ("_chars", "_tokens", "capabilities", "request")

    def __init__(self, request: CompletionRequest, stream: bool) -> None:
        self.request = request
        needed = []
        if stream:
            needed.append("streaming")
        if request.tools:
            needed.append("tools")
        fmt = request.sampling.response_format
        if fmt is not None and fmt.type is ResponseFormatType.JSON_OBJECT:
            needed.append("json_mode")
        elif fmt is not None and fmt.type is ResponseFormatType.JSON_SCHEMA:
            needed.append("json_schema")
        chars = 0
        for message in request.messages:
            for part in message.parts:
                if type(part) is TextPart:
                    chars += len(part.text)
                elif type(part) is ImagePart and "vision" not in needed:
                    needed.append("vision")
        self.capabilities = frozenset(needed)
        self._chars = chars
        self._tokens: int | None = None

    def over_window(self, window: int) -> int:
        """The estimated prompt tokens when they exceed ``window``, else 0."""
        # The estimator never counts more tokens than characters, so short prompts skip it.
        if window <= 0 or self._chars < window:
            return 0
        if self._tokens is None:
            self._tokens = tokenizer.count_messages(self.request.messages)
        return self._tokens if self._tokens > window else 0


class Plan:
    """The candidates for one call, produced as the call needs them."""

    __slots__ = (
        "_catalog",
        "_fallback_entries",
        "_needs",
        "_strategies",
        "allow_fallback",
        "min_window",
        "primary",
        "request",
        "skipped",
    )

    def __init__(
        self,
        catalog: ModelCatalog,
        strategies: Mapping[str, Strategy],
        request: CompletionRequest,
        stream: bool,
    ) -> None:
        self._catalog = catalog
        self._strategies = strategies
        self.request = request
        self.primary = catalog.resolve(request.model)
        allow = request.routing.allow_fallback
        self.allow_fallback = True if allow is None else allow
        self._needs = _Needs(request, stream)
        self.skipped: list[Skipped] = []
        # After a context-length failure: only models with a larger window than this may follow.
        self.min_window = 0
        # Named fallbacks are checked up front: a typo is the caller's error, not a silent no-op.
        named = request.routing.fallback_models
        self._fallback_entries = [catalog.resolve_fallback(m) for m in named] if named else None

    def models(self) -> Iterator[ModelEntry]:
        """The primary model, then (when allowed) its fallback models, each once."""
        yield self.primary
        if not self.allow_fallback:
            return
        seen = {self.primary.name}
        chain = self._fallback_entries
        if chain is None:
            resolve = self._catalog.resolve_fallback
            chain = [resolve(m) for m in self.primary.fallbacks]
        for entry in chain:
            if entry is not None and entry.name not in seen:
                seen.add(entry.name)
                yield entry

    def candidates(self) -> Iterator[Candidate]:
        """Candidates in order. Set ``min_window`` meanwhile to skip models with no larger window."""
        request = self.request
        routing = request.routing
        served = False
        for entry in self.models():
            if self.min_window and entry.context_window <= self.min_window:
                self.skipped.append(Skipped(entry, "messages", _smaller_window(entry, self.min_window)))
                continue
            why = _unsuitable(entry, self._needs)
            if why:
                self.skipped.append(Skipped(entry, *why))
                continue
            ordered = arrange(
                self._strategies[routing.strategy or entry.strategy], entry.targets, routing.sticky_key
            )
            sampling = request.sampling
            if request.preset:
                sampling = sampling.over(self._catalog.preset(entry, request.preset))
            for target in ordered if self.allow_fallback else ordered[:1]:
                if self.min_window and entry.context_window <= self.min_window:
                    break
                provider = target.provider
                strict = routing.strict_parameters or provider.strict_parameters
                chosen, dropped = supported(sampling, provider, entry, strict)
                served = True
                yield Candidate(entry, target, ProviderCall(request, chosen, target.deployment), dropped)
        if not served and self.skipped:
            raise InvalidArgumentError(
                [FieldViolation(s.field, s.reason) for s in self.skipped],
                "no model on this route can serve the request: " + "; ".join(s.reason for s in self.skipped),
            )


_FIELDS = {
    "tools": "tools",
    "json_mode": "sampling.response_format",
    "json_schema": "sampling.response_format",
    "vision": "messages",
    "streaming": "model",
}


def _unsuitable(entry: ModelEntry, needs: _Needs) -> tuple[str, str] | None:
    """(field, why) when ``entry`` cannot serve the request."""
    caps = entry.capabilities
    if caps is not None and not needs.capabilities <= caps:
        missing = sorted(needs.capabilities - caps)
        return _FIELDS[missing[0]], f"model {entry.name!r} does not support {', '.join(missing)}"
    tokens = needs.over_window(entry.context_window)
    if tokens:
        return "messages", (
            f"the prompt is about {tokens} tokens, more than the {entry.context_window}-token "
            f"context window of {entry.name!r}"
        )
    return None


def _smaller_window(entry: ModelEntry, needed: int) -> str:
    window = f"a {entry.context_window}-token window" if entry.context_window else "an unknown window"
    return (
        f"model {entry.name!r} has {window}, no larger than the {needed}-token window "
        "the prompt already exceeded"
    )


def supported(
    sampling: Sampling, provider: ChatProvider, entry: ModelEntry, strict: bool
) -> tuple[Sampling, tuple[str, ...]]:
    """Sampling without the parameters the provider cannot honour, and their names."""
    unsupported = provider.unsupported_parameters
    if not unsupported:
        return sampling, ()
    # Only the provider's few unsupported names are looked at, not every sampling field; a
    # request asking for none of them (the common case) builds nothing.
    asked = [name for name in unsupported if _asks_for(sampling, name)]
    if not asked:
        return sampling, ()
    bad = tuple(sorted(asked))
    if strict:
        raise InvalidArgumentError(
            [
                FieldViolation(
                    f"sampling.{name}", f"not supported by provider {provider.name!r} ({entry.name})"
                )
                for name in bad
            ]
        )
    cleared: dict[str, Any] = {name: () if name == "stop" else None for name in bad}
    return structs.replace(sampling, **cleared), bad


def _asks_for(sampling: Sampling, name: str) -> bool:
    """Does ``sampling`` set ``name`` to something beyond the default (n=1, logprobs off, text)?"""
    value: Any = getattr(sampling, name)
    if value is None or value == ():
        return False
    if name == "response_format":
        return bool(value.type is not ResponseFormatType.TEXT)
    if name == "n":
        return bool(value != 1)
    if name == "logprobs":
        return value is not False
    if name == "top_logprobs":
        return bool(value != 0)
    return True
