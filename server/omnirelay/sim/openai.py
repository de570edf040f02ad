"""OpenAI's Chat Completions wire format (and Azure OpenAI's) in the simulator.

Routes: ``POST /v1/chat/completions`` and ``/v1/embeddings`` (OpenAI, and every
OpenAI-compatible server, Ollama's /v1 included), and Azure's
``/openai/deployments/{deployment}/chat/completions|embeddings?api-version=…``
which wants an ``api-key`` (or Bearer) header and annotates answers with
``prompt_filter_results`` and per-choice ``content_filter_results``. The free
model listings: ``GET /v1/models`` (``list_models``, which server.py routes, as
Anthropic shares the path) and Azure's ``GET /openai/models?api-version=…``,
both ``{"object": "list", "data": [{"id", "object": "model", "created", "owned_by"}]}``.

Shapes follow the recorded traffic in the shared fixtures (openai/*, azure/*):
a stream opens with a role delta, sends one ``delta.content`` per piece (a tool
call: id and name with empty arguments, then argument fragments), a finish
chunk with ``delta: {}``, then, only when ``stream_options.include_usage`` was
asked for, a ``choices: []`` chunk with the usage (every other chunk then says
``"usage": null``), and ``data: [DONE]``. Errors are
``{"error": {"message", "type", "param", "code"}}`` with an ``x-request-id``
header; an error after the stream started is a ``data: {"error": …}`` frame.
OpenAI's content filter answers 200 with ``finish_reason: "content_filter"``;
Azure's rejects the prompt with a 400 ``code: "content_filter"``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import random
import struct
import time
from typing import Any

from aiohttp import web

from omnirelay.sim.core import (
    ClientGoneError,
    Plan,
    PromptFacts,
    Served,
    Simulator,
    count_tokens,
    drop_connection,
    error_response,
    hang,
    last_message,
    open_stream,
    pause,
    send,
)

SSE = "text/event-stream; charset=utf-8"
# Tool-call argument fragments are about this long, as OpenAI's token-sized deltas are.
_FRAGMENT = 6
_MID_STREAM = ("drop", "malformed", "stream_error")
_EMBEDDING_DIMENSIONS = 1536
_FINGERPRINT = "fp_sim0000001"

_RATE_LIMIT = (
    "Rate limit reached for {model} in organization org-********** on tokens per min (TPM): "
    "Limit 10000, Used 9348, Requested 5086. Please try again in 26.604s. "
    "Visit https://platform.openai.com/account/rate-limits to learn more."
)
_QUOTA = (
    "You exceeded your current quota, please check your plan and billing details. For more information "
    "on this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors."
)
_SERVER = (
    "The server had an error processing your request. Sorry about that! You can retry your request, or "
    "contact us through our help center at help.openai.com if you keep seeing this error. "
    "(Please include the request ID {request_id} in your email.)"
)
_OVERLOADED = (
    "That model is currently overloaded with other requests. You can retry your request, or contact us "
    "through our help center at help.openai.com if the error persists."
)
_CONTEXT = (
    "This model's maximum context length is 128000 tokens. However, your messages resulted in {tokens} "
    "tokens. Please reduce the length of the messages."
)
_NO_KEY = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header using "
    "Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field (with blank username) "
    "if you're accessing the API from your browser and are prompted for a username and password. "
    "You can obtain an API key from https://platform.openai.com/account/api-keys."
)
_STREAM_ERROR = "The server had an error while processing your request. Sorry about that!"
_AZURE_AUTH = (
    "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key "
    "for an active subscription and use a correct regional API endpoint for your resource."
)
_AZURE_DEPLOYMENT = (
    "The API deployment for this resource does not exist. If you created the deployment within the last "
    "5 minutes, please wait a moment and try again."
)
_AZURE_RATE_LIMIT = (
    "Requests to the ChatCompletions_Create Operation under Azure OpenAI API version {version} have "
    "exceeded token rate limit of your current OpenAI S0 pricing tier. Please retry after {seconds} "
    "seconds. Please go here: https://aka.ms/oai/quotaincrease if you would like to further increase "
    "the default rate limit."
)
_AZURE_FILTER = (
    "The response was filtered due to the prompt triggering Azure OpenAI's content management policy. "
    "Please modify your prompt and retry. To learn more about our content filtering policies please read "
    "our documentation: https://go.microsoft.com/fwlink/?linkid=2198766"
)
# What GET /v1/models lists: (id, created, owned_by). The simulator answers any model name;
# this is only what a probe sees.
_MODELS = (
    ("gpt-4o", 1715367049, "system"),
    ("gpt-4o-mini", 1721172741, "system"),
    ("o3-mini", 1737146383, "system"),
    ("text-embedding-3-small", 1705948997, "system"),
)
_SAFE = {"filtered": False, "severity": "safe"}
_PROMPT_FILTER = {
    "hate": _SAFE,
    "jailbreak": {"filtered": False, "detected": False},
    "self_harm": _SAFE,
    "sexual": _SAFE,
    "violence": _SAFE,
}
_OUTPUT_FILTER = {
    "hate": _SAFE,
    "protected_material_code": {"filtered": False, "detected": False},
    "protected_material_text": {"filtered": False, "detected": False},
    "self_harm": _SAFE,
    "sexual": _SAFE,
    "violence": _SAFE,
}


def routes(sim: Simulator) -> list[web.RouteDef]:
    async def chat(request: web.Request) -> web.StreamResponse:
        return await _chat(sim, request, azure=False)

    async def embeddings(request: web.Request) -> web.StreamResponse:
        return await _embeddings(sim, request, azure=False)

    async def azure_chat(request: web.Request) -> web.StreamResponse:
        return _azure_gate(request) or await _chat(sim, request, azure=True)

    async def azure_embeddings(request: web.Request) -> web.StreamResponse:
        return _azure_gate(request) or await _embeddings(sim, request, azure=True)

    async def azure_models(request: web.Request) -> web.StreamResponse:
        return _azure_gate(request) or await _list_models(sim, request, azure=True)

    return [
        web.post("/v1/chat/completions", chat),
        web.post("/v1/embeddings", embeddings),
        web.post("/openai/deployments/{deployment}/chat/completions", azure_chat),
        web.post("/openai/deployments/{deployment}/embeddings", azure_embeddings),
        web.get("/openai/models", azure_models),
    ]


async def list_models(sim: Simulator, request: web.Request) -> web.StreamResponse:
    """``GET /v1/models`` in OpenAI's shape."""
    return await _list_models(sim, request, azure=False)


