"""The Anthropic Messages API adapter (``POST /v1/messages``).

Anthropic differs from the OpenAI shape in ways that matter here: the system
prompt is a top-level field, ``max_tokens`` is required, tool calls and tool
results are content blocks (results ride in a *user* message), input token
counts exclude cached tokens, and the stream is a sequence of named events
whose ``message_delta`` usage is cumulative. There is no JSON mode switch,
no seed, no ``n``, no penalties and no logprobs; those are declared
unsupported so the gateway drops (or refuses) them before a call gets here.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncGenerator, Mapping
from typing import Any

import httpx

from omnirelay.config.schema import HttpProviderSettings
from omnirelay.domain import (
    Choice,
    CompletionResult,
    FinishChunk,
    FinishReason,
    ImagePart,
    Message,
    ProviderCall,
    Role,
    StreamChunk,
    TextDelta,
    TextPart,
    TokenUsage,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    ToolChoiceMode,
    ToolSpec,
    UsageChunk,
)
from omnirelay.errors import (
    FieldViolation,
    InvalidArgumentError,
    MalformedResponseError,
    StreamBrokenError,
    UpstreamConnectionError,
    UpstreamError,
)
from omnirelay.providers.http import HttpAdapter, HttpTransport, UpstreamResponse
from omnirelay.providers.sse import SSEDecoder, SSEEvent
from omnirelay.providers.upstream import ErrorBody, classify, request_id

DEFAULT_BASE_URL = "https://api.anthropic.com"
MESSAGES_PATH = "/v1/messages"
MODELS_PATH = "/v1/models"
DEFAULT_API_VERSION = "2023-06-01"
# Anthropic refuses a request without max_tokens; this is what we ask for when the caller set none.
DEFAULT_MAX_TOKENS = 4096
UNSUPPORTED = frozenset(
    {"seed", "n", "presence_penalty", "frequency_penalty", "response_format", "logprobs", "top_logprobs"}
)

_FINISH = {
    "end_turn": FinishReason.STOP,
    "stop_sequence": FinishReason.STOP,
    # The server paused a long tool loop; what arrived is a complete turn.
    "pause_turn": FinishReason.STOP,
    "max_tokens": FinishReason.LENGTH,
    # The context window filled up while generating: the answer was cut, like max_tokens.
    "model_context_window_exceeded": FinishReason.LENGTH,
    "tool_use": FinishReason.TOOL_CALLS,
    "refusal": FinishReason.REFUSAL,
}

# The HTTP status each error type has when it is not delivered inside a 200 stream.
_STATUS_OF_TYPE = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}

# Anthropic's largest page of the model list: one request lists every model it offers today.
_MODELS_PAGE = "1000"
# A cursor that never ends (a broken upstream or proxy) must not keep a health probe paging for ever.
_MAX_MODEL_PAGES = 10

_IMAGE_MAGIC = (
    (b"\x89PNG", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF8", "image/gif"),
)


class AnthropicProvider(HttpAdapter):
    """Completions from the Anthropic Messages API."""

    unsupported_parameters = UNSUPPORTED

    def __init__(self, settings: HttpProviderSettings, transport: HttpTransport) -> None:
        super().__init__(settings, transport)
        # An empty base_url leaves the client without one; an absolute URL still works then.
        self._path = MESSAGES_PATH if settings.base_url else DEFAULT_BASE_URL + MESSAGES_PATH
        self._models_path = MODELS_PATH if settings.base_url else DEFAULT_BASE_URL + MODELS_PATH
        self._headers = {"anthropic-version": settings.api_version or DEFAULT_API_VERSION}
        if settings.api_key:
            self._headers["x-api-key"] = settings.api_key

    async def complete(self, call: ProviderCall) -> CompletionResult:
        response = await self._transport.post(self._path, build_body(call, stream=False), self._headers)
        data = self._json(response)
        return parse_response(data, upstream_request_id=request_id(response.headers), provider=self.name)

    async def list_models(self) -> tuple[str, ...]:
        """GET /v1/models, page by page (one page in practice): free, for health probes."""
        ids: list[str] = []
        params = {"limit": _MODELS_PAGE}
        for _ in range(_MAX_MODEL_PAGES):
            response = await self._transport.get(self._models_path, self._headers, params)
            page, after = parse_models(self._json(response), self.name)
            ids.extend(page)
            if not after:
                break
            params = {"limit": _MODELS_PAGE, "after_id": after}
        return tuple(ids)

    async def stream(self, call: ProviderCall) -> AsyncGenerator[StreamChunk, None]:
        body = build_body(call, stream=True)
        async with self._transport.stream(self._path, body, self._headers) as response:
            if not 200 <= response.status_code < 300:
                try:
                    raw = await response.aread()
                except httpx.HTTPError:
                    raw = b""
                raise self._error(response.status_code, response.headers, raw)
            decoder = SSEDecoder()
            parser = AnthropicStreamParser(self.name, request_id(response.headers))
            try:
                async for raw in self._transport.chunks(response):
                    for event in decoder.feed(raw):
                        for chunk in parser.feed(event):
                            yield chunk
            except UpstreamConnectionError as exc:
                raise StreamBrokenError(
                    f"{self.name}: the stream broke off ({exc.message})",
                    provider=self.name,
                    http_status=response.status_code,
                    upstream_request_id=parser.upstream_request_id,
                ) from None
            for event in decoder.flush():
                for chunk in parser.feed(event):
                    yield chunk
            for chunk in parser.end():
                yield chunk

    def _json(self, response: UpstreamResponse) -> Any:
        """A whole answer's JSON body; an error status raises its classified error."""
        if not 200 <= response.status < 300:
            raise self._error(response.status, response.headers, response.body)
        try:
            return response.json()
        except ValueError:
            raise MalformedResponseError(
                f"{self.name}: the answer is not JSON",
                provider=self.name,
                http_status=response.status,
                upstream_request_id=request_id(response.headers),
            ) from None

    def _error(self, status: int, headers: Mapping[str, str], body: bytes) -> UpstreamError:
        return parse_error(status, headers, body, provider=self.name, secret=self._settings.api_key)


