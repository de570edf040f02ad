"""The generated package imports cleanly from where it is installed, and names the right services."""

from __future__ import annotations

import importlib
import pkgutil

import omnirelay_client.v1 as generated


def test_every_generated_module_imports() -> None:
    names = [m.name for m in pkgutil.iter_modules(generated.__path__)]
    assert {"completion_pb2", "stream_pb2", "benchmark_pb2", "usage_pb2", "types_pb2"} <= set(names)
    for name in names:
        module = importlib.import_module(f"omnirelay_client.v1.{name}")
        assert module.__name__.startswith("omnirelay_client.v1.")


def test_services_live_in_the_v1_package() -> None:
    from omnirelay_client.v1 import benchmark_pb2, completion_pb2, stream_pb2, usage_pb2

    services = {
        s.full_name
        for module in (completion_pb2, stream_pb2, benchmark_pb2, usage_pb2)
        for s in module.DESCRIPTOR.services_by_name.values()
    }
    assert services == {
        "omnirelay.v1.CompletionService",
        "omnirelay.v1.StreamCompletionService",
        "omnirelay.v1.BenchmarkService",
        "omnirelay.v1.UsageService",
    }


def test_enums_start_with_unspecified_zero() -> None:
    from omnirelay_client.v1 import benchmark_pb2, completion_pb2, stream_pb2, types_pb2, usage_pb2

    for module in (types_pb2, completion_pb2, stream_pb2, benchmark_pb2, usage_pb2):
        enums = list(module.DESCRIPTOR.enum_types_by_name.values())
        for message in module.DESCRIPTOR.message_types_by_name.values():
            enums.extend(message.enum_types)
        for enum in enums:
            zero = enum.values_by_number[0]
            assert zero.name.endswith("UNSPECIFIED"), f"{enum.full_name} starts with {zero.name}"
