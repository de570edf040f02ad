"""A bare grpc.aio server answering Complete and StreamComplete with prebuilt constant messages.

It is the floor omnirelay is measured against: the same transport, the same request parsing and the
same response sizes, with no per-call logic. Every message is built once at start-up; a call only
hands the prebuilt objects back to grpc, which serializes them.

Run: python -m bench.echo_server --port 0   (prints "echo serving on 127.0.0.1:<PORT>" when listening)
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator, Sequence

import grpc
from google.protobuf import duration_pb2

from bench.baseline import CompleteOnly, serve_until_signalled
from bench.workload import MODEL, STREAM_MAX_TOKENS, UNARY_MAX_TOKENS
from omnirelay_client.v1 import (
    completion_pb2,
    completion_pb2_grpc,
    stream_pb2,
    stream_pb2_grpc,
    types_pb2,
)

# A token about as long as the local provider's words (5.2 characters on average with the leading
# space), so that the answers are the same size as omnirelay's to within a few percent.
TOKEN: str = " word"
PROVIDER: str = "local"
DEPLOYMENT: str = "local/small"
# What the local provider counts for the benchmark prompt.
INPUT_TOKENS: int = 5
# A fixed 32-hex-digit id, the size of a generated request id.
REQUEST_ID: str = "0123456789abcdef0123456789abcdef"


def _route(latency_ns: int, first_token_ns: int) -> types_pb2.RouteFacts:
    """Route facts filled as a served, uncached call reports them (durations change varint sizes)."""
    return types_pb2.RouteFacts(
        requested_model=MODEL,
        resolved_model=MODEL,
        provider=PROVIDER,
        deployment=DEPLOYMENT,
        attempts=[
            types_pb2.Attempt(
                model=MODEL,
                provider=PROVIDER,
                deployment=DEPLOYMENT,
                outcome=types_pb2.ATTEMPT_OUTCOME_SUCCESS,
                latency=duration_pb2.Duration(nanos=latency_ns),
            )
        ],
        latency=duration_pb2.Duration(nanos=latency_ns),
        time_to_first_token=duration_pb2.Duration(nanos=first_token_ns),
        request_id=REQUEST_ID,
    )


def _usage(output_tokens: int) -> types_pb2.Usage:
    return types_pb2.Usage(input_tokens=INPUT_TOKENS, output_tokens=output_tokens)


def build_unary_response() -> completion_pb2.CompleteResponse:
    text = TOKEN * UNARY_MAX_TOKENS
    return completion_pb2.CompleteResponse(
        choices=[
            types_pb2.Choice(
                index=0,
                message=types_pb2.Message(
                    role=types_pb2.ROLE_ASSISTANT, content=[types_pb2.ContentPart(text=text)]
                ),
                finish_reason=types_pb2.FINISH_REASON_LENGTH,
            )
        ],
        usage=_usage(UNARY_MAX_TOKENS),
        route=_route(latency_ns=300_000, first_token_ns=300_000),
    )


def build_stream_events() -> tuple[stream_pb2.StreamCompleteResponse, ...]:
    event = stream_pb2.StreamCompleteResponse
    started = event(
        route_started=stream_pb2.RouteStarted(
            model=MODEL, provider=PROVIDER, deployment=DEPLOYMENT, attempt=1
        )
    )
    # One message object reused for every delta: grpc serializes each send, and the token is constant.
    delta = event(text_delta=stream_pb2.TextDelta(choice_index=0, text=TOKEN))
    finish = event(finish=stream_pb2.Finish(choice_index=0, finish_reason=types_pb2.FINISH_REASON_LENGTH))
    usage = event(usage=_usage(STREAM_MAX_TOKENS))
    done = event(done=stream_pb2.Done(route=_route(latency_ns=20_000_000, first_token_ns=600_000)))
    return (started, *([delta] * STREAM_MAX_TOKENS), finish, usage, done)


class EchoCompletion(CompleteOnly):
    def __init__(self, response: completion_pb2.CompleteResponse) -> None:
        self._response = response

    async def Complete(  # noqa: N802 (gRPC method name)
        self, request: completion_pb2.CompleteRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> completion_pb2.CompleteResponse:
        return self._response


class EchoStream(stream_pb2_grpc.StreamCompletionServiceServicer):
    def __init__(self, events: Sequence[stream_pb2.StreamCompleteResponse]) -> None:
        self._events = events

    async def StreamComplete(  # noqa: N802 (gRPC method name)
        self, request: stream_pb2.StreamCompleteRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> AsyncIterator[stream_pb2.StreamCompleteResponse]:
        for event in self._events:
            yield event


async def serve(host: str, port: int, banner: str) -> None:
    server = grpc.aio.server()
    # The generated registration functions: the same handler path as omnirelay's servicers.
    completion = EchoCompletion(build_unary_response())
    completion_pb2_grpc.add_CompletionServiceServicer_to_server(completion, server)
    stream_pb2_grpc.add_StreamCompletionServiceServicer_to_server(EchoStream(build_stream_events()), server)
    await serve_until_signalled(server, host, port, banner)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.echo_server", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    # Lets the runner's tests start an echo server that stands in for another target.
    parser.add_argument("--banner", default="echo", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.host, args.port, args.banner))
    return 0


if __name__ == "__main__":
    sys.exit(main())
