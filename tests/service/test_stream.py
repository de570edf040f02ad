"""Streamed completions: event order, equality with unary, cancellation, deadlines."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc import aio

from omnirelay.config import Settings
from omnirelay.providers.local import LocalProvider
from omnirelay_client.v1 import completion_pb2_grpc, stream_pb2_grpc, types_pb2
from tests.conftest import StartServer, with_local
from tests.helpers import drain, request, stream_request, text


async def test_stream_events_in_order_and_text_matches_unary(channel: aio.Channel) -> None:
    streamer = stream_pb2_grpc.StreamCompletionServiceStub(channel)
    call = streamer.StreamComplete(stream_request(max_tokens=8), metadata=(("x-request-id", "s-1"),))
    events = [e async for e in call]
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds == ["route_started"] + ["text_delta"] * 8 + ["finish", "usage", "done"]
    assert events[0].route_started.model == "local-small"
    assert events[0].route_started.provider == "local"
    assert events[0].route_started.attempt == 1
    streamed = "".join(e.text_delta.text for e in events if e.HasField("text_delta"))
    unary = await completion_pb2_grpc.CompletionServiceStub(channel).Complete(request(max_tokens=8))
    assert streamed == text(unary)
    assert events[-3].finish.finish_reason == types_pb2.FINISH_REASON_LENGTH
    assert events[-2].usage.output_tokens == 8
    assert events[-2].usage.input_tokens == unary.usage.input_tokens
    done = events[-1].done.route
    assert done.request_id == "s-1"
    assert done.time_to_first_token.ToNanoseconds() > 0
    assert done.latency.ToNanoseconds() >= done.time_to_first_token.ToNanoseconds()
    metadata = dict(await call.trailing_metadata())
    assert metadata["x-omnirelay-model"] == "local-small"


async def test_stream_n_choices_and_stop(channel: aio.Channel) -> None:
    streamer = stream_pb2_grpc.StreamCompletionServiceStub(channel)
    events = [e async for e in streamer.StreamComplete(stream_request(n=2, max_tokens=5))]
    finishes = [e.finish for e in events if e.HasField("finish")]
    assert sorted(f.choice_index for f in finishes) == [0, 1]
    per_choice = [
        "".join(
            e.text_delta.text for e in events if e.HasField("text_delta") and e.text_delta.choice_index == i
        )
        for i in (0, 1)
    ]
    unary = await completion_pb2_grpc.CompletionServiceStub(channel).Complete(request(n=2, max_tokens=5))
    assert per_choice == [text(unary, 0), text(unary, 1)]

    stop = " " + per_choice[0].split()[2]
    stopped = [e async for e in streamer.StreamComplete(stream_request(max_tokens=5, stop=[stop]))]
    streamed = "".join(e.text_delta.text for e in stopped if e.HasField("text_delta"))
    assert streamed == per_choice[0][: per_choice[0].find(stop)]
    assert [e.finish.finish_reason for e in stopped if e.HasField("finish")] == [types_pb2.FINISH_REASON_STOP]


async def test_client_cancel_mid_stream_stops_generation(
    start_server: StartServer, settings: Settings
) -> None:
    app, channel = await start_server(with_local(settings, tokens_per_second=100.0))
    local = app.providers.get("local")
    assert isinstance(local, LocalProvider)
    call = stream_pb2_grpc.StreamCompletionServiceStub(channel).StreamComplete(
        stream_request(max_tokens=10_000)
    )
    deltas = 0
    async for event in call:
        if event.HasField("text_delta"):
            deltas += 1
            if deltas == 3:
                break
    call.cancel()
    # The server learns of the cancel over the network; give it a moment, then nothing may move.
    for _ in range(100):
        if local.active_streams == 0:
            break
        await asyncio.sleep(0.01)
    assert local.active_streams == 0
    generated = local.tokens_generated
    await asyncio.sleep(0.2)  # 20 more tokens would have been made at 100/s
    assert local.tokens_generated == generated
    assert generated < 20


async def test_deadline_exceeded_mid_stream(start_server: StartServer, settings: Settings) -> None:
    app, channel = await start_server(with_local(settings, tokens_per_second=50.0))
    call = stream_pb2_grpc.StreamCompletionServiceStub(channel).StreamComplete(
        stream_request(max_tokens=1000), timeout=0.3
    )
    received: list[object] = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await drain(call, received)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert 3 < len(received) < 100
    local = app.providers.get("local")
    assert isinstance(local, LocalProvider)
    await asyncio.sleep(0.05)
    assert local.active_streams == 0


async def test_deadline_exceeded_unary(start_server: StartServer, settings: Settings) -> None:
    _, channel = await start_server(with_local(settings, ttft_ms=2000.0))
    stub = completion_pb2_grpc.CompletionServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Complete(request(max_tokens=3), timeout=0.2)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
