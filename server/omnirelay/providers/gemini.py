"""The Google Gemini API adapter (Generative Language API, v1beta).

Chat goes to ``models/{model}:generateContent`` and, streamed,
``:streamGenerateContent?alt=sse``; embeddings to ``:batchEmbedContents``.
The API key travels in the ``x-goog-api-key`` header, never in the URL, so no
error or log line that names a URL can carry it.

Gemini differs from the OpenAI shape in ways that matter here: the system
prompt is not a message; the assistant role is ``model``; a function call
has no id (we synthesise ``call_<n>`` per choice) and a function response is
matched by name, not id; ``finishReason`` stays ``STOP`` after a function
call; usage counts thinking tokens apart from the answer; an SSE stream has
no terminator (it ends after the chunk with ``finishReason``), and a failure
mid-stream arrives as a bare JSON error body after the frames.
"""

from __future__ import annotations

import base64
import json
import mimetypes
from collections.abc import AsyncGenerator, Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import quote, unquote_to_bytes

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
    Sampling,
    StreamChunk,
    TextDelta,
    TextPart,
    TokenLogprob,
    TokenUsage,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    ToolChoiceMode,
    ToolSpec,
    UsageChunk,
)
from omnirelay.errors import (
    ContentFilteredError,
    ContextLengthExceededError,
    FieldViolation,
    InvalidArgumentError,
    MalformedResponseError,
    OverloadedError,
    QuotaExhaustedError,
    RateLimitedError,
    StreamBrokenError,
    UpstreamAuthenticationError,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamInvalidRequestError,
    UpstreamNotFoundError,
    UpstreamPermissionError,
    UpstreamServerError,
    UpstreamTimeoutError,
)
from omnirelay.providers import tokenizer
from omnirelay.providers.http import HttpAdapter, HttpTransport
from omnirelay.providers.sse import SSEDecoder, SSEEvent
from omnirelay.providers.upstream import ErrorBody, classify, present, request_id, retry_after

# ---------------------------------------------------------------- constants

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com"
API_VERSION = "v1beta"
KEY_HEADER = "x-goog-api-key"
PROVIDER = "gemini"
# The largest page ListModels allows: one request lists every model Gemini offers today.
_MODELS_PAGE = "1000"
# A page token that never ends (a broken upstream or proxy) must not keep a health probe paging for ever.
_MAX_MODEL_PAGES = 10

_CONTENT_FILTER = frozenset(
    {
        "SAFETY",
        "RECITATION",
        "BLOCKLIST",
        "PROHIBITED_CONTENT",
        "SPII",
        "IMAGE_SAFETY",
        "IMAGE_PROHIBITED_CONTENT",
        "IMAGE_RECITATION",
    }
)
# The model broke off for a reason of its own, not the caller's limits or a filter.
_ERROR = frozenset(
    {
        "MALFORMED_FUNCTION_CALL",
        "UNEXPECTED_TOOL_CALL",
        "TOO_MANY_TOOL_CALLS",
        "MISSING_THOUGHT_SIGNATURE",
        "LANGUAGE",
        "OTHER",
        "IMAGE_OTHER",
        "NO_IMAGE",
    }
)
_FINISH = {
    "STOP": FinishReason.STOP,
    "MAX_TOKENS": FinishReason.LENGTH,
    **dict.fromkeys(_CONTENT_FILTER, FinishReason.CONTENT_FILTER),
    **dict.fromkeys(_ERROR, FinishReason.ERROR),
}

_TOOL_MODES = {
    ToolChoiceMode.AUTO: "AUTO",
    ToolChoiceMode.NONE: "NONE",
    ToolChoiceMode.REQUIRED: "ANY",
    ToolChoiceMode.FUNCTION: "ANY",
}

