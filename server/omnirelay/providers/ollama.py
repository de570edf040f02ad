"""Ollama's native API: ``POST /api/chat`` (NDJSON streaming) and ``POST /api/embed``.

Ollama speaks neither SSE nor OpenAI's shapes here: a stream is one JSON object
per line, the last one ``"done": true`` with token counts; sampling lives under
``options``; tool-call arguments are JSON objects and carry no ids (older
servers), so ids are synthesised from the call's position and content, the same
for a unary answer and its stream. Errors are ``{"error": "<text>"}`` and the
text is all there is to tell a context overflow from any other 400.

What Ollama cannot do, said honestly:
    n > 1, logprobs, top_logprobs   declared unsupported (the gateway drops or refuses them)
    tool_choice                     no such field. NONE is honoured by not offering tools;
                                    FUNCTION offers only that tool; neither REQUIRED nor FUNCTION
                                    can force a call, so strict parameters refuse them
    image URLs                      Ollama takes inline base64 only (``data:`` URLs are unpacked);
                                    http(s) URLs are refused rather than silently dropped
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import AsyncGenerator, Mapping, Sequence
from contextlib import AsyncExitStack
from typing import Any

import httpx

from omnirelay.config.schema import HttpProviderSettings
from omnirelay.domain import (
    Choice,
    CompletionResult,
    Deployment,
    EmbeddingResult,
    FinishChunk,
    FinishReason,
    ImagePart,
    Message,
    ProviderCall,
    ResponseFormatType,
    Role,
    StreamChunk,
    TextDelta,
    TokenUsage,
    ToolCall,
    ToolCallDelta,
    ToolChoiceMode,
    UsageChunk,
)
from omnirelay.errors import (
    FieldViolation,
    InvalidArgumentError,
    MalformedResponseError,
    StreamBrokenError,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamTimeoutError,
)
from omnirelay.providers.http import HttpAdapter, HttpTransport
from omnirelay.providers.ndjson import NDJSONDecoder
from omnirelay.providers.upstream import ErrorBody, classify, present, request_id

CHAT_PATH = "/api/chat"
EMBED_PATH = "/api/embed"
TAGS_PATH = "/api/tags"
PROVIDER = "ollama"
UNSUPPORTED = frozenset({"n", "logprobs", "top_logprobs"})

# Error texts that say more than their HTTP status, mapped to codes ``classify`` knows.
_TEXT_CODES = (
    (("context length", "context window", "context size", "exceeds the context"), "context_length_exceeded"),
    (("quota", "usage limit"), "insufficient_quota"),
    (("content filter", "safety policy"), "content_filter"),
    (("server busy", "overloaded"), "overloaded_error"),
)
_ERROR_TEXT_LIMIT = 300


# Request mapping.


def build_body(call: ProviderCall, stream: bool) -> dict[str, Any]:
    """The ``/api/chat`` body for one call."""
    request = call.request
    body: dict[str, Any] = {
        "model": call.deployment.provider_model,
        "messages": _messages(request.messages),
        # Ollama streams unless told otherwise, so the flag is always explicit.
        "stream": stream,
    }
    tools = _tools(call)
    if tools:
        body["tools"] = tools
    sampling = call.sampling
    fmt = sampling.response_format
    if fmt is not None and fmt.type is ResponseFormatType.JSON_OBJECT:
        body["format"] = "json"
    elif fmt is not None and fmt.type is ResponseFormatType.JSON_SCHEMA:
        body["format"] = dict(fmt.json_schema) if fmt.json_schema else "json"
    options = present(
        (
            ("num_predict", sampling.max_tokens),
            ("temperature", sampling.temperature),
            ("top_p", sampling.top_p),
            ("top_k", sampling.top_k),
            ("seed", sampling.seed),
            ("presence_penalty", sampling.presence_penalty),
            ("frequency_penalty", sampling.frequency_penalty),
        )
    )
    if sampling.stop:
        options["stop"] = list(sampling.stop)
    if options:
        body["options"] = options
    return body


def build_embed_body(model: str, inputs: Sequence[str], dimensions: int) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "input": list(inputs)}
    if dimensions > 0:
        body["dimensions"] = dimensions
    return body


def _messages(messages: Sequence[Message]) -> list[dict[str, Any]]:
    # Ollama's tool messages name the tool, not the call id: find it from the assistant's calls.
    names = {c.id: c.name for m in messages for c in m.tool_calls if c.id}
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        item: dict[str, Any] = {"role": message.role.value, "content": message.text}
        images = [_image(part, f"messages[{i}].content[{j}]") for j, part in _images(message)]
        if images:
            item["images"] = images
        if message.tool_calls:
            item["tool_calls"] = [
                {"function": {"name": c.name, "arguments": _arguments(c, f"messages[{i}].tool_calls[{k}]")}}
                for k, c in enumerate(message.tool_calls)
            ]
        if message.role is Role.TOOL:
            name = message.name or names.get(message.tool_call_id, "")
            if name:
                item["tool_name"] = name
        out.append(item)
    return out


def _images(message: Message) -> list[tuple[int, ImagePart]]:
    return [(j, p) for j, p in enumerate(message.parts) if isinstance(p, ImagePart)]


def _image(part: ImagePart, path: str) -> str:
    if part.data:
        return base64.b64encode(part.data).decode("ascii")
    head, sep, payload = part.url.partition(",")
    if part.url.startswith("data:") and sep and head.endswith(";base64"):
        return payload
    raise InvalidArgumentError(
        [FieldViolation(f"{path}.image.url", "ollama takes inline image data only; it does not fetch URLs")]
    )


def _arguments(call: ToolCall, path: str) -> Any:
    try:
        arguments = json.loads(call.arguments_json or "{}")
    except ValueError:
        arguments = None
    if not isinstance(arguments, dict):
        raise InvalidArgumentError(
            [
                FieldViolation(
                    f"{path}.arguments_json", "must be a JSON object (ollama sends arguments as one)"
                )
            ]
        )
    return arguments


def _tools(call: ProviderCall) -> list[dict[str, Any]]:
    request = call.request
    choice = request.tool_choice
    if not request.tools or choice.mode is ToolChoiceMode.NONE:
        return []
    specs = request.tools
    if choice.mode is ToolChoiceMode.FUNCTION:
        specs = tuple(t for t in specs if t.name == choice.name) or specs
    return [
        {
            "type": "function",
            "function": {
                "name": t.name,
                "description": t.description,
                "parameters": dict(t.parameters) or {"type": "object", "properties": {}},
            },
        }
        for t in specs
    ]


# Response mapping.


def parse_response(data: Any, provider: str = PROVIDER) -> CompletionResult:
    """A unary ``/api/chat`` answer."""
    _check_object(data, provider)
    message = data.get("message")
    if not isinstance(message, dict) or data.get("done") is False:
        raise MalformedResponseError(f"{provider}: answer without a finished message", provider=provider)
    calls = tuple(_tool_call(i, c, provider) for i, c in enumerate(_list(message.get("tool_calls"))))
    choice = Choice(
        index=0,
        text=_str(message.get("content")),
        finish_reason=_finish(data.get("done_reason"), bool(calls)),
        tool_calls=calls,
        reasoning=_str(message.get("thinking")),
    )
    return CompletionResult((choice,), _usage(data))


def parse_generate_response(data: Any, provider: str = PROVIDER) -> CompletionResult:
    """A unary ``/api/generate`` answer: the text is ``response``, not ``message.content``."""
    _check_object(data, provider)
    if not isinstance(data.get("response"), str):
        raise MalformedResponseError(f"{provider}: answer without a response", provider=provider)
    choice = Choice(
        index=0,
        text=data["response"],
        finish_reason=_finish(data.get("done_reason"), False),
        reasoning=_str(data.get("thinking")),
    )
    return CompletionResult((choice,), _usage(data))


def parse_embeddings(data: Any, count: int, provider: str = PROVIDER) -> EmbeddingResult:
    _check_object(data, provider)
    vectors = data.get("embeddings")
    if (
        not isinstance(vectors, list)
        or len(vectors) != count
        or not all(isinstance(v, list) and all(isinstance(x, int | float) for x in v) for v in vectors)
    ):
        raise MalformedResponseError(f"{provider}: expected {count} embeddings", provider=provider)
    return EmbeddingResult(
        vectors=tuple(tuple(float(x) for x in v) for v in vectors),
        usage=TokenUsage(input_tokens=_count(data.get("prompt_eval_count"))),
    )


def _check_object(data: Any, provider: str) -> None:
    if not isinstance(data, dict):
        raise MalformedResponseError(f"{provider}: answer is not a JSON object", provider=provider)
    if "error" in data:
        raise _in_band_error(data["error"], provider)


def _tool_call(index: int, raw: Any, provider: str) -> ToolCall:
    function = raw.get("function") if isinstance(raw, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise MalformedResponseError(f"{provider}: tool call without a function name", provider=provider)
    arguments = function.get("arguments")
    text = arguments if isinstance(arguments, str) else json.dumps(arguments or {}, separators=(",", ":"))
    given = raw.get("id")
    call_id = given if isinstance(given, str) and given else _synthetic_id(index, function["name"], text)
    return ToolCall(call_id, function["name"], text)


def _synthetic_id(index: int, name: str, arguments: str) -> str:
    # Stable: the same call gets the same id unary or streamed, and on a retried identical answer.
    digest = hashlib.blake2b(f"{index}\x1f{name}\x1f{arguments}".encode(), digest_size=8).hexdigest()
    return f"call_{digest}"


def _finish(reason: Any, tool_calls: bool) -> FinishReason:
    if tool_calls:
        return FinishReason.TOOL_CALLS
    # "stop", "load", "unload" and a missing reason (older servers) all mean the answer is whole.
    return FinishReason.LENGTH if reason == "length" else FinishReason.STOP


def _usage(data: Mapping[str, Any]) -> TokenUsage:
    # A fully cached prompt comes back without prompt_eval_count; thinking counts in eval_count.
    return TokenUsage(
        input_tokens=_count(data.get("prompt_eval_count")), output_tokens=_count(data.get("eval_count"))
    )


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


# Stream parsing.


class OllamaStreamParser:
    """Turns decoded NDJSON objects (``/api/chat`` or ``/api/generate``) into stream chunks."""

    __slots__ = ("_done", "_provider", "_tool_calls")

    def __init__(self, provider: str = PROVIDER) -> None:
        self._provider = provider
        self._tool_calls = 0
        self._done = False

    @property
    def done(self) -> bool:
        return self._done

    def feed(self, event: Any) -> list[StreamChunk]:
        _check_object(event, self._provider)
        if self._done:
            return []
        out: list[StreamChunk] = []
        message = event.get("message")
        if isinstance(message, dict):
            text, thinking = _str(message.get("content")), _str(message.get("thinking"))
            calls = _list(message.get("tool_calls"))
        else:
            text, thinking, calls = _str(event.get("response")), _str(event.get("thinking")), []
        if text or thinking:
            out.append(TextDelta(0, text, reasoning=thinking))
        for raw in calls:
            # Ollama sends each call whole, so one delta carries the complete arguments.
            call = _tool_call(self._tool_calls, raw, self._provider)
            out.append(ToolCallDelta(0, self._tool_calls, call.id, call.name, call.arguments_json))
            self._tool_calls += 1
        if event.get("done") is True:
            self._done = True
            out.append(FinishChunk(0, _finish(event.get("done_reason"), self._tool_calls > 0)))
            # No counts at all (some /api/generate streams): no report, so the gateway estimates.
            if "prompt_eval_count" in event or "eval_count" in event:
                out.append(UsageChunk(_usage(event)))
        return out

    def end(self) -> list[StreamChunk]:
        if not self._done:
            raise StreamBrokenError(
                f"{self._provider}: stream ended before the final done object", provider=self._provider
            )
        return []


def parse_models(data: Any, provider: str = PROVIDER) -> tuple[str, ...]:
    """An /api/tags body as the names /api/chat accepts (``llama3.1:8b``), in order."""
    try:
        return tuple(str(m.get("name") or m["model"]) for m in data["models"] or ())
    except (KeyError, TypeError, AttributeError):
        raise MalformedResponseError(
            f"{provider}: the model list has an unexpected shape", provider=provider
        ) from None


# Error mapping.


def parse_error(
    status: int, headers: Mapping[str, str], body: bytes, provider: str = PROVIDER, secret: str = ""
) -> UpstreamError:
    """An HTTP error answer: ``{"error": "<text>"}``; other bodies still classify by status."""
    message = _error_text(body)
    return classify(provider, status, ErrorBody(message, code=_text_code(message)), headers, secret=secret)


def _error_text(body: bytes) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return body.decode("utf-8", errors="replace").strip()[:_ERROR_TEXT_LIMIT]
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict):  # an OpenAI-style proxy in front of Ollama
            error = error.get("message")
        if isinstance(error, str):
            return error[:_ERROR_TEXT_LIMIT]
    return ""


def _text_code(message: str) -> str:
    lowered = message.lower()
    for needles, code in _TEXT_CODES:
        if any(n in lowered for n in needles):
            return code
    return ""


def _in_band_error(raw: Any, provider: str) -> UpstreamError:
    """An ``{"error": ...}`` object after HTTP 200 (mid-stream): a server failure unless it says otherwise."""
    message = _str(raw)[:_ERROR_TEXT_LIMIT] or "error without a message"
    code = _text_code(message)
    # Classified as a 500 would be; the HTTP status itself was 200, so none is reported.
    cls = type(classify(provider, 500, ErrorBody(message, code=code)))
    return cls(f"{provider}: {message}", provider=provider, upstream_code=code)


# The provider.


class OllamaProvider(HttpAdapter):
    """Chat and embeddings from an Ollama server (local, or remote behind a key-checking proxy)."""

    unsupported_parameters = UNSUPPORTED

    def __init__(self, settings: HttpProviderSettings, transport: HttpTransport) -> None:
        super().__init__(settings, transport)
        self._headers = {"authorization": f"Bearer {settings.api_key}"} if settings.api_key else {}

    async def complete(self, call: ProviderCall) -> CompletionResult:
        self._check_tool_choice(call)
        response = await self._transport.post(CHAT_PATH, build_body(call, stream=False), self._headers)
        if not 200 <= response.status < 300:
            raise self._error(response.status, response.headers, response.body)
        result = parse_response(self._json(response.body), self.name)
        upstream_id = request_id(response.headers)
        if upstream_id:
            result = CompletionResult(result.choices, result.usage, upstream_id)
        return result

    async def stream(self, call: ProviderCall) -> AsyncGenerator[StreamChunk, None]:
        self._check_tool_choice(call)
        body = build_body(call, stream=True)
        parser = OllamaStreamParser(self.name)
        decoder = NDJSONDecoder()
        async with AsyncExitStack() as stack:
            response = await self._open(stack, body)
            try:
                async for raw in self._transport.chunks(response):
                    for event in self._decode(decoder, raw):
                        for chunk in parser.feed(event):
                            yield chunk
            except UpstreamConnectionError:
                if parser.done:
                    return
                raise StreamBrokenError(
                    f"{self.name}: connection lost mid-stream", provider=self.name
                ) from None
            for event in self._decode(decoder, None):
                for chunk in parser.feed(event):
                    yield chunk
        for chunk in parser.end():
            yield chunk

    async def embed(self, deployment: Deployment, inputs: Sequence[str], dimensions: int) -> EmbeddingResult:
        body = build_embed_body(deployment.provider_model, inputs, dimensions)
        response = await self._transport.post(EMBED_PATH, body, self._headers)
        if not 200 <= response.status < 300:
            raise self._error(response.status, response.headers, response.body)
        return parse_embeddings(self._json(response.body), len(inputs), self.name)

    async def list_models(self) -> tuple[str, ...]:
        """GET /api/tags, the models pulled on the server: free, for health probes."""
        response = await self._transport.get(TAGS_PATH, self._headers)
        if not 200 <= response.status < 300:
            raise self._error(response.status, response.headers, response.body)
        return parse_models(self._json(response.body), self.name)

    def _check_tool_choice(self, call: ProviderCall) -> None:
        request = call.request
        mode = request.tool_choice.mode
        strict = self._settings.strict_parameters or request.routing.strict_parameters
        if strict and request.tools and mode in (ToolChoiceMode.REQUIRED, ToolChoiceMode.FUNCTION):
            raise InvalidArgumentError(
                [
                    FieldViolation(
                        "tool_choice.mode",
                        f"provider {self.name!r} (ollama) cannot force a tool call; "
                        "use AUTO or turn off strict parameters for best effort",
                    )
                ]
            )

    async def _open(self, stack: AsyncExitStack, body: Mapping[str, Any]) -> httpx.Response:
        """The stream's response once its status is known; an error status raises the mapped error."""
        try:
            # Bounds the wait for the headers only: a model loading for ever must not hold the caller.
            async with asyncio.timeout(self._settings.total_timeout):
                response = await stack.enter_async_context(
                    self._transport.stream(CHAT_PATH, body, self._headers)
                )
                if 200 <= response.status_code < 300:
                    return response
                raw = await response.aread()
        except TimeoutError:
            raise UpstreamTimeoutError(f"{self.name} did not answer in time", provider=self.name) from None
        except httpx.HTTPError as exc:
            raise UpstreamConnectionError(
                f"connection to {self.name} failed: {type(exc).__name__}", provider=self.name
            ) from None
        raise self._error(response.status_code, response.headers, raw)

    def _decode(self, decoder: NDJSONDecoder, raw: bytes | None) -> list[Any]:
        try:
            return decoder.feed(raw) if raw is not None else decoder.flush()
        except ValueError:
            raise MalformedResponseError(
                f"{self.name}: stream line is not JSON", provider=self.name
            ) from None

    def _json(self, body: bytes) -> Any:
        try:
            return json.loads(body)
        except ValueError:
            raise MalformedResponseError(f"{self.name}: answer is not JSON", provider=self.name) from None

    def _error(self, status: int, headers: Mapping[str, str], body: bytes) -> UpstreamError:
        return parse_error(status, headers, body, self.name, self._settings.api_key)
