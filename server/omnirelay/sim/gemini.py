"""The Gemini API wire format in the simulator (``/v1beta/models/{model}:{method}``).

``generateContent`` answers one pretty-printed JSON object;
``streamGenerateContent?alt=sse`` answers CRLF-framed SSE with no terminator
(the stream just ends after the chunk carrying ``finishReason``); without
``alt=sse`` it answers one JSON array written element by element, as the real
API does. Every chunk repeats ``usageMetadata``, prompt-only until the last.
Embeddings: ``batchEmbedContents`` and ``embedContent``.

Faults take Gemini's own shapes (copied from recorded traffic): a bad key is
400 ``API_KEY_INVALID`` (there is no 401), a rate limit is 429
``RESOURCE_EXHAUSTED`` with ``QuotaFailure`` and ``RetryInfo``, overload is
503 ``UNAVAILABLE``, a blocked prompt is a 200 with ``promptFeedback``, and a
failure mid-stream is the raw JSON error body written after the SSE frames.

The free model listing is ``GET /v1beta/models``: ``{"models": [{"name":
"models/…", "supportedGenerationMethods": [...], ...}]}``, every model on one
page (so no ``nextPageToken``).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from omnirelay.sim.core import (
    ClientGoneError,
    Plan,
    PromptFacts,
    Served,
    Simulator,
    drop_connection,
    error_response,
    hang,
    open_stream,
    pause,
    send,
)

FORMAT = "gemini"
_FINISH = {"stop": "STOP", "length": "MAX_TOKENS", "tool_calls": "STOP"}
_STATUS_FAULTS = frozenset({"400", "401", "403", "404", "429", "500", "503", "529", "context", "quota"})
_STREAM_FAULTS = frozenset({"drop", "malformed", "stream_error"})
_CONTEXT_LIMIT = 1_048_576
_EMBEDDING_DIMENSIONS = 768
# Gemini's SSE frames: compact between items, a space after each key.
_SEPARATORS = (",", ": ")
_CHAT_METHODS = ("generateContent", "countTokens", "createCachedContent", "batchGenerateContent")
_EMBED_METHODS = ("embedContent", "countTextTokens", "countTokens")
# What GET /v1beta/models lists: (id, display name, version, input limit, output limit, methods).
_MODELS = (
    ("gemini-2.5-pro", "Gemini 2.5 Pro", "2.5", 1_048_576, 65_536, _CHAT_METHODS),
    ("gemini-2.5-flash", "Gemini 2.5 Flash", "001", 1_048_576, 65_536, _CHAT_METHODS),
    ("gemini-2.0-flash", "Gemini 2.0 Flash", "2.0", 1_048_576, 8_192, _CHAT_METHODS),
    ("text-embedding-004", "Text Embedding 004", "004", 2_048, 1, _EMBED_METHODS),
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class BadRequestError(Exception):
    """The request body is not what the Gemini API accepts."""


def routes(sim: Simulator) -> list[web.RouteDef]:
    async def models(request: web.Request) -> web.StreamResponse:
        return await _list_models(sim, request)

    # aiohttp cannot split "model:method" inside one path segment; the handler does.
    return [web.post("/v1beta/models/{target}", _handler(sim)), web.get("/v1beta/models", models)]


def _handler(sim: Simulator) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        model, _, method = request.match_info["target"].rpartition(":")
        if not model or method not in _METHODS:
            return _google_error(404, "NOT_FOUND", f"Method not found: {method or '(none)'}.")
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise BadRequestError("Invalid JSON payload received. Expected an object.")
            return await _METHODS[method](sim, request, model, body)
        except ValueError:
            return _google_error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.")
        except BadRequestError as exc:
            return _google_error(400, "INVALID_ARGUMENT", str(exc))
        except ClientGoneError:
            return web.Response()

    return handle


# ---------------------------------------------------------------- generateContent


async def _generate(
    sim: Simulator, request: web.Request, model: str, body: dict[str, Any]
) -> web.StreamResponse:
    plan, candidates = _plan(sim, request, model, body, stream=False)
    served = sim.record(FORMAT, plan, stream=False, traceparent=request.headers.get("traceparent", ""))
    await pause(request, served, plan.ttft)
    early = await _unary_fault(request, served, plan)
    if early is not None:
        return early
    if plan.fault == "filter":
        return _pretty(_blocked(plan))
    parts = _answer_parts(plan)
    answer = {
        "candidates": [_candidate(parts, plan.finish, i) for i in range(candidates)],
        "usageMetadata": _usage(plan, candidates, final=True),
        "modelVersion": plan.model,
        "responseId": plan.request_id,
    }
    served.pieces_sent = len(plan.pieces)
    served.completed = True
    return _pretty(answer)


async def _stream(
    sim: Simulator, request: web.Request, model: str, body: dict[str, Any]
) -> web.StreamResponse:
    sse = request.query.get("alt") == "sse"
    plan, candidates = _plan(sim, request, model, body, stream=True)
    served = sim.record(FORMAT, plan, stream=True, traceparent=request.headers.get("traceparent", ""))
    await pause(request, served, plan.ttft)
    if plan.fault == "hang":
        await hang(request, served)
    if plan.fault in _STATUS_FAULTS:
        return _fault_response(plan)
    content_type = "text/event-stream" if sse else "application/json; charset=UTF-8"
    response = await open_stream(request, served, content_type)
    writer = _Writer(request, response, served, sse)
    if plan.fault == "filter":
        await writer.chunk(_blocked(plan))
        await writer.close()
        return response
    chunks = _stream_chunks(plan, candidates)
    fault_at = min(plan.after, len(chunks) - 1) if plan.fault in _STREAM_FAULTS else -1
    for position, (chunk, pieces) in enumerate(chunks):
        if position:
            await pause(request, served, plan.itl)
        if position == fault_at:
            await _stream_fault(request, served, writer, plan)
            return response
        await writer.chunk(chunk)
        served.pieces_sent += pieces
    await writer.close()
    served.completed = True
    return response


def _stream_chunks(plan: Plan, candidates: int) -> list[tuple[dict[str, Any], int]]:
    """Every chunk to send, with the number of plan pieces each carries."""

    def chunk(parts: list[dict[str, Any]], finish: str | None) -> dict[str, Any]:
        return {
            "candidates": [_candidate(parts, finish, i) for i in range(candidates)],
            "usageMetadata": _usage(plan, candidates, final=finish is not None),
            "modelVersion": plan.model,
            "responseId": plan.request_id,
        }

    # A function call arrives whole, in one chunk that also finishes the answer.
    if plan.tool_call is not None or not plan.pieces:
        return [(chunk(_answer_parts(plan), plan.finish), len(plan.pieces))]
    last = len(plan.pieces) - 1
    return [
        (chunk([{"text": piece}], plan.finish if i == last else None), 1)
        for i, piece in enumerate(plan.pieces)
    ]


async def _stream_fault(request: web.Request, served: Served, writer: _Writer, plan: Plan) -> None:
    if plan.fault == "drop":
        drop_connection(request, served)
    elif plan.fault == "malformed":
        cut = b'{"candidates": [{"content": {"parts": [{"text": '
        await writer.raw(b"data: " + cut + b"\r\n\r\n" if writer.sse else b"\n,\n" + cut)
    else:
        # Exactly the real quirk: HTTP 200 is long sent, so the error body simply follows the frames.
        _, error = _fault_error(plan, "503")
        if writer.sse:
            await writer.raw(_pretty_bytes(error) + b"\n")
        else:
            await writer.chunk(error)
            await writer.close()


class _Writer:
    """Frames chunks as SSE (CRLF, no terminator) or as the incrementally written JSON array."""

    __slots__ = ("request", "response", "served", "sse", "started")

    def __init__(self, request: web.Request, response: web.StreamResponse, served: Served, sse: bool) -> None:
        self.request = request
        self.response = response
        self.served = served
        self.sse = sse
        self.started = False

    async def chunk(self, data: dict[str, Any]) -> None:
        if self.sse:
            frame = b"data: " + json.dumps(data, separators=_SEPARATORS).encode() + b"\r\n\r\n"
        else:
            frame = (b"\n,\n" if self.started else b"[") + _pretty_bytes(data)
        self.started = True
        await send(self.request, self.response, self.served, frame)

    async def raw(self, data: bytes) -> None:
        await send(self.request, self.response, self.served, data)

    async def close(self) -> None:
        if not self.sse:
            await send(self.request, self.response, self.served, b"\n]" if self.started else b"[]")


# ---------------------------------------------------------------- model listing


async def _list_models(sim: Simulator, request: web.Request) -> web.StreamResponse:
    """The model list: free, recorded as a listing, failing only as the header's fault says."""
    plan, served = sim.listing(FORMAT, request.headers.get("x-sim-options", ""))
    try:
        await pause(request, served, plan.ttft)
        early = await _unary_fault(request, served, plan)
    except ClientGoneError:
        return web.Response()
    if early is not None:
        return early
    served.completed = True
    return _pretty({"models": [_model_entry(*model) for model in _MODELS]})