# --- requests -----------------------------------------------------------------------------------------


def _azure_gate(request: web.Request) -> web.Response | None:
    """Azure's refusals before any work: no api-version, or no credentials at all."""
    if not request.query.get("api-version"):
        return web.json_response({"error": {"code": "404", "message": "Resource not found"}}, status=404)
    if not request.headers.get("api-key") and not request.headers.get("authorization"):
        return web.json_response({"error": {"code": "401", "message": _AZURE_AUTH}}, status=401)
    return None


async def _body(request: web.Request) -> dict[str, Any] | web.Response:
    try:
        body = await request.json()
    except ValueError:
        return _invalid(
            "We could not parse the JSON body of your request. (HINT: This likely means you aren't using "
            "your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was "
            "not valid JSON.)"
        )
    if not isinstance(body, dict):
        return _invalid("Invalid type for request body: expected an object.")
    return body


def _facts(body: dict[str, Any], model: str, stream: bool, header: str) -> PromptFacts:
    tools = tuple(
        str((t.get("function") or {}).get("name", "")) for t in body.get("tools") or () if isinstance(t, dict)
    )
    choice = body.get("tool_choice")
    forced = None
    if choice == "none":
        tools = ()
    elif tools and choice == "required":
        forced = tools[0]
    elif tools and isinstance(choice, dict):
        forced = str((choice.get("function") or {}).get("name", "")) or None
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    stop = body.get("stop") or ()
    fmt = body.get("response_format") or {}
    last_role, last_text = last_message(body)
    return PromptFacts(
        model=model,
        prompt=_prompt(body),
        max_tokens=limit if isinstance(limit, int) else None,
        stop=(stop,) if isinstance(stop, str) else tuple(stop),
        tools=tools,
        forced_tool=forced,
        json_mode=isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema"),
        stream=stream,
        options_header=header,
        last_role=last_role,
        last_message=last_text,
    )


