"""Ollama's native wire format: ``POST /api/chat`` (JSON or NDJSON stream) and ``POST /api/embed``.

Shapes follow Ollama 0.13: every answer carries ``model``, ``created_at`` and,
when done, ``done_reason`` with token counts and nanosecond durations; a stream
is ``application/x-ndjson``, one object per line, ending with ``"done": true``;
tool calls arrive whole in one line (with the ``id`` and ``function.index``
newer servers add). Errors are ``{"error": "<text>"}``; a failure after the
stream started is one more line ``{"error": ...}`` under HTTP 200.

Ollama has no ``tool_choice``: a tool call is planned only when the model name
asks for one (``+tool=NAME``), standing in for a model that decides to call.

The free model listing is ``GET /api/tags``: ``{"models": [{"name", "model",
"modified_at", "size", "digest", "details"}]}``, the models pulled locally.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from datetime import UTC, datetime
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
    open_stream,
    pause,
    send,
)

FORMAT = "ollama"
NDJSON = "application/x-ndjson"
EMBEDDING_DIMENSIONS = 384
# Faults a stream shows after ``after`` pieces rather than instead of the answer.
_STREAM_FAULTS = frozenset({"drop", "malformed", "stream_error"})
_RUNNER_ERROR = "an error was encountered while running the model: unexpected EOF"

# Fault bodies as Ollama words them (shared fixtures ollama/error_*; 503 is its queue-full text).
_FAULTS: dict[str, tuple[int, str]] = {
    "400": (400, 'think value "low" is not supported for this model'),
    "401": (401, "unauthorized"),
    "403": (403, "unauthorized"),
    "429": (429, "too many requests, please retry later"),
    "500": (500, "the model failed to generate a response"),
    "503": (503, "server busy, please try again.  maximum pending requests exceeded"),
    "529": (503, "server busy, please try again.  maximum pending requests exceeded"),
    "context": (400, "the input length exceeds the context length"),
    "quota": (429, "quota exceeded"),
    "filter": (400, "content filtered: the request was blocked by a safety policy"),
    "stream_error": (500, _RUNNER_ERROR),
}

# What GET /api/tags lists: (name, family, parameter size, quantization, bytes on disk).
_MODELS = (
    ("llama3.1:8b", "llama", "8.0B", "Q4_K_M", 4_920_753_328),
    ("llama3.2:latest", "llama", "3.2B", "Q4_K_M", 2_019_393_189),
    ("nomic-embed-text:latest", "nomic-bert", "137M", "F16", 274_302_450),
)
_MODIFIED_AT = "2025-06-01T12:00:00.000000000Z"


def routes(sim: Simulator) -> list[web.RouteDef]:
    async def chat(request: web.Request) -> web.StreamResponse:
        return await _chat(sim, request)

    async def embed(request: web.Request) -> web.StreamResponse:
        return await _embed(sim, request)

    async def tags(request: web.Request) -> web.StreamResponse:
        return await _tags(sim, request)

    return [web.post("/api/chat", chat), web.post("/api/embed", embed), web.get("/api/tags", tags)]


async def _tags(sim: Simulator, request: web.Request) -> web.StreamResponse:
    """The local models: free, recorded as a listing, failing only as the header's fault says."""
    plan, served = sim.listing(FORMAT, request.headers.get("x-sim-options", ""))
    try:
        early = await _fault(request, served, plan, False)
        if early is not None:
            return early
        await pause(request, served, plan.ttft)
    except ClientGoneError:
        return web.Response()
    served.completed = True
    return web.json_response({"models": [_tag(*model) for model in _MODELS]})


def _tag(name: str, family: str, size: str, quantization: str, disk: int) -> dict[str, Any]:
    details = {
        "parent_model": "",
        "format": "gguf",
        "family": family,
        "families": [family],
        "parameter_size": size,
        "quantization_level": quantization,
    }
    return {
        "name": name,
        "model": name,
        "modified_at": _MODIFIED_AT,
        "size": disk,
        # A stable stand-in for the manifest digest: the same name always has the same one.
        "digest": hashlib.sha256(name.encode()).hexdigest(),
        "details": details,
    }


