"""omnirelay.v1.StreamCompletionService: streamed completions as typed events."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

from grpc import aio

from omnirelay.domain import GatewayEvent, RouteChange, RouteStart
from omnirelay.gateway import Gateway
from omnirelay.interceptors.edge import current_request_id
from omnirelay.services import convert, render
from omnirelay.services.context import deadline, route_metadata
from omnirelay_client.v1 import stream_pb2, stream_pb2_grpc


class StreamCompletionService(stream_pb2_grpc.StreamCompletionServiceServicer):
    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway

    async def StreamComplete(  # type: ignore[override]  # noqa: N802 (writes with context.write)
        self, request: stream_pb2.StreamCompleteRequest, context: aio.ServicerContext[Any, Any]
    ) -> None:
        domain_request = convert.stream_completion_request(request.request, current_request_id())
        caller = deadline(context)
        own = self._gateway.default_deadline(domain_request.model) if caller is None else None
        events = self._gateway.stream(domain_request, caller if caller is not None else own)
        try:
            await self._gateway.within_default_deadline(domain_request.model, own, _relay(events, context))
        finally:
            # A client cancel lands here as CancelledError; closing the gateway stream
            # closes the provider's, which stops generation upstream at once.
            await events.aclose()


# A tuple, not a union: isinstance is faster with it, and this runs once per event.
_ROUTE_EVENTS = (RouteStart, RouteChange)


async def _relay(events: AsyncGenerator[GatewayEvent, None], context: aio.ServicerContext[Any, Any]) -> None:
    write = context.write
    event_to_proto = render.stream_event
    async for event in events:
        if isinstance(event, _ROUTE_EVENTS):
            # The trailers name whoever finishes the stream: after a continuation, the new route.
            context.set_trailing_metadata(route_metadata(event.route))
        await write(event_to_proto(event))
