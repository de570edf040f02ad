"""omnirelay.v1.StreamCompletionService: streamed completions as typed events."""

from __future__ import annotations

from typing import Any

from grpc import aio

from omnirelay.domain import RouteStart
from omnirelay.errors import FieldViolation, InvalidArgumentError
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
        try:
            domain_request = convert.completion_request(request.request, current_request_id())
        except InvalidArgumentError as exc:
            raise InvalidArgumentError(
                [FieldViolation(f"request.{v.field}", v.description) for v in exc.violations]
            ) from None
        events = self._gateway.stream(domain_request, deadline(context))
        write = context.write
        event_to_proto = render.stream_event
        try:
            async for event in events:
                if isinstance(event, RouteStart):
                    context.set_trailing_metadata(route_metadata(event.route))
                await write(event_to_proto(event))
        finally:
            # A client cancel lands here as CancelledError; closing the gateway stream
            # closes the provider's, which stops generation upstream at once.
            await events.aclose()