# Request mapping.


def build_body(call: ProviderCall, stream: bool) -> dict[str, Any]:
    """The Messages API request body for one call."""
    request = call.request
    sampling = call.sampling
    body: dict[str, Any] = {
        "model": call.deployment.provider_model,
        "max_tokens": sampling.max_tokens if sampling.max_tokens is not None else DEFAULT_MAX_TOKENS,
        "messages": _messages(request.messages),
    }
    system = "\n\n".join(m.text for m in request.messages if m.role is Role.SYSTEM and m.text)
    if system:
        body["system"] = system
    if sampling.stop:
        body["stop_sequences"] = list(sampling.stop)
    if sampling.temperature is not None:
        body["temperature"] = sampling.temperature
    if sampling.top_p is not None:
        body["top_p"] = sampling.top_p
    if sampling.top_k is not None:
        body["top_k"] = sampling.top_k
    if request.tools:
        body["tools"] = [_tool(t) for t in request.tools]
        choice = _tool_choice(request.tool_choice)
        if choice is not None:
            body["tool_choice"] = choice
    if stream:
        body["stream"] = True
    return body


def _messages(messages: tuple[Message, ...]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    # Tool results of one turn must all sit in the one user message after the tool calls.
    results: list[dict[str, Any]] | None = None
    for index, message in enumerate(messages):
        if message.role is Role.SYSTEM:
            continue
        if message.role is Role.TOOL:
            if results is None:
                results = []
                out.append({"role": "user", "content": results})
            results.append(_tool_result(message))
            continue
        results = None
        if message.role is Role.USER:
            out.append({"role": "user", "content": _content(message)})
        else:
            out.append({"role": "assistant", "content": _assistant_content(message, index)})
    return out


def _content(message: Message) -> str | list[dict[str, Any]]:
    # One text part travels as a plain string, the shape most clients send.
    if len(message.parts) == 1 and isinstance(message.parts[0], TextPart):
        return message.parts[0].text
    return [_part(p) for p in message.parts]


def _assistant_content(message: Message, index: int) -> str | list[dict[str, Any]]:
    if not message.tool_calls:
        return _content(message)
    blocks = [_part(p) for p in message.parts if not (isinstance(p, TextPart) and not p.text)]
    for number, call in enumerate(message.tool_calls):
        blocks.append(
            {"type": "tool_use", "id": call.id, "name": call.name, "input": _arguments(call, index, number)}
        )
    return blocks


def _arguments(call: ToolCall, index: int, number: int) -> dict[str, Any]:
    if not call.arguments_json.strip():
        return {}
    try:
        value = json.loads(call.arguments_json)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise InvalidArgumentError(
            [
                FieldViolation(
                    f"messages[{index}].tool_calls[{number}].arguments_json",
                    "must be a JSON object (Anthropic tool inputs are objects)",
                )
            ]
        )
    return value


def _tool_result(message: Message) -> dict[str, Any]:
    content: str | list[dict[str, Any]]
    if all(isinstance(p, TextPart) for p in message.parts):
        content = message.text
    else:
        content = [_part(p) for p in message.parts]
    return {"type": "tool_result", "tool_use_id": message.tool_call_id, "content": content}


def _part(part: TextPart | ImagePart) -> dict[str, Any]:
    if isinstance(part, TextPart):
        return {"type": "text", "text": part.text}
    if part.data:
        source = _base64_source(part.data, part.media_type)
    elif part.url.startswith("data:"):
        source = _data_url_source(part.url, part.media_type)
    else:
        source = {"type": "url", "url": part.url}
    return {"type": "image", "source": source}


def _base64_source(data: bytes, media_type: str) -> dict[str, str]:
    return {
        "type": "base64",
        "media_type": media_type or _sniff(data),
        "data": base64.b64encode(data).decode("ascii"),
    }


def _data_url_source(url: str, media_type: str) -> dict[str, str]:
    # data:<media type>;base64,<payload> — Anthropic takes the two halves separately.
    header, _, payload = url.partition(",")
    declared = header[len("data:") :].split(";", 1)[0]
    if ";base64" in header:
        return {"type": "base64", "media_type": declared or media_type, "data": payload}
    raw = payload.encode()
    return _base64_source(raw, declared or media_type)


def _sniff(data: bytes) -> str:
    for magic, media_type in _IMAGE_MAGIC:
        if data.startswith(magic):
            return media_type
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    # Unknown bytes: Anthropic then names the media types it accepts, which tells the caller more.
    return "application/octet-stream"


def _tool(spec: ToolSpec) -> dict[str, Any]:
    tool: dict[str, Any] = {"name": spec.name}
    if spec.description:
        tool["description"] = spec.description
    tool["input_schema"] = dict(spec.parameters) or {"type": "object", "properties": {}}
    return tool


def _tool_choice(choice: ToolChoice) -> dict[str, str] | None:
    if choice.mode is ToolChoiceMode.AUTO:
        return {"type": "auto"}
    if choice.mode is ToolChoiceMode.NONE:
        return {"type": "none"}
    if choice.mode is ToolChoiceMode.REQUIRED:
        return {"type": "any"}
    if choice.mode is ToolChoiceMode.FUNCTION:
        return {"type": "tool", "name": choice.name}
    return None


# Response mapping.


def parse_response(data: Any, upstream_request_id: str = "", provider: str = "anthropic") -> CompletionResult:
    """A whole Messages API answer as a CompletionResult (one choice: Anthropic has no ``n``)."""
    try:
        texts: list[str] = []
        reasoning: list[str] = []
        calls: list[ToolCall] = []
        for block in data["content"]:
            kind = block["type"]
            if kind == "text":
                texts.append(block["text"])
            elif kind == "tool_use":
                # The default separators are what Anthropic's own input_json_delta fragments use.
                calls.append(
                    ToolCall(block["id"], block["name"], json.dumps(block["input"], ensure_ascii=False))
                )
            elif kind == "thinking":
                reasoning.append(block["thinking"])
            # redacted_thinking and server-side tool blocks carry nothing a caller can read.
        choice = Choice(
            index=0,
            text="".join(texts),
            finish_reason=_finish(data.get("stop_reason")),
            tool_calls=tuple(calls),
            reasoning="".join(reasoning),
        )
        usage = _Usage()
        usage.update(data.get("usage") or {})
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise MalformedResponseError(
            f"{provider}: unexpected answer shape ({type(exc).__name__}: {exc})",
            provider=provider,
            upstream_request_id=upstream_request_id,
        ) from None
    return CompletionResult((choice,), usage.result(), upstream_request_id)


def parse_models(data: Any, provider: str = "anthropic") -> tuple[tuple[str, ...], str]:
    """One /v1/models page: its model ids, and the id to list after (``""`` on the last page)."""
    try:
        ids = tuple(str(m["id"]) for m in data["data"])
        more = data.get("has_more") is True
    except (KeyError, TypeError, AttributeError) as exc:
        raise MalformedResponseError(
            f"{provider}: unreadable model list ({type(exc).__name__})", provider=provider
        ) from None
    return ids, str(data.get("last_id") or "") if more else ""


def _finish(stop_reason: Any) -> FinishReason:
    return (
        _FINISH.get(stop_reason, FinishReason.UNKNOWN)
        if isinstance(stop_reason, str)
        else FinishReason.UNKNOWN
    )


class _Usage:
    """Anthropic's counters as last reported; ``message_delta`` repeats them cumulatively."""

    __slots__ = ("cache_creation", "cache_read", "input", "output", "reported")

    def __init__(self) -> None:
        self.reported = False  # any count at all; without one the gateway estimates
        self.input = 0
        self.cache_read = 0
        self.cache_creation = 0
        self.output = 0

    def update(self, usage: Mapping[str, Any]) -> None:
        # Latest value wins; a key that is absent or null keeps what an earlier event said.
        if usage:
            self.reported = True
        value = usage.get("input_tokens")
        if value is not None:
            self.input = int(value)
        value = usage.get("cache_read_input_tokens")
        if value is not None:
            self.cache_read = int(value)
        value = usage.get("cache_creation_input_tokens")
        if value is not None:
            self.cache_creation = int(value)
        value = usage.get("output_tokens")
        if value is not None:
            self.output = int(value)

    def result(self) -> TokenUsage:
        # Anthropic's input_tokens excludes cache reads and writes; ours includes them.
        return TokenUsage(
            input_tokens=self.input + self.cache_read + self.cache_creation,
            output_tokens=self.output,
            cached_input_tokens=self.cache_read,
            cache_write_input_tokens=self.cache_creation,
        )


# Stream parsing.

_TEXT, _TOOL, _THINKING, _OTHER = range(4)


class AnthropicStreamParser:
    """Turns Messages API stream events into chunks; ``message_stop`` is the only proper end."""

    __slots__ = ("_blocks", "_done", "_finish", "_provider", "_tools", "_usage", "upstream_request_id")

    def __init__(self, provider: str = "anthropic", upstream_request_id: str = "") -> None:
        self._provider = provider
        self.upstream_request_id = upstream_request_id
        # content block index -> (kind, position among the tool calls)
        self._blocks: dict[int, tuple[int, int]] = {}
        self._tools = 0
        self._usage = _Usage()
        self._finish = FinishReason.UNKNOWN
        self._done = False

    def feed(self, event: SSEEvent) -> list[StreamChunk]:
        if self._done:
            return []
        try:
            data = json.loads(event.data)
            kind = data.get("type") or event.event
        except (ValueError, AttributeError):
            raise self._malformed(f"an event that is not a JSON object: {event.data[:80]!r}") from None
        try:
            return self._event(kind, data)
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise self._malformed(f"unexpected {kind} event ({type(exc).__name__}: {exc})") from None

    def end(self) -> list[StreamChunk]:
        if not self._done:
            raise StreamBrokenError(
                f"{self._provider}: the stream ended before message_stop",
                provider=self._provider,
                http_status=200,
                upstream_request_id=self.upstream_request_id,
            )
        return []

    def _event(self, kind: str, data: dict[str, Any]) -> list[StreamChunk]:
        if kind == "content_block_delta":
            return self._delta(data["index"], data["delta"])
        if kind == "content_block_start":
            return self._start(data["index"], data["content_block"])
        if kind == "message_start":
            self._usage.update(data["message"].get("usage") or {})
        elif kind == "message_delta":
            reason = data.get("delta", {}).get("stop_reason")
            if reason is not None:
                self._finish = _finish(reason)
            self._usage.update(data.get("usage") or {})
        elif kind == "message_stop":
            self._done = True
            if not self._usage.reported:
                return [FinishChunk(0, self._finish)]
            return [FinishChunk(0, self._finish), UsageChunk(self._usage.result())]
        elif kind == "error":
            raise self._stream_error(data.get("error") or {})
        # ping, content_block_stop and event types added later carry nothing to forward.
        return []

    def _start(self, index: int, block: dict[str, Any]) -> list[StreamChunk]:
        kind = block["type"]
        if kind == "text":
            self._blocks[index] = (_TEXT, 0)
            text = block.get("text")
            return [TextDelta(0, text)] if text else []
        if kind == "tool_use":
            position = self._tools
            self._tools += 1
            self._blocks[index] = (_TOOL, position)
            # The start carries "input": {} and the arguments follow as input_json_delta fragments.
            return [ToolCallDelta(0, position, id=block["id"], name=block["name"])]
        if kind == "thinking":
            self._blocks[index] = (_THINKING, 0)
            thinking = block.get("thinking")
            return [TextDelta(0, "", reasoning=thinking)] if thinking else []
        self._blocks[index] = (_OTHER, 0)
        return []

    def _delta(self, index: int, delta: dict[str, Any]) -> list[StreamChunk]:
        kind = delta["type"]
        if kind == "text_delta":
            return [TextDelta(0, delta["text"])]
        if kind == "input_json_delta":
            fragment = delta["partial_json"]
            block = self._blocks.get(index)
            if not fragment or block is None or block[0] != _TOOL:
                return []
            return [ToolCallDelta(0, block[1], arguments_delta=fragment)]
        if kind == "thinking_delta":
            return [TextDelta(0, "", reasoning=delta["thinking"])]
        # signature_delta (thinking integrity) and citations_delta are not part of the answer text.
        return []

    def _stream_error(self, error: Mapping[str, Any]) -> UpstreamError:
        kind = str(error.get("type") or "api_error")
        body = ErrorBody(
            str(error.get("message") or ""), code=_refine(kind, str(error.get("message") or "")), type=kind
        )
        # Delivered inside a 200 stream: classify as the status the same error has on its own.
        headers = {"request-id": self.upstream_request_id} if self.upstream_request_id else {}
        return _classified(self._provider, _STATUS_OF_TYPE.get(kind, 500), body, headers)

    def _malformed(self, what: str) -> MalformedResponseError:
        return MalformedResponseError(
            f"{self._provider}: {what}",
            provider=self._provider,
            http_status=200,
            upstream_request_id=self.upstream_request_id,
        )


# Error mapping.


def parse_error(
    status: int, headers: Mapping[str, str], body: bytes, provider: str = "anthropic", secret: str = ""
) -> UpstreamError:
    """The error-tree class for a failed Messages API call; non-JSON bodies classify by status."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return classify(provider, status, ErrorBody(""), headers)
    kind = str(error.get("type") or "")
    message = str(error.get("message") or "")
    body_id = data.get("request_id") if isinstance(data, dict) else None
    if isinstance(body_id, str) and body_id and not request_id(headers):
        headers = {**{k.lower(): v for k, v in headers.items()}, "request-id": body_id}
    body_error = ErrorBody(message, code=_refine(kind, message), type=kind)
    return _classified(provider, status, body_error, headers, secret)


def _refine(kind: str, message: str) -> str:
    """A code ``classify`` knows, for Anthropic errors whose type alone says too little."""
    lowered = message.lower()
    if kind == "invalid_request_error":
        # "prompt is too long: 208310 tokens > 200000 maximum" and
        # "input length and `max_tokens` exceed context limit: 188240 + 21333 > 200000, ..."
        if lowered.startswith("prompt is too long") or "exceed context limit" in lowered:
            return "context_length_exceeded"
        # Out of prepaid credit arrives as a 400, and no retry will fix it.
        if "credit balance is too low" in lowered:
            return "insufficient_quota"
    if kind == "billing_error":
        return "insufficient_quota"
    return ""


def _classified(
    provider: str, status: int, body: ErrorBody, headers: Mapping[str, str], secret: str = ""
) -> UpstreamError:
    error = classify(provider, status, body, headers, secret=secret)
    if body.code and body.type:
        # Keep Anthropic's own type as the upstream code operators search for.
        error = type(error)(
            error.message,
            provider=provider,
            http_status=error.http_status,
            upstream_request_id=error.upstream_request_id,
            retry_after_seconds=error.retry_after_seconds,
            upstream_code=body.type,
        )
    return error