# google.rpc status → error class; INVALID_ARGUMENT and RESOURCE_EXHAUSTED need a closer look.
_BY_STATUS: dict[str, type[UpstreamError]] = {
    "UNAUTHENTICATED": UpstreamAuthenticationError,
    "PERMISSION_DENIED": UpstreamPermissionError,
    "NOT_FOUND": UpstreamNotFoundError,
    "UNAVAILABLE": OverloadedError,
    "INTERNAL": UpstreamServerError,
    "UNKNOWN": UpstreamServerError,
    "DEADLINE_EXCEEDED": UpstreamTimeoutError,
    "FAILED_PRECONDITION": UpstreamInvalidRequestError,
    "OUT_OF_RANGE": UpstreamInvalidRequestError,
}
_RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
_ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
_QUOTA_FAILURE = "type.googleapis.com/google.rpc.QuotaFailure"


class GeminiProvider(HttpAdapter):
    """Chat and embeddings from the Gemini API over one pooled HTTP client."""

    def __init__(self, settings: HttpProviderSettings, transport: HttpTransport) -> None:
        super().__init__(settings, transport)
        self._headers = {KEY_HEADER: settings.api_key} if settings.api_key else {}
        base = settings.base_url.rstrip("/")
        # The transport's client resolves relative paths against base_url; without one, go absolute.
        prefix = "" if base else DEFAULT_BASE_URL
        version = "" if base.endswith("/" + API_VERSION) else "/" + API_VERSION
        self._models_path = f"{prefix}{version}/models/"

    @property
    def unsupported_parameters(self) -> frozenset[str]:
        return frozenset()

    def _path(self, model: str, method: str) -> str:
        return f"{self._models_path}{model_id(model)}:{method}"

    async def complete(self, call: ProviderCall) -> CompletionResult:
        path = self._path(call.deployment.provider_model, "generateContent")
        response = await self._transport.post(path, build_body(call, stream=False), self._headers)
        if response.status >= 300:
            raise parse_error(response.status, response.headers, response.body, self.name)
        try:
            data = response.json()
        except ValueError:
            raise _malformed(self.name, "the answer is not JSON", response.status) from None
        result = parse_response(data, self.name)
        if not result.upstream_request_id:
            return CompletionResult(result.choices, result.usage, request_id(response.headers))
        return result

    async def stream(self, call: ProviderCall) -> AsyncGenerator[StreamChunk, None]:
        path = self._path(call.deployment.provider_model, "streamGenerateContent")
        body = build_body(call, stream=True)
        transport = self._transport
        async with transport.stream(path, body, self._headers, {"alt": "sse"}) as response:
            if response.status_code >= 300:
                raw = b"".join([piece async for piece in transport.chunks(response)])
                raise parse_error(response.status_code, response.headers, raw, self.name)
            decoder = SSEDecoder()
            parser = GeminiStreamParser(self.name)
            try:
                async for piece in transport.chunks(response):
                    for event in decoder.feed(piece):
                        for chunk in parser.feed(event):
                            yield chunk
            except UpstreamConnectionError as exc:
                raise StreamBrokenError(
                    f"{self.name}: the stream broke off: {exc.message}", provider=self.name
                ) from None
            for event in decoder.flush():
                for chunk in parser.feed(event):
                    yield chunk
            stray = [line for line in decoder.stray if line.strip()]
            if stray:
                raise stray_error(stray, response.headers, self.name)
            for chunk in parser.end():
                yield chunk

    async def embed(self, deployment: Deployment, inputs: Sequence[str], dimensions: int) -> EmbeddingResult:
        if not inputs:
            return EmbeddingResult((), TokenUsage(estimated=True))
        path = self._path(deployment.provider_model, "batchEmbedContents")
        body = build_embed_body(deployment.provider_model, inputs, dimensions)
        response = await self._transport.post(path, body, self._headers)
        if response.status >= 300:
            raise parse_error(response.status, response.headers, response.body, self.name)
        try:
            data = response.json()
        except ValueError:
            raise _malformed(self.name, "the answer is not JSON", response.status) from None
        vectors = parse_embeddings(data, len(inputs), self.name)
        # batchEmbedContents reports no usage; the local estimate stands in, marked as such.
        tokens = sum(tokenizer.count_text(text) for text in inputs)
        return EmbeddingResult(vectors, TokenUsage(input_tokens=tokens, estimated=True))

    async def list_models(self) -> tuple[str, ...]:
        """GET /v1beta/models (ListModels), page by page (one page in practice): free, for health probes."""
        ids: list[str] = []
        params = {"pageSize": _MODELS_PAGE}
        for _ in range(_MAX_MODEL_PAGES):
            response = await self._transport.get(self._models_path.rstrip("/"), self._headers, params)
            if response.status >= 300:
                raise parse_error(response.status, response.headers, response.body, self.name)
            try:
                data = response.json()
            except ValueError:
                raise _malformed(self.name, "the model list is not JSON", response.status) from None
            page, token = parse_models(data, self.name)
            ids.extend(page)
            if not token:
                break
            params = {"pageSize": _MODELS_PAGE, "pageToken": token}
        return tuple(ids)


