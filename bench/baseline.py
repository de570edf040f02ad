"""What the bench's own servers (echo, relay, OTLP sink) share: Complete only, and the serve loop."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from typing import Any, Final

import grpc

from omnirelay import helper_threads
from omnirelay_client.v1 import completion_pb2, completion_pb2_grpc

# How the bench's own servers run their helper threads (omnirelay's ``server.helper_threads``
# choices), so that one of them (`echo-poller`) can run them as omnirelay's `serve` does; unset, they
# keep the kernel's default. A name of the bench's own, not omnirelay's setting: a setting exported
# for omnirelay (`OMNIRELAY_SERVER__HELPER_THREADS=batch make bench`) must not reach the baselines.
HELPER_THREADS_ENV: Final = "BENCH_HELPER_THREADS"

Context = grpc.aio.ServicerContext[Any, Any]


class CompleteOnly(completion_pb2_grpc.CompletionServiceServicer):
    """The methods the generated servicer requires but no benchmark calls."""

    refusal = "this baseline server only answers Complete"

    async def Embed(  # noqa: N802 (gRPC method name)
        self, request: completion_pb2.EmbedRequest, context: Context
    ) -> completion_pb2.EmbedResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, self.refusal)

    async def CountTokens(  # noqa: N802 (gRPC method name)
        self, request: completion_pb2.CountTokensRequest, context: Context
    ) -> completion_pb2.CountTokensResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, self.refusal)

    async def ListModels(  # noqa: N802 (gRPC method name)
        self, request: completion_pb2.ListModelsRequest, context: Context
    ) -> completion_pb2.ListModelsResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, self.refusal)


async def serve_until_signalled(server: grpc.aio.Server, host: str, port: int, banner: str) -> None:
    """Serve on host:port (0 picks one), print the line the runner waits for, stop on SIGTERM/SIGINT."""
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    helper_threads.apply(os.environ.get(HELPER_THREADS_ENV, "normal"), threading.get_native_id())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"{banner} serving on {host}:{bound}", flush=True)
    await stop.wait()
    await server.stop(grace=1.0)