async def _chat(sim: Simulator, request: web.Request) -> web.StreamResponse:
    body = await _body(request)
    if isinstance(body, web.Response):
        return body
    started = time.monotonic_ns()
    stream = body.get("stream", True) is not False
    plan = sim.plan(_facts(body, stream, request.headers.get("x-sim-options", "")))
    served = sim.record(FORMAT, plan, stream, traceparent=request.headers.get("traceparent", ""))
    try:
        early = await _fault(request, served, plan, stream)
        if early is not None:
            return early
        if stream:
            return await _stream(request, served, plan, started)
        await pause(request, served, plan.ttft)
        served.pieces_sent = len(plan.pieces)
        served.completed = True
        return web.json_response(_final(plan, started, _message(plan, plan.text)))
    except ClientGoneError:
        return web.Response()


async def _stream(request: web.Request, served: Served, plan: Plan, started: int) -> web.StreamResponse:
    response = await open_stream(request, served, NDJSON)
    try:
        await pause(request, served, plan.ttft)
        pieces = () if plan.tool_call is not None else plan.pieces
        failing = plan.fault in _STREAM_FAULTS
        for i, piece in enumerate(pieces):
            if failing and i == plan.after:
                break
            if i:
                await pause(request, served, plan.itl)
            await send(
                request, response, served, _line(_chunk(plan, {"role": "assistant", "content": piece}))
            )
            served.pieces_sent += 1
        if failing:
            await _break(request, response, served, plan)
            return response
        if plan.tool_call is not None:
            await send(request, response, served, _line(_chunk(plan, _message(plan, ""))))
            served.pieces_sent = 1
        done = _final(plan, started, {"role": "assistant", "content": ""})
        await send(request, response, served, _line(done))
        await response.write_eof()
        served.completed = True
    except ClientGoneError:
        pass
    return response


async def _break(request: web.Request, response: web.StreamResponse, served: Served, plan: Plan) -> None:
    """The stream's failure after ``after`` pieces: a cut connection, a non-JSON line, or an error line."""
    if plan.fault == "drop":
        drop_connection(request, served)
        return
    line = b'{"model":"' + plan.model.encode() + b'","message":{\n'
    if plan.fault == "stream_error":
        line = _line({"error": _RUNNER_ERROR})
    await send(request, response, served, line)
    await response.write_eof()


async def _fault(request: web.Request, served: Served, plan: Plan, stream: bool) -> web.StreamResponse | None:
    """The answer a fault gives before any token, or None to go on (stream faults act mid-stream)."""
    fault = plan.fault
    if not fault or (stream and fault in _STREAM_FAULTS):
        return None
    await pause(request, served, plan.ttft)
    if fault == "hang":
        return await hang(request, served)
    if fault == "drop":
        drop_connection(request, served)
        return web.Response()
    if fault == "malformed":
        truncated = b'{"model":"' + plan.model.encode() + b'","message":{"rol'
        return web.Response(status=200, body=truncated, content_type="application/json")
    if fault == "404":
        return _error(404, f"model '{plan.model}' not found", plan)
    status, text = _FAULTS.get(fault, _FAULTS["400"])
    return _error(status, text, plan)