def _prompt(body: dict[str, Any]) -> str:
    texts: list[str] = []
    for message in body.get("messages") or ():
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            texts.extend(
                str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text"
            )
        for call in message.get("tool_calls") or ():
            texts.append(str((call.get("function") or {}).get("arguments", "")))
    return "\n".join(t for t in texts if t)


# --- chat ---------------------------------------------------------------------------------------------


async def _chat(sim: Simulator, request: web.Request, azure: bool) -> web.StreamResponse:
    body = await _body(request)
    if isinstance(body, web.Response):
        return body
    model = request.match_info["deployment"] if azure else body.get("model")
    if not isinstance(model, str) or not model:
        return _invalid("you must provide a model parameter")
    stream = body.get("stream") is True
    include_usage = stream and bool((body.get("stream_options") or {}).get("include_usage"))
    plan = sim.plan(_facts(body, model, stream, request.headers.get("x-sim-options", "")))
    served = sim.record(
        "azure" if azure else "openai", plan, stream, traceparent=request.headers.get("traceparent", "")
    )
    try:
        early = await _fault(request, served, plan, stream, azure)
        if early is not None:
            return early
        if stream:
            return await _stream(request, served, plan, include_usage, azure)
        await pause(request, served, plan.ttft + plan.itl * max(0, _piece_count(plan) - 1))
        served.pieces_sent = _piece_count(plan)
        served.completed = True
        return web.json_response(_completion(plan, azure), headers=_headers(plan, azure))
    except ClientGoneError:
        return web.Response()


def _piece_count(plan: Plan) -> int:
    return len(_fragments(plan)) if plan.tool_call is not None else len(plan.pieces)


def _fragments(plan: Plan) -> list[str]:
    assert plan.tool_call is not None
    args = plan.tool_call.arguments_json
    return [args[i : i + _FRAGMENT] for i in range(0, len(args), _FRAGMENT)]


def _headers(plan: Plan, azure: bool) -> dict[str, str]:
    if azure:
        return {"x-request-id": plan.request_id, "apim-request-id": plan.request_id}
    return {"x-request-id": plan.request_id, "openai-version": "2020-10-01", "openai-processing-ms": "1"}


def _usage(plan: Plan, output_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": plan.prompt_tokens,
        "completion_tokens": output_tokens,
        "total_tokens": plan.prompt_tokens + output_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _completion(plan: Plan, azure: bool) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": plan.text, "refusal": None, "annotations": []}
    finish = plan.finish
    output = plan.completion_tokens
    if plan.fault == "filter":
        # OpenAI's content filter omits the content and says so in the finish reason.
        message["content"], finish, output = None, "content_filter", 0
    elif plan.tool_call is not None:
        call = plan.tool_call
        message["content"] = None
        message["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments_json},
            }
        ]
    choice: dict[str, Any] = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
    answer: dict[str, Any] = {
        "id": _completion_id(plan),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": plan.model,
        "choices": [choice],
        "usage": _usage(plan, output),
        "system_fingerprint": _FINGERPRINT,
    }
    if azure:
        choice["content_filter_results"] = _OUTPUT_FILTER
        answer["prompt_filter_results"] = [{"prompt_index": 0, "content_filter_results": _PROMPT_FILTER}]
    else:
        answer["service_tier"] = "default"
    return answer


def _completion_id(plan: Plan) -> str:
    return "chatcmpl-" + plan.request_id.replace("-", "")


