"""The edge of every omnirelay call: its request id, and errors turned into gRPC statuses.

This is the one place an ``OmniRelayError`` becomes a status with
``google.rpc`` details; anything unexpected becomes INTERNAL with the request
id and nothing else (internals and secrets stay in the server log). Wrapped
handlers are built once per method and reused, so the per-call cost is one
metadata scan and one contextvar set.
"""

from __future__ import annotations

import inspect
import logging
import uuid
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any

import grpc
from grpc import aio

from omnirelay.errors import OmniRelayError

log = logging.getLogger("omnirelay.edge")
_request_id: ContextVar[str] = ContextVar("omnirelay_request_id", default="")
REQUEST_ID_HEADER = "x-request-id"
# A caller's id is echoed into logs and metadata, so it is bounded and plain.
_MAX_ID = 128


def current_request_id() -> str:
    """The request id of the call being served ("" outside a call)."""
    return _request_id.get()


def _bind(context: aio.ServicerContext[Any, Any]) -> str:
    rid = ""
    for key, value in context.invocation_metadata() or ():
        if (
            key == REQUEST_ID_HEADER
            and isinstance(value, str)
            and 0 < len(value) <= _MAX_ID
            and value.isprintable()
        ):
            rid = value
            break
    rid = rid or uuid.uuid4().hex
    _request_id.set(rid)
    return rid


async def _abort(context: aio.ServicerContext[Any, Any], exc: BaseException, rid: str) -> None:
    if isinstance(exc, OmniRelayError):
        error = exc
    else:
        log.exception("unexpected error serving request %s", rid)
        error = OmniRelayError(f"internal error (request id {rid}); the server log has the details")
    status = error.to_status(rid)
    trailing = (*status.trailing_metadata, (REQUEST_ID_HEADER, rid))
    await context.abort(status.code, status.details, trailing_metadata=trailing)


Behavior = Callable[..., Any]


class InFlight:
    """Counts omnirelay calls being served, so shutdown can say what it is waiting for."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0

    def enter(self) -> None:
        self.count += 1

    def leave(self) -> None:
        self.count -= 1


def _wrap_unary(behavior: Behavior, in_flight: InFlight) -> Behavior:
    async def unary(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
        rid = _bind(context)
        in_flight.enter()
        try:
            return await behavior(request, context)
        except (aio.AbortError, grpc.RpcError):
            raise
        except Exception as exc:
            await _abort(context, exc, rid)
        finally:
            in_flight.leave()

    return unary


def _wrap_stream(behavior: Behavior, in_flight: InFlight) -> Behavior:
    if inspect.isasyncgenfunction(behavior):

        async def stream_gen(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            rid = _bind(context)
            in_flight.enter()
            try:
                async for item in behavior(request, context):
                    yield item
            except (aio.AbortError, grpc.RpcError):
                raise
            except Exception as exc:
                await _abort(context, exc, rid)
            finally:
                in_flight.leave()

        return stream_gen
    # Handlers that write with context.write: one await, no per-message wrapper cost.
    return _wrap_unary(behavior, in_flight)


class EdgeInterceptor(aio.ServerInterceptor):
    def __init__(self, prefix: str = "/omnirelay.") -> None:
        self._prefix = prefix
        self.in_flight = InFlight()
        self._handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        method = handler_call_details.method
        cached = self._handlers.get(method)
        if cached is not None:
            return cached
        handler = await continuation(handler_call_details)
        if handler is None or not method.startswith(self._prefix):
            return handler
        wrapped = self._wrap(handler)
        self._handlers[method] = wrapped
        return wrapped

    def _wrap(self, h: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
        des, ser = h.request_deserializer, h.response_serializer
        if h.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(h.unary_unary, self.in_flight), request_deserializer=des, response_serializer=ser
            )
        if h.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(h.unary_stream, self.in_flight),
                request_deserializer=des,
                response_serializer=ser,
            )
        return h