def _model_entry(
    model: str, display: str, version: str, inputs: int, outputs: int, methods: tuple[str, ...]
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": f"models/{model}",
        "version": version,
        "displayName": display,
        "description": display,
        "inputTokenLimit": inputs,
        "outputTokenLimit": outputs,
        "supportedGenerationMethods": list(methods),
    }
    if "generateContent" in methods:
        entry.update({"temperature": 1, "topP": 0.95, "topK": 64, "maxTemperature": 2})
    return entry


# ---------------------------------------------------------------- embeddings


async def _batch_embed(
    sim: Simulator, request: web.Request, model: str, body: dict[str, Any]
) -> web.StreamResponse:
    items = body.get("requests")
    if not isinstance(items, list) or not items:
        raise BadRequestError("* BatchEmbedContentsRequest.requests: requests is not specified")
    texts = [(_content_text(item.get("content")), item.get("outputDimensionality")) for item in items]
    early = await _embed_fault(sim, request, model, [t for t, _ in texts])
    if early is not None:
        return early
    return _pretty({"embeddings": [{"values": _vector(model, text, dims)} for text, dims in texts]})


async def _embed_one(
    sim: Simulator, request: web.Request, model: str, body: dict[str, Any]
) -> web.StreamResponse:
    text = _content_text(body.get("content"))
    early = await _embed_fault(sim, request, model, [text])
    if early is not None:
        return early
    return _pretty({"embedding": {"values": _vector(model, text, body.get("outputDimensionality"))}})