def model_id(model: str) -> str:
    """The model as it goes in the URL path: no ``models/`` prefix, reserved characters escaped."""
    return quote(model.removeprefix("models/"), safe="+=,;")


# ---------------------------------------------------------------- request mapping


def build_body(call: ProviderCall, stream: bool) -> dict[str, Any]:
    """The generateContent body; streaming changes only the URL, so ``stream`` changes nothing here."""
    request = call.request
    system, contents = _contents(request.messages)
    body: dict[str, Any] = {"contents": contents}
    if system:
        body["systemInstruction"] = {"parts": system}
    if request.tools:
        body["tools"] = [{"functionDeclarations": [_declaration(t) for t in request.tools]}]
        tool_config = _tool_config(request.tool_choice)
        if tool_config:
            body["toolConfig"] = tool_config
    config = _generation_config(call.sampling)
    if config:
        body["generationConfig"] = config
    return body


def _contents(messages: Iterable[Message]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    # Gemini answers a function by name; ours carry the id of the call they answer.
    names: dict[str, str] = {}
    for position, message in enumerate(messages):
        if message.role is Role.SYSTEM:
            system.extend({"text": p.text} for p in message.parts if isinstance(p, TextPart))
            continue
        if message.role is Role.TOOL:
            role, parts = "user", [_function_response(message, names, position)]
        elif message.role is Role.ASSISTANT:
            role, parts = "model", _parts(message.parts)
            for call in message.tool_calls:
                names[call.id] = call.name
                parts.append({"functionCall": {"name": call.name, "args": _args(call, position)}})
        else:
            role, parts = "user", _parts(message.parts)
        if not parts:
            continue  # Gemini refuses a turn without parts.
        # Responses to parallel calls must share one turn; adjacent turns of a role merge anyway.
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})
    return system, contents


