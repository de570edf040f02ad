"""Tokens at a cost: a usage is re-priced without losing a count, and reused when nothing changes."""

from __future__ import annotations

from omnirelay.domain import TokenUsage
from omnirelay.usage.pricing import Price, with_cost

USAGE = TokenUsage(
    input_tokens=1_000,
    output_tokens=200,
    cached_input_tokens=300,
    reasoning_tokens=50,
    estimated=True,
    cache_write_input_tokens=100,
    cost_micros=7,
)
# Pico-USD per token: $2.50 / $10 per million tokens.
PRICE = Price(
    input=2_500_000, output=10_000_000, cached_input=1_250_000, cache_write=2_500_000, reasoning=10_000_000
)


def test_costing_keeps_every_count_and_changes_only_the_cost() -> None:
    priced = USAGE.costing(1234)
    assert priced.cost_micros == 1234
    assert priced == TokenUsage(1_000, 200, 300, 50, True, 100, 1234)
    # Nothing to change: the same object, no allocation on the hot path.
    assert USAGE.costing(7) is USAGE
    assert priced.costing(0).cost_micros == 0


def test_with_cost_prices_the_usage_or_leaves_it_alone_without_a_price() -> None:
    assert with_cost(USAGE, None) is USAGE
    priced = with_cost(USAGE, PRICE)
    assert priced.cost_micros == PRICE.cost_micros(USAGE) > 0
    assert priced.costing(USAGE.cost_micros) == USAGE
    assert with_cost(priced, PRICE) is priced