async def _embed(sim: Simulator, request: web.Request) -> web.StreamResponse:
    body = await _body(request)
    if isinstance(body, web.Response):
        return body
    started = time.monotonic_ns()
    raw = body.get("input", [])
    inputs = [raw] if isinstance(raw, str) else [str(i) for i in raw] if isinstance(raw, list) else []
    facts = PromptFacts(
        str(body["model"]), "\n".join(inputs), options_header=request.headers.get("x-sim-options", "")
    )
    plan = sim.plan(facts)
    served = sim.record(FORMAT, plan, False, traceparent=request.headers.get("traceparent", ""))
    try:
        early = await _fault(request, served, plan, False)
        if early is not None:
            return early
        dims = body.get("dimensions")
        size = dims if isinstance(dims, int) and dims > 0 else EMBEDDING_DIMENSIONS
        served.completed = True
        return web.json_response(
            {
                "model": plan.model,
                "embeddings": [_vector(plan.model, text, size) for text in inputs],
                "total_duration": time.monotonic_ns() - started,
                "load_duration": 1_000_000,
                "prompt_eval_count": sum(count_tokens(t) for t in inputs),
            }
        )
    except ClientGoneError:
        return web.Response()


async def _body(request: web.Request) -> dict[str, Any] | web.Response:
    try:
        body = await request.json()
    except ValueError:
        return web.json_response({"error": "invalid character in request body"}, status=400)
    if not isinstance(body, dict):
        return web.json_response({"error": "request body must be a JSON object"}, status=400)
    if not isinstance(body.get("model"), str) or not body["model"]:
        return web.json_response({"error": "model is required"}, status=400)
    return body


def _facts(body: dict[str, Any], stream: bool, header: str) -> PromptFacts:
    messages = [m for m in _list(body.get("messages")) if isinstance(m, dict)]
    texts = [str(m.get("content") or "") for m in messages]
    options = body.get("options")
    options = options if isinstance(options, dict) else {}
    stop = options.get("stop") or ()
    names = tuple(
        str(t["function"].get("name"))
        for t in _list(body.get("tools"))
        if isinstance(t, dict) and isinstance(t.get("function"), dict)
    )
    limit = options.get("num_predict")
    return PromptFacts(
        model=body["model"],
        prompt="\n".join(texts),
        # Ollama reads a negative num_predict as "no limit".
        max_tokens=limit if isinstance(limit, int) and limit >= 0 else None,
        stop=(stop,) if isinstance(stop, str) else tuple(str(s) for s in _list(stop)),
        tools=names,
        json_mode=bool(body.get("format")),
        stream=stream,
        options_header=header,
        last_role=str(messages[-1].get("role", "")) if messages else "",
        last_message=texts[-1] if texts else "",
    )


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _message(plan: Plan, text: str) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text}
    call = plan.tool_call
    if call is not None:
        message["content"] = ""
        message["tool_calls"] = [
            {
                "id": call.id,
                "function": {"index": 0, "name": call.name, "arguments": json.loads(call.arguments_json)},
            }
        ]
    return message


def _chunk(plan: Plan, message: dict[str, Any]) -> dict[str, Any]:
    return {"model": plan.model, "created_at": _now(), "message": message, "done": False}


def _final(plan: Plan, started: int, message: dict[str, Any]) -> dict[str, Any]:
    total = max(time.monotonic_ns() - started, 1)
    eval_share = total * 3 // 4
    return {
        "model": plan.model,
        "created_at": _now(),
        "message": message,
        "done": True,
        "done_reason": "length" if plan.finish == "length" else "stop",
        "total_duration": total,
        "load_duration": total // 20,
        "prompt_eval_count": plan.prompt_tokens,
        "prompt_eval_duration": total // 10,
        "eval_count": plan.completion_tokens,
        "eval_duration": eval_share,
    }


def _line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _error(status: int, text: str, plan: Plan) -> web.Response:
    return error_response(status, {"error": text}, plan)


def _vector(model: str, text: str, size: int) -> list[float]:
    digest = hashlib.blake2b(f"{model}\x1f{text}".encode(), digest_size=8).digest()
    rng = random.Random(int.from_bytes(digest))
    raw = [rng.gauss(0.0, 1.0) for _ in range(size)]
    norm = math.sqrt(sum(v * v for v in raw)) or 1.0
    return [v / norm for v in raw]