def _parts(parts: Iterable[TextPart | ImagePart]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for part in parts:
        if isinstance(part, TextPart):
            out.append({"text": part.text})
        else:
            out.append(_image(part))
    return out


def _image(part: ImagePart) -> dict[str, Any]:
    if part.data:
        return _inline(part.media_type, base64.b64encode(part.data).decode("ascii"))
    if part.url.startswith("data:"):
        header, _, payload = part.url[5:].partition(",")
        if not header.endswith(";base64"):
            payload = base64.b64encode(unquote_to_bytes(payload)).decode("ascii")
        return _inline(header.split(";")[0] or part.media_type, payload)
    # Gemini fetches File API URIs, gs:// objects and (newer models) public http(s) URLs itself.
    file_data = {"fileUri": part.url}
    mime = part.media_type or mimetypes.guess_type(part.url)[0]
    if mime:
        file_data["mimeType"] = mime
    return {"fileData": file_data}


def _inline(media_type: str, data: str) -> dict[str, Any]:
    return {"inlineData": {"mimeType": media_type or "image/png", "data": data}}


def _args(call: ToolCall, position: int) -> Any:
    try:
        args = json.loads(call.arguments_json or "{}")
    except ValueError:
        args = None
    if not isinstance(args, dict):
        raise InvalidArgumentError(
            [
                FieldViolation(
                    f"messages[{position}].tool_calls", f"arguments of {call.name!r} are not a JSON object"
                )
            ]
        )
    return args


def _function_response(message: Message, names: Mapping[str, str], position: int) -> dict[str, Any]:
    name = names.get(message.tool_call_id) or message.name
    if not name:
        raise InvalidArgumentError(
            [
                FieldViolation(
                    f"messages[{position}].tool_call_id",
                    f"{message.tool_call_id!r} answers no earlier tool call (Gemini needs the function name)",
                )
            ]
        )
    text = message.text
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    # The response must be a JSON object; anything else is wrapped, as Google's own SDKs do.
    response = value if isinstance(value, dict) else {"result": text}
    return {"functionResponse": {"name": name, "response": response}}


def _declaration(tool: ToolSpec) -> dict[str, Any]:
    declaration: dict[str, Any] = {"name": tool.name}
    if tool.description:
        declaration["description"] = tool.description
    # Gemini rejects an OBJECT schema without properties; a function without arguments has none.
    if tool.parameters and tool.parameters.get("properties"):
        # The JSON-Schema field, not the OpenAPI-subset ``parameters``, so that schemas written for
        # other providers (additionalProperties, $defs, const…) are accepted as they are.
        declaration["parametersJsonSchema"] = dict(tool.parameters)
    return declaration


def _tool_config(choice: ToolChoice) -> dict[str, Any]:
    mode = _TOOL_MODES.get(choice.mode)
    if mode is None:
        return {}
    config: dict[str, Any] = {"mode": mode}
    if choice.mode is ToolChoiceMode.FUNCTION and choice.name:
        config["allowedFunctionNames"] = [choice.name]
    return {"functionCallingConfig": config}


def _generation_config(sampling: Sampling) -> dict[str, Any]:
    config = present(
        (
            ("maxOutputTokens", sampling.max_tokens),
            ("temperature", sampling.temperature),
            ("topP", sampling.top_p),
            ("topK", sampling.top_k),
            ("seed", sampling.seed),
            ("candidateCount", sampling.n),
            ("presencePenalty", sampling.presence_penalty),
            ("frequencyPenalty", sampling.frequency_penalty),
        )
    )
    if sampling.stop:
        config["stopSequences"] = list(sampling.stop)
    fmt = sampling.response_format
    if fmt is not None and fmt.type is not ResponseFormatType.TEXT:
        config["responseMimeType"] = "application/json"
        if fmt.type is ResponseFormatType.JSON_SCHEMA and fmt.json_schema:
            config["responseJsonSchema"] = dict(fmt.json_schema)
    if sampling.logprobs is not None:
        config["responseLogprobs"] = sampling.logprobs
    if sampling.top_logprobs is not None:
        config["responseLogprobs"] = True
        config["logprobs"] = sampling.top_logprobs
    return config


def build_embed_body(model: str, inputs: Iterable[str], dimensions: int) -> dict[str, Any]:
    name = "models/" + model.removeprefix("models/")
    requests = []
    for text in inputs:
        item: dict[str, Any] = {"model": name, "content": {"parts": [{"text": text}]}}
        if dimensions:
            item["outputDimensionality"] = dimensions
        requests.append(item)
    return {"requests": requests}


# ---------------------------------------------------------------- response mapping


def parse_response(data: Any, provider: str = PROVIDER) -> CompletionResult:
    """A generateContent answer, normalised. A blocked prompt raises ContentFilteredError."""
    if not isinstance(data, dict):
        raise _malformed(provider, "the answer is not a JSON object")
    if isinstance(data.get("error"), dict):
        raise _from_error(data["error"], 0, {}, provider)
    _check_prompt_feedback(data, provider)
    candidates = data.get("candidates")
    if not isinstance(candidates, list) or not candidates:
        raise _malformed(provider, "the answer has no candidates")
    try:
        choices = tuple(_choice(c, position) for position, c in enumerate(candidates))
        usage = parse_usage(data.get("usageMetadata"))
    except (AttributeError, TypeError, ValueError) as exc:
        raise _malformed(provider, f"unexpected answer shape ({type(exc).__name__})") from None
    return CompletionResult(
        tuple(sorted(choices, key=lambda c: c.index)), usage, str(data.get("responseId", ""))
    )


def _choice(candidate: Mapping[str, Any], position: int) -> Choice:
    index = int(candidate.get("index", position))
    text: list[str] = []
    reasoning: list[str] = []
    calls: list[ToolCall] = []
    for part in _candidate_parts(candidate):
        if "text" in part:
            (reasoning if part.get("thought") else text).append(part["text"])
        elif "functionCall" in part:
            calls.append(_tool_call(part["functionCall"], len(calls)))
    finish = finish_reason(candidate.get("finishReason"), bool(calls))
    return Choice(
        index=index,
        text="".join(text),
        finish_reason=finish,
        tool_calls=tuple(calls),
        reasoning="".join(reasoning),
        logprobs=_logprobs(candidate.get("logprobsResult")),
    )


def _candidate_parts(candidate: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    # MAX_TOKENS (or a filtered answer) may come with no content, or content without parts.
    content = candidate.get("content") or {}
    parts = content.get("parts") or []
    if not isinstance(parts, list):
        raise TypeError("parts")
    return parts


def _tool_call(function_call: Mapping[str, Any], position: int) -> ToolCall:
    call_id = function_call.get("id") or f"call_{position}"
    args = function_call.get("args") or {}
    return ToolCall(str(call_id), str(function_call["name"]), _dump_args(args))


def _dump_args(args: Any) -> str:
    return json.dumps(args, separators=(",", ":"), ensure_ascii=False)


def finish_reason(reason: Any, has_calls: bool) -> FinishReason:
    """Gemini's finishReason; STOP after a function call means the call is the answer."""
    mapped = _FINISH.get(reason, FinishReason.UNKNOWN) if reason else FinishReason.UNKNOWN
    if has_calls and mapped is FinishReason.STOP:
        return FinishReason.TOOL_CALLS
    return mapped


def parse_usage(meta: Any) -> TokenUsage:
    """usageMetadata: thoughts are counted apart from the answer, cached tokens inside the prompt."""
    if not isinstance(meta, dict):
        return TokenUsage()
    thoughts = int(meta.get("thoughtsTokenCount", 0))
    return TokenUsage(
        # Tokens of tool-use prompts (search results, code output) are billed as input, counted apart.
        input_tokens=int(meta.get("promptTokenCount", 0)) + int(meta.get("toolUsePromptTokenCount", 0)),
        output_tokens=int(meta.get("candidatesTokenCount", 0)) + thoughts,
        cached_input_tokens=int(meta.get("cachedContentTokenCount", 0)),
        reasoning_tokens=thoughts,
    )


def _logprobs(result: Any) -> tuple[TokenLogprob, ...] | None:
    if not isinstance(result, dict):
        return None
    chosen = result.get("chosenCandidates") or []
    return tuple(TokenLogprob(str(c.get("token", "")), float(c.get("logProbability", 0.0))) for c in chosen)


def _check_prompt_feedback(data: Mapping[str, Any], provider: str) -> None:
    feedback = data.get("promptFeedback")
    if isinstance(feedback, dict) and feedback.get("blockReason"):
        reason = str(feedback["blockReason"])
        raise ContentFilteredError(
            f"{provider}: the prompt was blocked ({reason})",
            provider=provider,
            http_status=200,
            upstream_request_id=str(data.get("responseId", "")),
            upstream_code=reason,
        )


def parse_embeddings(data: Any, expected: int, provider: str = PROVIDER) -> tuple[tuple[float, ...], ...]:
    try:
        vectors = tuple(tuple(float(v) for v in item["values"]) for item in data["embeddings"])
    except (KeyError, TypeError, ValueError):
        raise _malformed(provider, "the embeddings answer has an unexpected shape") from None
    if len(vectors) != expected:
        raise _malformed(provider, f"{len(vectors)} embeddings for {expected} inputs")
    return vectors


def parse_models(data: Any, provider: str = PROVIDER) -> tuple[tuple[str, ...], str]:
    """One ListModels page: model ids without the ``models/`` prefix, and the next page's token."""
    try:
        ids = tuple(str(m["name"]).removeprefix("models/") for m in data.get("models") or ())
        token = str(data.get("nextPageToken") or "")
    except (KeyError, TypeError, AttributeError):
        raise _malformed(provider, "the model list has an unexpected shape") from None
    return ids, token


# ---------------------------------------------------------------- stream parsing


class GeminiStreamParser:
    """Turns streamGenerateContent chunks into stream chunks.

    Each chunk is a whole GenerateContentResponse: text parts are deltas, a
    function call arrives complete, ``finishReason`` ends its candidate, and
    ``usageMetadata`` (repeated, growing) is final only in the last chunk.
    """

    __slots__ = ("_calls", "_finished", "_provider", "_usage")

    def __init__(self, provider: str = PROVIDER) -> None:
        self._provider = provider
        self._calls: dict[int, int] = {}
        self._finished: dict[int, bool] = {}
        self._usage: Any = None

    def feed(self, event: SSEEvent) -> list[StreamChunk]:
        try:
            data = json.loads(event.data)
        except ValueError:
            raise _malformed(self._provider, "a stream frame is not JSON") from None
        return self.feed_json(data)

    def feed_json(self, data: Any) -> list[StreamChunk]:
        """One decoded chunk (an SSE frame's data, or an element of the JSON-array stream)."""
        if not isinstance(data, dict):
            raise _malformed(self._provider, "a stream chunk is not a JSON object")
        if isinstance(data.get("error"), dict):
            raise _from_error(data["error"], 0, {}, self._provider)
        _check_prompt_feedback(data, self._provider)
        if "usageMetadata" in data:
            self._usage = data["usageMetadata"]
        chunks: list[StreamChunk] = []
        try:
            for position, candidate in enumerate(data.get("candidates") or ()):
                self._candidate(candidate, position, chunks)
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise _malformed(self._provider, f"unexpected stream chunk ({type(exc).__name__})") from None
        return chunks

    def _candidate(self, candidate: Mapping[str, Any], position: int, out: list[StreamChunk]) -> None:
        index = int(candidate.get("index", position))
        self._finished.setdefault(index, False)
        for part in _candidate_parts(candidate):
            if "text" in part:
                if not part["text"]:
                    continue
                if part.get("thought"):
                    out.append(TextDelta(index, "", reasoning=part["text"]))
                else:
                    out.append(TextDelta(index, part["text"]))
            elif "functionCall" in part:
                number = self._calls.get(index, 0)
                self._calls[index] = number + 1
                call = _tool_call(part["functionCall"], number)
                out.append(ToolCallDelta(index, number, call.id, call.name, call.arguments_json))
        reason = candidate.get("finishReason")
        if reason:
            self._finished[index] = True
            out.append(
                FinishChunk(
                    index,
                    finish_reason(reason, index in self._calls),
                    _logprobs(candidate.get("logprobsResult")),
                )
            )

    def end(self) -> list[StreamChunk]:
        """The stream closed: usage if every candidate finished, else the stream broke."""
        if not self._finished or not all(self._finished.values()):
            raise StreamBrokenError(
                f"{self._provider}: the stream ended before the answer was finished", provider=self._provider
            )
        # No usageMetadata in any chunk: no report, so the gateway estimates.
        return [UsageChunk(parse_usage(self._usage))] if self._usage else []


def parse_stream_array(body: bytes, provider: str = PROVIDER) -> list[StreamChunk]:
    """The whole body of streamGenerateContent without ``alt=sse``: one JSON array of chunks."""
    try:
        items = json.loads(body)
    except ValueError:
        raise _malformed(provider, "the streamed array is not JSON (cut short?)") from None
    if not isinstance(items, list):
        raise _malformed(provider, "the streamed answer is not a JSON array")
    parser = GeminiStreamParser(provider)
    chunks: list[StreamChunk] = []
    for item in items:
        chunks.extend(parser.feed_json(item))
    chunks.extend(parser.end())
    return chunks


# ---------------------------------------------------------------- error mapping


def parse_error(
    status: int, headers: Mapping[str, str], body: bytes, provider: str = PROVIDER
) -> UpstreamError:
    """A non-2xx answer as an error-tree class; a body that is not Google's shape classifies by status."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    # The non-SSE stream wraps its error in the array framing.
    if isinstance(data, list) and data:
        data = data[0]
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return classify(provider, status, ErrorBody(message=""), headers)
    return _from_error(error, status, headers, provider)


def stray_error(lines: Sequence[str], headers: Mapping[str, str], provider: str = PROVIDER) -> UpstreamError:
    """Gemini's mid-stream failure: a raw JSON error body after the SSE frames (HTTP status already 200)."""
    text = "\n".join(lines)
    try:
        data = json.loads(text)
    except ValueError:
        return StreamBrokenError(f"{provider}: the stream ended with a non-SSE line", provider=provider)
    if isinstance(data, list) and data:
        data = data[0]
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return StreamBrokenError(f"{provider}: the stream ended with an unexpected body", provider=provider)
    return _from_error(error, 0, headers, provider)


def _from_error(
    error: Mapping[str, Any], status: int, headers: Mapping[str, str], provider: str
) -> UpstreamError:
    code = error.get("code")
    http_status = status or (code if isinstance(code, int) else 0)
    google_status = str(error.get("status", ""))
    message = str(error.get("message", ""))
    details = [d for d in error.get("details") or () if isinstance(d, dict)]
    reason = next((str(d.get("reason", "")) for d in details if d.get("@type") == _ERROR_INFO), "")
    delay = retry_after(headers)
    if delay is None:
        delay = _retry_delay(details)
    cls = _error_class(google_status, message, reason, details)
    upstream_code = reason or google_status
    if cls is None:
        return classify(
            provider,
            http_status,
            ErrorBody(message=message, code=upstream_code, retry_after_seconds=delay),
            headers,
        )
    return cls(
        f"{provider}: {message or google_status or f'HTTP {http_status}'}",
        provider=provider,
        http_status=http_status,
        upstream_request_id=request_id(headers),
        retry_after_seconds=delay,
        upstream_code=upstream_code,
    )


def _error_class(
    status: str, message: str, reason: str, details: Sequence[Mapping[str, Any]]
) -> type[UpstreamError] | None:
    # A bad key is 400 INVALID_ARGUMENT on Gemini, not 401: only the ErrorInfo reason says so.
    if reason in ("API_KEY_INVALID", "API_KEY_EXPIRED") or "API key not valid" in message:
        return UpstreamAuthenticationError
    if status == "RESOURCE_EXHAUSTED":
        return QuotaExhaustedError if _quota_exhausted(details) else RateLimitedError
    if status == "INVALID_ARGUMENT":
        if "exceeds the maximum number of tokens" in message:
            return ContextLengthExceededError
        return UpstreamInvalidRequestError
    return _BY_STATUS.get(status)


def _quota_exhausted(details: Sequence[Mapping[str, Any]]) -> bool:
    """RESOURCE_EXHAUSTED means "slow down" unless the violated quota is per day or has no allowance.

    The message ("You exceeded your current quota, please check your plan and billing details")
    is the same for both; a per-minute quota passes in seconds, a daily or zero one does not.
    """
    for detail in details:
        if detail.get("@type") != _QUOTA_FAILURE:
            continue
        for violation in detail.get("violations") or ():
            if not isinstance(violation, dict):
                continue
            quota_id = str(violation.get("quotaId", ""))
            if "PerDay" in quota_id or str(violation.get("quotaValue", "")) == "0":
                return True
    return False


def _retry_delay(details: Sequence[Mapping[str, Any]]) -> float | None:
    for detail in details:
        if detail.get("@type") != _RETRY_INFO:
            continue
        value = detail.get("retryDelay")
        # JSON carries a google.protobuf.Duration as "15s" or "0.250s".
        if isinstance(value, str) and value.endswith("s"):
            try:
                return max(0.0, float(value[:-1]))
            except ValueError:
                return None
    return None


def _malformed(provider: str, what: str, status: int = 200) -> MalformedResponseError:
    return MalformedResponseError(f"{provider}: {what}", provider=provider, http_status=status)
