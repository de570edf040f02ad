"""A bare grpc.aio relay: Complete and StreamComplete forwarded to an OpenAI Chat Completions API.

It is the floor omnirelay is measured against in front of the provider simulator: the same gRPC
services and message shapes, the same HTTP client (httpx with kept-alive connections; one pooled
httpx.AsyncClient, as a user would write it, where omnirelay's provider transport splits its pool
into lanes of one client each), and nothing else. No routing, no interceptors, no
validation, no retries: the request becomes the OpenAI JSON body, the answer's JSON becomes a
CompleteResponse; a stream's SSE lines become route_started, one text delta per content chunk,
finish, usage and done, as omnirelay sends them.

Run: python -m bench.relay_server --upstream http://127.0.0.1:8089/v1 --port 0
(prints "relay serving on 127.0.0.1:<PORT>" when listening)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any, Final

import grpc
import httpx
from google.protobuf import duration_pb2

from bench.baseline import CompleteOnly, serve_until_signalled
from bench.limits import raise_open_files
from bench.workload import SIM_API_KEY
from omnirelay_client.v1 import (
    completion_pb2,
    completion_pb2_grpc,
    stream_pb2,
    stream_pb2_grpc,
    types_pb2,
)

PATH: Final = "/chat/completions"
# omnirelay's provider defaults (HttpProviderSettings): pool size and timeouts.
CONNECTIONS: Final = 100
TIMEOUT: Final = httpx.Timeout(connect=5.0, read=120.0, write=120.0, pool=5.0)
# A fixed 32-hex-digit id, the size of omnirelay's request ids: making one is gateway work.
REQUEST_ID: Final = "0123456789abcdef0123456789abcdef"
ROLES: Final = {
    types_pb2.ROLE_SYSTEM: "system",
    types_pb2.ROLE_USER: "user",
    types_pb2.ROLE_ASSISTANT: "assistant",
}
FINISH: Final = {
    "stop": types_pb2.FINISH_REASON_STOP,
    "length": types_pb2.FINISH_REASON_LENGTH,
    "tool_calls": types_pb2.FINISH_REASON_TOOL_CALLS,
    "content_filter": types_pb2.FINISH_REASON_CONTENT_FILTER,
}
DONE: Final = "[DONE]"


def openai_body(request: completion_pb2.CompleteRequest, stream: bool) -> bytes:
    """The Chat Completions body omnirelay's OpenAI adapter sends for the benchmark's requests."""
    # "provider/model": the upstream model is the part after the provider's name.
    body: dict[str, Any] = {
        "model": request.model.partition("/")[2] or request.model,
        "messages": [
            {"role": ROLES.get(m.role, "user"), "content": "".join(p.text for p in m.content)}
            for m in request.messages
        ],
    }
    if request.sampling.HasField("max_tokens"):
        body["max_completion_tokens"] = request.sampling.max_tokens
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return json.dumps(body, separators=(",", ":")).encode()


def _duration(seconds: float) -> duration_pb2.Duration:
    whole = int(seconds)
    return duration_pb2.Duration(seconds=whole, nanos=int((seconds - whole) * 1e9))


def _route(model: str, latency_s: float, first_token_s: float) -> types_pb2.RouteFacts:
    """Route facts as omnirelay fills them for a `provider/model` call that succeeded at once."""
    provider = model.partition("/")[0]
    latency = _duration(latency_s)
    return types_pb2.RouteFacts(
        requested_model=model,
        resolved_model=model,
        provider=provider,
        deployment=model,
        attempts=[
            types_pb2.Attempt(
                model=model,
                provider=provider,
                deployment=model,
                outcome=types_pb2.ATTEMPT_OUTCOME_SUCCESS,
                latency=latency,
            )
        ],
        latency=latency,
        time_to_first_token=_duration(first_token_s),
        request_id=REQUEST_ID,
    )


def _usage(raw: Any) -> types_pb2.Usage:
    return types_pb2.Usage(
        input_tokens=int(raw.get("prompt_tokens", 0)), output_tokens=int(raw.get("completion_tokens", 0))
    )


async def _fail(context: grpc.aio.ServicerContext[Any, Any], response: httpx.Response, body: bytes) -> None:
    text = body[:200].decode(errors="replace")
    await context.abort(grpc.StatusCode.UNAVAILABLE, f"upstream HTTP {response.status_code}: {text}")


class RelayCompletion(CompleteOnly):
    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client

    async def Complete(  # noqa: N802 (gRPC method name)
        self, request: completion_pb2.CompleteRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> completion_pb2.CompleteResponse:
        t0 = time.perf_counter()
        response = await self._client.post(PATH, content=openai_body(request, stream=False))
        if response.status_code != 200:
            await _fail(context, response, response.content)
        data = json.loads(response.content)
        latency = time.perf_counter() - t0
        choices = [
            types_pb2.Choice(
                index=int(c.get("index", 0)),
                message=types_pb2.Message(
                    role=types_pb2.ROLE_ASSISTANT,
                    content=[types_pb2.ContentPart(text=text)]
                    if (text := c["message"].get("content"))
                    else [],
                ),
                finish_reason=FINISH.get(c.get("finish_reason"), types_pb2.FINISH_REASON_UNSPECIFIED),
            )
            for c in data["choices"]
        ]
        return completion_pb2.CompleteResponse(
            choices=choices,
            usage=_usage(data.get("usage") or {}),
            route=_route(request.model, latency, latency),
        )


class RelayStream(stream_pb2_grpc.StreamCompletionServiceServicer):
    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client

    async def StreamComplete(  # noqa: N802 (gRPC method name)
        self, request: stream_pb2.StreamCompleteRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[stream_pb2.StreamCompleteResponse]:
        event = stream_pb2.StreamCompleteResponse
        call = request.request
        model = call.model
        provider = model.partition("/")[0]
        t0 = time.perf_counter()
        first_token = 0.0
        # Sent before the upstream answers, as omnirelay does once it has picked the route.
        yield event(
            route_started=stream_pb2.RouteStarted(model=model, provider=provider, deployment=model, attempt=1)
        )
        body = openai_body(call, stream=True)
        async with self._client.stream("POST", PATH, content=body) as response:
            if response.status_code != 200:
                await _fail(context, response, await response.aread())
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                payload = line[5:].strip()
                if payload == DONE:
                    break
                chunk = json.loads(payload)
                for choice in chunk.get("choices") or ():
                    index = int(choice.get("index", 0))
                    if text := (choice.get("delta") or {}).get("content"):
                        if not first_token:
                            first_token = time.perf_counter() - t0
                        yield event(text_delta=stream_pb2.TextDelta(choice_index=index, text=text))
                    if reason := choice.get("finish_reason"):
                        finish = FINISH.get(reason, types_pb2.FINISH_REASON_UNSPECIFIED)
                        yield event(finish=stream_pb2.Finish(choice_index=index, finish_reason=finish))
                if usage := chunk.get("usage"):
                    yield event(usage=_usage(usage))
        route = _route(model, time.perf_counter() - t0, first_token)
        yield event(done=stream_pb2.Done(route=route))


async def serve(host: str, port: int, upstream: str, connections: int) -> None:
    raise_open_files()
    # One client for every call, as omnirelay has one per provider: connections are kept alive.
    client = httpx.AsyncClient(
        base_url=upstream,
        headers={"authorization": f"Bearer {SIM_API_KEY}", "content-type": "application/json"},
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
        timeout=TIMEOUT,
    )
    server = grpc.aio.server()
    completion_pb2_grpc.add_CompletionServiceServicer_to_server(RelayCompletion(client), server)
    stream_pb2_grpc.add_StreamCompletionServiceServicer_to_server(RelayStream(client), server)
    await serve_until_signalled(server, host, port, "relay")
    await client.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.relay_server", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--upstream", required=True, help="the API's base URL: http://HOST:PORT/v1")
    parser.add_argument(
        "--connections", type=int, default=CONNECTIONS, help=f"the client's pool size (default {CONNECTIONS})"
    )
    args = parser.parse_args(argv)
    asyncio.run(serve(args.host, args.port, args.upstream, args.connections))
    return 0


if __name__ == "__main__":
    sys.exit(main())
