"""Request builders and status readers shared by the tests."""

from __future__ import annotations

from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

from omnirelay_client.v1 import completion_pb2, stream_pb2, types_pb2


def user(text: str) -> types_pb2.Message:
    return types_pb2.Message(role=types_pb2.ROLE_USER, content=[types_pb2.ContentPart(text=text)])


def request(
    text: str = "hello gateway", model: str = "local-small", **sampling: Any
) -> completion_pb2.CompleteRequest:
    return completion_pb2.CompleteRequest(
        model=model, messages=[user(text)], sampling=types_pb2.SamplingParams(**sampling)
    )


def stream_request(
    text: str = "hello gateway", model: str = "local-small", **sampling: Any
) -> stream_pb2.StreamCompleteRequest:
    return stream_pb2.StreamCompleteRequest(request=request(text, model, **sampling))


def text(response: completion_pb2.CompleteResponse, index: int = 0) -> str:
    return "".join(p.text for p in response.choices[index].message.content)


def rich_status(error: grpc.aio.AioRpcError) -> status_pb2.Status:
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            return status_pb2.Status.FromString(value)
    raise AssertionError(f"no rich status details in {error!r}")


def field_violations(error: grpc.aio.AioRpcError) -> dict[str, str]:
    for detail in rich_status(error).details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            return {v.field: v.description for v in bad.field_violations}
    raise AssertionError("no BadRequest detail")


def error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    for detail in rich_status(error).details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    raise AssertionError("no ErrorInfo detail")


async def drain(call: Any, into: list[object] | None = None) -> None:
    """Read a server stream to its end (with read(), which mixes with earlier reads)."""
    while (event := await call.read()) is not grpc.aio.EOF:
        if into is not None:
            into.append(event)


async def event_kinds(call: Any) -> list[str]:
    """The oneof names of a stream's remaining events."""
    events: list[object] = []
    await drain(call, events)
    return [str(e.WhichOneof("event")) for e in events if isinstance(e, stream_pb2.StreamCompleteResponse)]


async def first_kind(call: Any) -> str | None:
    event = await call.read()
    assert isinstance(event, stream_pb2.StreamCompleteResponse)
    return event.WhichOneof("event")
