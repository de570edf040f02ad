"""omnirelay.v1.CompletionService: unary completions, embeddings, token counts, models."""

from __future__ import annotations

from typing import Any

from grpc import aio

from omnirelay.errors import FieldViolation, InvalidArgumentError
from omnirelay.gateway import Gateway
from omnirelay.interceptors.edge import current_request_id
from omnirelay.services import convert, render
from omnirelay.services.context import deadline, route_metadata
from omnirelay_client.v1 import completion_pb2, completion_pb2_grpc, types_pb2

Context = aio.ServicerContext[Any, Any]
MAX_EMBED_INPUTS = 2048


class CompletionService(completion_pb2_grpc.CompletionServiceServicer):
    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway

    async def Complete(  # noqa: N802 (gRPC method name)
        self, request: completion_pb2.CompleteRequest, context: Context
    ) -> completion_pb2.CompleteResponse:
        domain_request = convert.completion_request(request, current_request_id())
        completion = await self._gateway.complete(domain_request, deadline(context))
        context.set_trailing_metadata(route_metadata(completion.route))
        return render.complete_response(completion)

    async def Embed(  # noqa: N802
        self, request: completion_pb2.EmbedRequest, context: Context
    ) -> completion_pb2.EmbedResponse:
        bad = []
        if not request.inputs:
            bad.append(FieldViolation("inputs", "must contain at least one text"))
        if len(request.inputs) > MAX_EMBED_INPUTS:
            bad.append(FieldViolation("inputs", f"at most {MAX_EMBED_INPUTS} texts per call"))
        if request.dimensions < 0:
            bad.append(FieldViolation("dimensions", "must not be negative"))
        if bad:
            raise InvalidArgumentError(bad)
        model, result = await self._gateway.embed(request.model, list(request.inputs), request.dimensions)
        return completion_pb2.EmbedResponse(
            embeddings=[completion_pb2.Embedding(index=i, values=v) for i, v in enumerate(result.vectors)],
            usage=render.usage(result.usage),
            route=types_pb2.RouteFacts(
                requested_model=request.model, resolved_model=model, request_id=current_request_id()
            ),
        )

    async def CountTokens(  # noqa: N802
        self, request: completion_pb2.CountTokensRequest, context: Context
    ) -> completion_pb2.CountTokensResponse:
        bad: list[FieldViolation] = []
        messages = convert.messages_from(request.messages, bad)
        if bad:
            raise InvalidArgumentError(bad)
        model, tokens, estimated = await self._gateway.count_tokens(request.model, messages)
        return completion_pb2.CountTokensResponse(
            input_tokens=tokens, resolved_model=model, estimated=estimated
        )

    async def ListModels(  # noqa: N802
        self, request: completion_pb2.ListModelsRequest, context: Context
    ) -> completion_pb2.ListModelsResponse:
        wanted = set(request.capabilities)
        models = [
            info
            for info in (
                render.model_info(m, [t.deployment for t in entry.targets] if entry is not None else None)
                for m, entry in self._gateway.catalog.models(request.include_unavailable)
            )
            if wanted <= set(info.capabilities)
            and (not request.provider or request.provider in info.providers)
        ]
        return completion_pb2.ListModelsResponse(models=models)