async def _embed_fault(
    sim: Simulator, request: web.Request, model: str, texts: list[str]
) -> web.StreamResponse | None:
    facts = PromptFacts(model, "\n".join(texts), options_header=request.headers.get("x-sim-options", ""))
    plan = sim.plan(facts)
    served = sim.record(FORMAT, plan, stream=False, traceparent=request.headers.get("traceparent", ""))
    await pause(request, served, plan.ttft)
    early = await _unary_fault(request, served, plan)
    if early is None:
        served.completed = True
    return early


def _vector(model: str, text: str, dims: Any) -> list[float]:
    size = dims if isinstance(dims, int) and dims > 0 else _EMBEDDING_DIMENSIONS
    digest = hashlib.blake2b(f"{model}\x1f{text}".encode(), digest_size=8).digest()
    rng = random.Random(int.from_bytes(digest))
    raw = [rng.gauss(0.0, 1.0) for _ in range(size)]
    norm = math.sqrt(sum(v * v for v in raw)) or 1.0
    return [round(v / norm, 6) for v in raw]


_METHODS: dict[
    str, Callable[[Simulator, web.Request, str, dict[str, Any]], Awaitable[web.StreamResponse]]
] = {
    "generateContent": _generate,
    "streamGenerateContent": _stream,
    "batchEmbedContents": _batch_embed,
    "embedContent": _embed_one,
}


# ---------------------------------------------------------------- reading requests, writing answers