class _Chunks:
    """The envelope every chunk of one stream shares."""

    def __init__(self, plan: Plan, include_usage: bool, azure: bool) -> None:
        self.head = {
            "id": _completion_id(plan),
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": plan.model,
            "system_fingerprint": _FINGERPRINT,
        }
        self.include_usage = include_usage
        self.azure = azure

    def choice(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        if self.azure:
            choice["content_filter_results"] = {}
        chunk: dict[str, Any] = {**self.head, "choices": [choice]}
        if self.include_usage:
            chunk["usage"] = None
        return _frame(chunk)


def _frame(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


async def _stream(
    request: web.Request, served: Served, plan: Plan, include_usage: bool, azure: bool
) -> web.StreamResponse:
    response = await open_stream(request, served, SSE, {"cache-control": "no-cache", **_headers(plan, azure)})
    chunks = _Chunks(plan, include_usage, azure)
    try:
        await pause(request, served, plan.ttft)
        if azure:
            # Azure's first frame: the prompt annotations, an empty id and no choices.
            prompt = [{"prompt_index": 0, "content_filter_results": _PROMPT_FILTER}]
            first = {"id": "", "object": "", "created": 0, "model": "", "prompt_filter_results": prompt}
            await send(request, response, served, _frame({**first, "choices": []}))
        finish = plan.finish
        if plan.fault == "filter":
            await send(request, response, served, chunks.choice({"role": "assistant", "content": ""}))
            finish = "content_filter"
        elif plan.tool_call is not None:
            call = plan.tool_call
            opening = {
                "index": 0,
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": ""},
            }
            role = {"role": "assistant", "content": None, "tool_calls": [opening], "refusal": None}
            await send(request, response, served, chunks.choice(role))
            fragments = [
                {"tool_calls": [{"index": 0, "function": {"arguments": f}}]} for f in _fragments(plan)
            ]
            if not await _pieces(request, response, served, plan, chunks, fragments):
                return response
        else:
            await send(
                request,
                response,
                served,
                chunks.choice({"role": "assistant", "content": "", "refusal": None}),
            )
            if not await _pieces(
                request, response, served, plan, chunks, [{"content": p} for p in plan.pieces]
            ):
                return response
        await send(request, response, served, chunks.choice({}, finish))
        if azure:
            await send(request, response, served, _frame(_annotation(chunks)))
        if include_usage:
            output = 0 if plan.fault == "filter" else plan.completion_tokens
            await send(
                request,
                response,
                served,
                _frame({**chunks.head, "choices": [], "usage": _usage(plan, output)}),
            )
        await send(request, response, served, b"data: [DONE]\n\n")
        await response.write_eof()
        served.completed = True
    except ClientGoneError:
        pass
    return response


def _annotation(chunks: _Chunks) -> dict[str, Any]:
    """Azure's output annotation frame: no delta, empty id, after the finish."""
    choice = {"index": 0, "finish_reason": None, "content_filter_results": _OUTPUT_FILTER}
    return {"id": "", "object": "", "created": 0, "model": "", "choices": [choice]}


async def _pieces(
    request: web.Request,
    response: web.StreamResponse,
    served: Served,
    plan: Plan,
    chunks: _Chunks,
    deltas: list[dict[str, Any]],
) -> bool:
    """One delta per piece; False when a mid-stream fault ended the stream."""
    for i, delta in enumerate(deltas):
        if i == plan.after and plan.fault in _MID_STREAM:
            await _break(request, response, served, chunks)
            return False
        if i:
            await pause(request, served, plan.itl)
        await send(request, response, served, chunks.choice(delta))
        served.pieces_sent += 1
    if plan.fault in _MID_STREAM:
        # Fewer pieces than ``after``: the failure comes once they are all out.
        await _break(request, response, served, chunks)
        return False
    return True


async def _break(request: web.Request, response: web.StreamResponse, served: Served, chunks: _Chunks) -> None:
    """The stream's failure: a cut connection, a frame that is not JSON, or an in-stream error."""
    fault = served.fault
    if fault == "drop":
        drop_connection(request, served)
        return
    if fault == "stream_error":
        error = {"error": {"message": _STREAM_ERROR, "type": "server_error", "param": None, "code": None}}
        await send(request, response, served, _frame(error))
    else:
        head = json.dumps(chunks.head, separators=(",", ":"))[:-1]
        await send(request, response, served, b"data: " + head.encode() + b',"choices":[{"index":0,"del\n\n')
    # Like OpenAI after an error: the body ends without [DONE].
    await response.write_eof()


# --- faults -------------------------------------------------------------------------------------------


async def _fault(
    request: web.Request, served: Served, plan: Plan, stream: bool, azure: bool
) -> web.StreamResponse | None:
    """The answer a fault gives before any token, or None to go on (stream faults act mid-stream)."""
    fault = plan.fault
    if not fault or (fault == "filter" and not azure) or (stream and fault in _MID_STREAM):
        return None
    await pause(request, served, plan.ttft)
    if fault == "hang":
        return await hang(request, served)
    if fault == "drop":
        drop_connection(request, served)
        return web.Response()
    if fault == "malformed":
        body = b'{"id":"' + _completion_id(plan).encode() + b'","object":"chat.completion","choices":[{"ind'
        return web.Response(
            status=200, body=body, content_type="application/json", headers=_headers(plan, azure)
        )
    status, error = _error_for(request, plan, azure)
    return error_response(status, {"error": error}, plan, _headers(plan, azure))


def _openai_error(message: str, kind: str, code: str | None, param: str | None = None) -> dict[str, Any]:
    return {"message": message, "type": kind, "param": param, "code": code}


def _error_for(request: web.Request, plan: Plan, azure: bool) -> tuple[int, dict[str, Any]]:
    fault = plan.fault
    if azure and fault in ("401", "404", "429", "filter"):
        return _azure_error(request, plan)
    if fault == "401":
        key = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not key:
            return 401, _openai_error(_NO_KEY, "invalid_request_error", None)
        # OpenAI echoes the key masked: its first 8 and last 4 characters.
        masked = key[:8] + "*" * max(0, len(key) - 12) + key[-4:]
        message = (
            f"Incorrect API key provided: {masked}. You can find your API key at "
            "https://platform.openai.com/account/api-keys."
        )
        return 401, _openai_error(message, "invalid_request_error", "invalid_api_key")
    if fault == "403":
        message = "Country, region, or territory not supported"
        return 403, _openai_error(message, "request_forbidden", "unsupported_country_region_territory")
    if fault == "404":
        message = f"The model `{plan.model}` does not exist or you do not have access to it."
        return 404, _openai_error(message, "invalid_request_error", "model_not_found")
    if fault == "429":
        message = _RATE_LIMIT.format(model=plan.model)
        return 429, _openai_error(message, "tokens", "rate_limit_exceeded")
    if fault == "quota":
        return 429, _openai_error(_QUOTA, "insufficient_quota", "insufficient_quota")
    if fault == "500":
        return 500, _openai_error(_SERVER.format(request_id=plan.request_id), "server_error", None)
    if fault in ("503", "529"):
        return 503, _openai_error(_OVERLOADED, "server_error", None)
    if fault == "context":
        message = _CONTEXT.format(tokens=128_000 + plan.prompt_tokens)
        return 400, _openai_error(message, "invalid_request_error", "context_length_exceeded", "messages")
    message = "Unsupported value: 'messages[0].role' does not support 'system' with this model."
    return 400, _openai_error(message, "invalid_request_error", "unsupported_value", "messages[0].role")


def _azure_error(request: web.Request, plan: Plan) -> tuple[int, dict[str, Any]]:
    fault = plan.fault
    if fault == "401":
        return 401, {"code": "401", "message": _AZURE_AUTH}
    if fault == "404":
        return 404, {"code": "DeploymentNotFound", "message": _AZURE_DEPLOYMENT}
    if fault == "429":
        seconds = f"{plan.retry_after:g}" if plan.retry_after is not None else "6"
        version = request.query.get("api-version", "")
        return 429, {"code": "429", "message": _AZURE_RATE_LIMIT.format(version=version, seconds=seconds)}
    unsafe = {"filtered": True, "severity": "high"}
    result = {
        "hate": unsafe,
        "self_harm": unsafe,
        "sexual": _SAFE,
        "violence": {"filtered": True, "severity": "medium"},
    }
    error = {
        "message": _AZURE_FILTER,
        "type": None,
        "param": "prompt",
        "code": "content_filter",
        "status": 400,
        "innererror": {"code": "ResponsibleAIPolicyViolation", "content_filter_result": result},
    }
    return 400, error


def _invalid(message: str) -> web.Response:
    error = _openai_error(message, "invalid_request_error", None)
    return web.json_response({"error": error}, status=400)


# --- embeddings ---------------------------------------------------------------------------------------


async def _embeddings(sim: Simulator, request: web.Request, azure: bool) -> web.StreamResponse:
    body = await _body(request)
    if isinstance(body, web.Response):
        return body
    model = request.match_info["deployment"] if azure else body.get("model")
    if not isinstance(model, str) or not model:
        return _invalid("you must provide a model parameter")
    raw = body.get("input")
    inputs = [raw] if isinstance(raw, str) else [str(t) for t in raw or ()]
    if not inputs:
        return _invalid("'input' : input must be a string or an array of strings")
    facts = PromptFacts(
        model=model, prompt="\n".join(inputs), options_header=request.headers.get("x-sim-options", "")
    )
    plan = sim.plan(facts)
    served = sim.record(
        "azure" if azure else "openai", plan, False, traceparent=request.headers.get("traceparent", "")
    )
    try:
        if plan.fault in ("stream_error", "filter"):
            pass  # nothing streams, nothing is filtered: answer normally
        elif plan.fault:
            early = await _fault(request, served, plan, False, azure)
            if early is not None:
                return early
        await pause(request, served, plan.ttft)
    except ClientGoneError:
        return web.Response()
    dimensions = body.get("dimensions")
    dims = dimensions if isinstance(dimensions, int) and dimensions > 0 else _EMBEDDING_DIMENSIONS
    as_base64 = body.get("encoding_format") == "base64"
    data = [
        {"object": "embedding", "index": i, "embedding": _vector(plan.model, text, dims, as_base64)}
        for i, text in enumerate(inputs)
    ]
    tokens = sum(count_tokens(t) for t in inputs)
    served.completed = True
    answer = {
        "object": "list",
        "data": data,
        "model": plan.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    return web.json_response(answer, headers=_headers(plan, azure))


# --- model listing ------------------------------------------------------------------------------------


async def _list_models(sim: Simulator, request: web.Request, azure: bool) -> web.StreamResponse:
    """The model list: free, recorded as a listing, failing only as the header's fault says."""
    plan, served = sim.listing("azure" if azure else "openai", request.headers.get("x-sim-options", ""))
    try:
        early = await _fault(request, served, plan, False, azure)
        if early is not None:
            return early
        await pause(request, served, plan.ttft)
    except ClientGoneError:
        return web.Response()
    served.completed = True
    data = [{"id": i, "object": "model", "created": c, "owned_by": o} for i, c, o in _MODELS]
    return web.json_response({"object": "list", "data": data}, headers=_headers(plan, azure))


def _vector(model: str, text: str, dims: int, as_base64: bool) -> list[float] | str:
    """A unit vector fixed by (model, text): the same input always embeds the same way."""
    digest = hashlib.blake2b(f"{model}\x1f{text}".encode(), digest_size=8).digest()
    rng = random.Random(int.from_bytes(digest))
    raw = [rng.gauss(0.0, 1.0) for _ in range(dims)]
    norm = math.sqrt(sum(v * v for v in raw)) or 1.0
    values = [round(v / norm, 8) for v in raw]
    if as_base64:
        return base64.b64encode(struct.pack(f"<{dims}f", *values)).decode()
    return values
