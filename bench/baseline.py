"""What the bare baseline servers (echo, relay) share: they answer Complete and refuse the rest."""

from __future__ import annotations

from typing import Any

import grpc

from omnirelay_client.v1 import completion_pb2, completion_pb2_grpc

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