def _plan(
    sim: Simulator, request: web.Request, model: str, body: dict[str, Any], stream: bool
) -> tuple[Plan, int]:
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise BadRequestError("* GenerateContentRequest.contents: contents is not specified")
    texts = [_content_text(body.get("systemInstruction"))]
    texts.extend(_content_text(c) for c in contents)
    config = body.get("generationConfig") or {}
    tools = tuple(
        str(d.get("name", "")) for t in body.get("tools") or () for d in t.get("functionDeclarations") or ()
    )
    calling = (body.get("toolConfig") or {}).get("functionCallingConfig") or {}
    last = contents[-1] if isinstance(contents[-1], dict) else {}
    forced = None
    if tools and calling.get("mode") == "ANY":
        forced = (calling.get("allowedFunctionNames") or tools)[0]
    facts = PromptFacts(
        model=model,
        prompt="\n".join(t for t in texts if t),
        max_tokens=config.get("maxOutputTokens"),
        stop=tuple(config.get("stopSequences") or ()),
        tools=tools,
        forced_tool=forced,
        json_mode=config.get("responseMimeType") == "application/json",
        stream=stream,
        options_header=request.headers.get("x-sim-options", ""),
        last_role=str(last.get("role", "")),
        last_message="".join(str(p["text"]) for p in last.get("parts") or () if "text" in p),
    )
    candidates = config.get("candidateCount") or 1
    if not isinstance(candidates, int) or candidates < 1:
        raise BadRequestError("* GenerateContentRequest.generation_config.candidate_count: must be positive.")
    return sim.plan(facts), candidates


def _content_text(content: Any) -> str:
    if not isinstance(content, dict):
        return ""
    texts = []
    for part in content.get("parts") or ():
        if "text" in part:
            texts.append(str(part["text"]))
        elif "functionResponse" in part:
            texts.append(json.dumps(part["functionResponse"].get("response")))
    return "\n".join(texts)


def _answer_parts(plan: Plan) -> list[dict[str, Any]]:
    if plan.tool_call is not None:
        args = json.loads(plan.tool_call.arguments_json)
        return [{"functionCall": {"name": plan.tool_call.name, "args": args}}]
    return [{"text": plan.text}] if plan.text else []


def _candidate(parts: list[dict[str, Any]], finish: str | None, index: int) -> dict[str, Any]:
    # With MAX_TOKENS and nothing said, the real content has a role and no parts at all.
    content: dict[str, Any] = {"parts": parts, "role": "model"} if parts else {"role": "model"}
    candidate: dict[str, Any] = {"content": content}
    if finish is not None:
        candidate["finishReason"] = _FINISH[finish]
    candidate["index"] = index
    return candidate


def _usage(plan: Plan, candidates: int, final: bool) -> dict[str, Any]:
    prompt = plan.prompt_tokens
    usage: dict[str, Any] = {"promptTokenCount": prompt}
    total = prompt
    if final:
        output = plan.completion_tokens * candidates
        usage["candidatesTokenCount"] = output
        total += output
    usage["totalTokenCount"] = total
    usage["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": prompt}]
    return usage


