"""Puts a servicer on the server: every method behind one generic handler, and only the request
path's methods registered with gRPC's core as well.

Why not the generated ``add_*_to_server``: each registers every method of its service, and
grpc.aio's server keeps one pending accept (a task) per registered method, plus one for all
the others, then waits on all of them with ``asyncio.wait`` after every call it accepts. That
wait adds and removes a callback on every pending accept, so each call pays for every method
the server has. With every method registered omnirelay had 19 (its five services, health and
reflection): an accept took 11.8 us against 5.9 us with 4 pending (timeit under uvloop), and
py-spy found 4-5% of the serving thread's samples in ``asyncio.wait`` at c=64. A method only
the generic handler knows is served the same; gRPC looks it up among the generic handlers
instead of by the core's method table, which only the cold methods (admin, usage queries,
health, token counts) pay for.

The handlers are made from the service's descriptor as the generated code makes them: the
method's kind from its streaming flags, its messages' ``FromString`` and ``SerializeToString``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any, Final

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from grpc import aio

# The method handler kinds by (client streaming, server streaming).
_KINDS: Final[dict[tuple[bool, bool], Callable[..., grpc.RpcMethodHandler[Any, Any]]]] = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def _method_handler(
    behavior: Callable[..., Any], method: MethodDescriptor
) -> grpc.RpcMethodHandler[Any, Any]:
    """``behavior`` as the handler of ``method``, (de)serializing its messages."""
    request = message_factory.GetMessageClass(method.input_type)
    response = message_factory.GetMessageClass(method.output_type)
    kind = _KINDS[(method.client_streaming, method.server_streaming)]
    return kind(
        behavior, request_deserializer=request.FromString, response_serializer=response.SerializeToString
    )


def register(
    server: aio.Server, servicer: object, service: ServiceDescriptor, hot: Collection[str] = ()
) -> None:
    """Serve every method of ``service`` from ``servicer`` (its attribute of the method's name),
    with the methods named in ``hot`` registered with gRPC's core too."""
    handlers = {m.name: _method_handler(getattr(servicer, m.name), m) for m in service.methods}
    unknown = sorted(set(hot) - set(handlers))
    if unknown:
        raise ValueError(f"{service.full_name} has no method {', '.join(unknown)}")
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
    registered = {name: handler for name, handler in handlers.items() if name in hot}
    if registered:
        server.add_registered_method_handlers(service.full_name, registered)
