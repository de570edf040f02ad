"""omnirelay.v1.StreamCompletionService: streamed completions as typed events."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

from grpc import aio

from omnirelay.domain import GatewayEvent, RouteChange, RouteStart
from omnirelay.errors import DeadlineExceededError, FieldViolation, InvalidArgumentError
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
        caller = deadline(context)
        own = self._gateway.default_deadline(domain_request.model) if caller is None else None
        events = self._gateway.stream(domain_request, caller if caller is not None else own)
        try:
            if own is None:
                await _relay(events, context)
            else:
                # The model's default deadline, for a caller that set none. It wraps the whole
                # relay (not each chunk): on expiry the pending await is cancelled, which closes
                # the gateway stream and the upstream with it. The reaper's one shared timer, not
                # a timer per stream: asyncio.timeout_at here cost 11% of streaming throughput.
                try:
                    async with self._gateway.router.reaper.bound(own):
                        await _relay(events, context)
                except TimeoutError:
                    raise DeadlineExceededError(
                        f"the stream passed the default deadline of model {domain_request.model!r} "
                        "(the caller set none); set a gRPC deadline on the call to choose your own"
                    ) from None
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
