"""The core's value types: frozen Structs, so a value handed between layers cannot change under them."""

from __future__ import annotations

import inspect

import msgspec
import pytest

from omnirelay import domain as d


def _struct_types() -> list[type[msgspec.Struct]]:
    return [
        cls
        for _, cls in inspect.getmembers(d, inspect.isclass)
        if issubclass(cls, msgspec.Struct) and cls.__module__ == d.__name__
    ]


def test_every_domain_value_type_is_a_frozen_struct() -> None:
    types = _struct_types()
    assert {d.CompletionRequest, d.TokenUsage, d.TextDelta, d.RouteInfo} <= set(types)
    assert len(types) >= 25
    for cls in types:
        assert cls.__struct_config__.frozen, cls.__name__


def test_a_value_refuses_assignment_and_hashes_by_value() -> None:
    usage = d.TokenUsage(input_tokens=3, output_tokens=4)
    with pytest.raises(AttributeError):
        usage.output_tokens = 5  # type: ignore[misc]
    assert usage == d.TokenUsage(3, 4)
    assert len({usage, d.TokenUsage(3, 4), d.TokenUsage(3, 5)}) == 2
    # A changed copy leaves the original as it was (test_token_usage covers re-pricing).
    longer = msgspec.structs.replace(usage, output_tokens=9)
    assert (longer.output_tokens, usage.output_tokens) == (9, 4)
