"""Prices as exact integers, the cost of a call's tokens, and the versioned price table.

Registry and config prices are USD per million tokens. A float price times a
token count drifts by fractions of a micro-dollar, and summed over millions of
records that becomes a visible discrepancy with the provider's invoice, so a
price is converted once to pico-USD per token (1 USD/M = 1,000,000 pUSD per
token) and every cost is integer arithmetic, rounded half up to micro-USD per
attempt.

Tokens follow the gateway's one convention (``TokenUsage``): input includes
cached reads and cache writes, output includes reasoning. Each part is billed
at its own price, falling back to the plain input/output price where the
provider publishes none.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal

from omnirelay.config.routing import PricingSettings
from omnirelay.config.schema import ModelSettings, ProviderSettings
from omnirelay.domain import TokenUsage

_PICO_PER_MICRO = 1_000_000
_HALF = _PICO_PER_MICRO // 2


def _pico(usd_per_million: float) -> int:
    # str() first: Decimal(0.075) would carry the float's binary error into the integer.
    return int((Decimal(str(usd_per_million)) * _PICO_PER_MICRO).to_integral_value())


@dataclass(frozen=True, slots=True)
class Price:
    """One deployment's prices in pico-USD per token, and where they come from."""

    input: int
    output: int
    cached_input: int
    cache_write: int
    reasoning: int
    source: str = ""
    as_of: str = ""

    @classmethod
    def of(cls, p: PricingSettings) -> Price:
        input_price = _pico(p.input)
        output_price = _pico(p.output)
        return cls(
            input=input_price,
            output=output_price,
            cached_input=input_price if p.cached_input is None else _pico(p.cached_input),
            cache_write=input_price if p.cache_write is None else _pico(p.cache_write),
            reasoning=output_price if p.reasoning is None else _pico(p.reasoning),
            source=p.source,
            as_of=p.as_of,
        )

    def cost_micros(self, u: TokenUsage) -> int:
        plain_input = max(0, u.input_tokens - u.cached_input_tokens - u.cache_write_input_tokens)
        plain_output = max(0, u.output_tokens - u.reasoning_tokens)
        pico = (
            plain_input * self.input
            + u.cached_input_tokens * self.cached_input
            + u.cache_write_input_tokens * self.cache_write
            + plain_output * self.output
            + u.reasoning_tokens * self.reasoning
        )
        return (pico + _HALF) // _PICO_PER_MICRO

    def max_cost_micros(self, input_tokens: int, max_output_tokens: int) -> int:
        """The most a call can cost: every input token uncached, every output token at the dearer rate."""
        pico = input_tokens * max(self.input, self.cache_write) + max_output_tokens * max(
            self.output, self.reasoning
        )
        return (pico + _PICO_PER_MICRO - 1) // _PICO_PER_MICRO

    def usd_per_million(self) -> dict[str, str]:
        """The prices as the registry writes them (exact decimal strings)."""
        return {
            name: _usd(getattr(self, name))
            for name in ("input", "output", "cached_input", "cache_write", "reasoning")
        }


def _usd(pico: int) -> str:
    # normalize() alone writes 10 as 1E+1; "f" keeps it plain.
    return format((Decimal(pico) / _PICO_PER_MICRO).normalize(), "f")


def with_cost(u: TokenUsage, price: Price | None) -> TokenUsage:
    """``u`` with its cost filled in (unchanged when the price is unknown: cost 0)."""
    if price is None:
        return u
    return u.costing(price.cost_micros(u))


@dataclass(frozen=True, slots=True)
class PriceRow:
    model: str
    deployment: str
    price: Price | None  # None: no price is known, calls cost 0 and say so


class PriceTable:
    """Every (model, deployment) price in force, and a version naming exactly this table.

    The version is a digest of the rows, so two replicas with the same prices
    agree on it, and a record keeps the version its cost was computed with.
    """

    def __init__(self, rows: Iterable[PriceRow]) -> None:
        self.rows = tuple(sorted(rows, key=lambda r: (r.model, r.deployment)))
        self._index = {(r.model, r.deployment): r.price for r in self.rows}
        digest = hashlib.sha256(json.dumps(self.snapshot(), sort_keys=True).encode()).hexdigest()
        self.version = f"pt-{digest[:12]}"

    def price(self, model: str, deployment: str) -> Price | None:
        return self._index.get((model, deployment))

    def snapshot(self) -> list[dict[str, object]]:
        """The table as plain data (``omnirelay pricing show --format json``; input of ``pricing diff``)."""
        return [
            {
                "model": r.model,
                "deployment": r.deployment,
                "known": r.price is not None,
                **(
                    {**r.price.usd_per_million(), "source": r.price.source, "as_of": r.price.as_of}
                    if r.price is not None
                    else {}
                ),
            }
            for r in self.rows
        ]


def price_rows(
    models: Mapping[str, ModelSettings], providers: Mapping[str, ProviderSettings]
) -> Iterator[PriceRow]:
    """Every deployment the settings route to, priced as routing prices it (its own, else the model's)."""
    from omnirelay.routing.catalog import bind_providers  # routing imports this module

    for model in models.values():
        for placed in model.deployments:
            pricing = placed.pricing or model.pricing
            for provider in bind_providers(placed.provider, providers):
                yield PriceRow(
                    model.name,
                    f"{provider}/{placed.provider_model}",
                    None if pricing is None else Price.of(pricing),
                )


def diff(old: list[dict[str, object]], new: list[dict[str, object]]) -> list[tuple[str, str, str, str]]:
    """(model/deployment, field, old, new) for every price that was added, removed or changed."""

    def index(rows: list[dict[str, object]]) -> dict[str, dict[str, object]]:
        return {f"{r['model']} @ {r['deployment']}": r for r in rows}

    before, after = index(old), index(new)
    changes: list[tuple[str, str, str, str]] = []
    for key in sorted(before.keys() | after.keys()):
        a, b = before.get(key), after.get(key)
        if a is None or b is None:
            changes.append(
                (key, "*", "absent" if a is None else "present", "absent" if b is None else "present")
            )
            continue
        for name in sorted((a.keys() | b.keys()) - {"model", "deployment"}):
            if str(a.get(name, "")) != str(b.get(name, "")):
                changes.append((key, name, str(a.get(name, "")), str(b.get(name, ""))))
    return changes