def _blocked(plan: Plan) -> dict[str, Any]:
    return {
        "promptFeedback": {
            "blockReason": "SAFETY",
            "safetyRatings": [
                {"category": "HARM_CATEGORY_SEXUALLY_EXPLICIT", "probability": "NEGLIGIBLE"},
                {"category": "HARM_CATEGORY_HATE_SPEECH", "probability": "NEGLIGIBLE"},
                {"category": "HARM_CATEGORY_HARASSMENT", "probability": "NEGLIGIBLE"},
                {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH"},
            ],
        },
        "usageMetadata": {"promptTokenCount": plan.prompt_tokens, "totalTokenCount": plan.prompt_tokens},
        "modelVersion": plan.model,
        "responseId": plan.request_id,
    }


async def _unary_fault(request: web.Request, served: Served, plan: Plan) -> web.StreamResponse | None:
    """The answer a fault gives before any content, or None to answer normally."""
    if plan.fault == "hang":
        await hang(request, served)
    if plan.fault == "drop":
        drop_connection(request, served)
        return web.Response()
    if plan.fault == "malformed":
        return web.Response(body=b'{"candidates": [{"content": {', content_type="application/json")
    if plan.fault in _STATUS_FAULTS or plan.fault == "stream_error":
        return _fault_response(plan)
    return None


def _fault_response(plan: Plan) -> web.Response:
    status, body = _fault_error(plan, plan.fault)
    return error_response(status, body, plan)


def _fault_error(plan: Plan, fault: str) -> tuple[int, dict[str, Any]]:
    """Gemini's status and error body for a fault (shapes from recorded errors)."""
    if fault == "401":
        message = "API key not valid. Please pass a valid API key."
        details: list[dict[str, Any]] = [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"},
            },
            {
                "@type": "type.googleapis.com/google.rpc.LocalizedMessage",
                "locale": "en-US",
                "message": message,
            },
        ]
        return 400, _error_body(400, "INVALID_ARGUMENT", message, details)
    if fault == "403":
        return 403, _error_body(
            403,
            "PERMISSION_DENIED",
            "Method doesn't allow unregistered callers (callers without established identity). "
            "Please use API Key or other form of API consumer identity to call this API.",
        )
    if fault == "404":
        return 404, _error_body(
            404,
            "NOT_FOUND",
            f"models/{plan.model} is not found for API version v1beta, or is not supported for "
            "generateContent. Call ModelService.ListModels to see the list of available models and their "
            "supported methods.",
        )
    if fault in ("429", "quota"):
        return 429, _resource_exhausted(plan, per_day=fault == "quota")
    if fault == "500":
        return 500, _error_body(
            500,
            "INTERNAL",
            "An internal error has occurred. Please retry or report in "
            "https://developers.generativeai.google/guide/troubleshooting",
        )
    if fault in ("503", "529", "stream_error"):
        return 503, _error_body(503, "UNAVAILABLE", "The model is overloaded. Please try again later.")
    if fault == "context":
        count = _CONTEXT_LIMIT + plan.prompt_tokens
        return 400, _error_body(
            400,
            "INVALID_ARGUMENT",
            f"The input token count ({count}) exceeds the maximum number of tokens allowed "
            f"({_CONTEXT_LIMIT}).",
        )
    return 400, _error_body(
        400,
        "INVALID_ARGUMENT",
        "* GenerateContentRequest.generation_config.max_output_tokens: max_output_tokens must be positive.\n",
    )


def _resource_exhausted(plan: Plan, per_day: bool) -> dict[str, Any]:
    # The message is the same for a per-minute limit and a spent daily quota; the quota id tells them apart.
    period = "PerDay" if per_day else "PerMinute"
    details: list[dict[str, Any]] = [
        {
            "@type": "type.googleapis.com/google.rpc.QuotaFailure",
            "violations": [
                {
                    "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                    "quotaId": f"GenerateRequests{period}PerProjectPerModel-FreeTier",
                    "quotaDimensions": {"location": "global", "model": plan.model},
                    "quotaValue": "250" if per_day else "10",
                }
            ],
        },
        {
            "@type": "type.googleapis.com/google.rpc.Help",
            "links": [
                {
                    "description": "Learn more about Gemini API quotas",
                    "url": "https://ai.google.dev/gemini-api/docs/rate-limits",
                }
            ],
        },
    ]
    if plan.retry_after is not None:
        details.append(
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{plan.retry_after:g}s"}
        )
    message = (
        "You exceeded your current quota, please check your plan and billing details. For more information "
        "on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits."
    )
    return _error_body(429, "RESOURCE_EXHAUSTED", message, details)


def _error_body(
    code: int, status: str, message: str, details: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        error["details"] = details
    return {"error": error}


def _google_error(code: int, status: str, message: str) -> web.Response:
    return web.Response(
        body=_pretty_bytes(_error_body(code, status, message)),
        status=code,
        content_type="application/json",
        charset="UTF-8",
    )


def _pretty_bytes(data: Any) -> bytes:
    return json.dumps(data, indent=2, ensure_ascii=False).encode()


def _pretty(data: Any) -> web.Response:
    return web.Response(body=_pretty_bytes(data) + b"\n", content_type="application/json", charset="UTF-8")
