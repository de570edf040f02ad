"""OpenAI Chat Completions, and the OpenAI-compatible servers that speak it with small differences.

One adapter serves api.openai.com and every ``flavor`` (vLLM, llama.cpp,
Ollama's /v1, Groq, DeepSeek, Mistral, Together, OpenRouter, xAI). What a
flavor does differently is declared once in ``FLAVORS`` below and read in the
one place it matters, so a new flavor is a table row, not a code path.

Usage semantics match OpenAI's own: ``prompt_tokens`` already includes cached
tokens and ``completion_tokens`` already includes reasoning tokens, so they map
straight onto ``TokenUsage``. A server that reports no usage gets an estimate
from the local tokenizer, flagged ``estimated``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import sys
from array import array
from collections.abc import AsyncGenerator, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import httpx
from msgspec import structs

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
    TextPart,
    TokenLogprob,
    TokenUsage,
    ToolCall,
    ToolCallDelta,
    ToolChoiceMode,
    UsageChunk,
)
from omnirelay.errors import (
    MalformedResponseError,
    StreamBrokenError,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamTimeoutError,
)
from omnirelay.providers import tokenizer, upstream
from omnirelay.providers.http import HttpAdapter, HttpTransport, UpstreamResponse
from omnirelay.providers.sse import SSEDecoder, SSEEvent
from omnirelay.providers.upstream import ErrorBody

# --- constants: what each OpenAI-compatible flavor does differently -------------------------------


@dataclass(frozen=True, slots=True)
class Quirks:
    """How one OpenAI-compatible server differs from api.openai.com."""

    # api.openai.com deprecated max_tokens (o-series reject it); compatible servers only know max_tokens.
    max_tokens_key: str = "max_tokens"
    seed_key: str = "seed"
    sends_top_k: bool = False
    # Servers that reject (or ignore) stream_options and report usage their own way.
    stream_usage_option: bool = True
    # Message/delta fields carrying the model's reasoning text.
    reasoning_keys: tuple[str, ...] = ()
    # Groq puts streamed usage in x_groq.usage on the last chunk instead of a usage chunk.
    usage_in_x_groq: bool = False
    unsupported: frozenset[str] = frozenset({"top_k"})


FLAVORS: Mapping[str, Quirks] = {
    "": Quirks(max_tokens_key="max_completion_tokens"),
    "vllm": Quirks(
        sends_top_k=True, reasoning_keys=("reasoning_content", "reasoning"), unsupported=frozenset()
    ),
    "llamacpp": Quirks(sends_top_k=True, reasoning_keys=("reasoning_content",), unsupported=frozenset()),
    # Ollama's /v1 ignores n and logprobs (docs/api/openai-compatibility.mdx).
    "ollama": Quirks(
        reasoning_keys=("reasoning",), unsupported=frozenset({"top_k", "n", "logprobs", "top_logprobs"})
    ),
    "groq": Quirks(
        stream_usage_option=False,
        reasoning_keys=("reasoning",),
        usage_in_x_groq=True,
        unsupported=frozenset({"top_k", "n", "logprobs", "top_logprobs"}),
    ),
    "deepseek": Quirks(reasoning_keys=("reasoning_content",)),
    "mistral": Quirks(seed_key="random_seed", stream_usage_option=False),
    "together": Quirks(sends_top_k=True, reasoning_keys=("reasoning",), unsupported=frozenset()),
    "openrouter": Quirks(sends_top_k=True, reasoning_keys=("reasoning",), unsupported=frozenset()),
    "xai": Quirks(reasoning_keys=("reasoning_content",)),
}

_FINISH = {
    "stop": FinishReason.STOP,
    "length": FinishReason.LENGTH,
    "model_length": FinishReason.LENGTH,  # Mistral
    "tool_calls": FinishReason.TOOL_CALLS,
    "function_call": FinishReason.TOOL_CALLS,  # the pre-tools API, still sent by some servers
    "content_filter": FinishReason.CONTENT_FILTER,
    "error": FinishReason.ERROR,
}
_TOOL_CHOICE = {ToolChoiceMode.AUTO: "auto", ToolChoiceMode.NONE: "none", ToolChoiceMode.REQUIRED: "required"}
_DONE = "[DONE]"


def quirks(flavor: str) -> Quirks:
    return FLAVORS.get(flavor, FLAVORS[""])


# --- request mapping ----------------------------------------------------------------------------------


def build_body(call: ProviderCall, stream: bool, flavor: str = "") -> dict[str, Any]:
    """The /chat/completions request body for ``call``."""
    q = quirks(flavor)
    request, s = call.request, call.sampling
    body: dict[str, Any] = {
        "model": call.deployment.provider_model,
        "messages": [_message(m) for m in request.messages],
    }
    if request.tools:
        body["tools"] = [_tool(t.name, t.description, t.parameters, t.strict) for t in request.tools]
        choice = request.tool_choice
        if choice.mode is ToolChoiceMode.FUNCTION:
            body["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
        elif choice.mode in _TOOL_CHOICE:
            body["tool_choice"] = _TOOL_CHOICE[choice.mode]
    if s.max_tokens is not None:
        body[q.max_tokens_key] = s.max_tokens
    if s.seed is not None:
        body[q.seed_key] = s.seed
    if s.top_k is not None and q.sends_top_k:
        body["top_k"] = s.top_k
    if s.stop:
        body["stop"] = list(s.stop)
    for key in ("temperature", "top_p", "n", "presence_penalty", "frequency_penalty"):
        value = getattr(s, key)
        if value is not None:
            body[key] = value
    if s.response_format is not None and s.response_format.type is not ResponseFormatType.TEXT:
        fmt = s.response_format
        if fmt.type is ResponseFormatType.JSON_OBJECT:
            body["response_format"] = {"type": "json_object"}
        else:
            schema = {
                "name": fmt.schema_name or "response",
                "schema": dict(fmt.json_schema or {}),
                "strict": fmt.strict,
            }
            body["response_format"] = {"type": "json_schema", "json_schema": schema}
    if s.logprobs is not None or s.top_logprobs is not None:
        # top_logprobs is refused unless logprobs is on.
        body["logprobs"] = bool(s.logprobs) or s.top_logprobs is not None
        if s.top_logprobs is not None:
            body["top_logprobs"] = s.top_logprobs
    if stream:
        body["stream"] = True
        if q.stream_usage_option:
            body["stream_options"] = {"include_usage": True}
    return body


def _message(m: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": m.role.value}
    if m.role is Role.TOOL:
        out["tool_call_id"] = m.tool_call_id
        out["content"] = m.text
        return out
    if m.name:
        out["name"] = m.name
    if m.role is Role.ASSISTANT:
        # Content may be null only when the turn is all tool calls.
        out["content"] = m.text or (None if m.tool_calls else "")
        if m.tool_calls:
            out["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments_json}}
                for c in m.tool_calls
            ]
        return out
    if any(isinstance(p, ImagePart) for p in m.parts) and m.role is Role.USER:
        out["content"] = [_part(p) for p in m.parts]
    else:
        out["content"] = m.text
    return out


def _part(p: TextPart | ImagePart) -> dict[str, Any]:
    if isinstance(p, TextPart):
        return {"type": "text", "text": p.text}
    url = p.url or f"data:{p.media_type or 'image/png'};base64,{base64.b64encode(p.data).decode()}"
    image: dict[str, Any] = {"url": url}
    if p.detail:
        image["detail"] = p.detail
    return {"type": "image_url", "image_url": image}


def _tool(name: str, description: str, parameters: Mapping[str, Any], strict: bool) -> dict[str, Any]:
    function: dict[str, Any] = {"name": name}
    if description:
        function["description"] = description
    if parameters:
        function["parameters"] = dict(parameters)
    if strict:
        function["strict"] = True
    return {"type": "function", "function": function}


def embeddings_body(model: str, inputs: Sequence[str], dimensions: int) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "input": list(inputs), "encoding_format": "float"}
    if dimensions:
        body["dimensions"] = dimensions
    return body


# --- response mapping ---------------------------------------------------------------------------------


def parse_response(
    data: Any, *, flavor: str = "", provider: str = "openai", messages: Sequence[Message] = ()
) -> CompletionResult:
    """A /chat/completions JSON body as a CompletionResult (request id left for the caller)."""
    choices_raw = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices_raw, list):
        raise MalformedResponseError(f"{provider}: response has no choices list", provider=provider)
    q = quirks(flavor)
    try:
        choices = tuple(_choice(c, i, q) for i, c in enumerate(choices_raw))
    except (AttributeError, TypeError, ValueError, KeyError) as exc:
        raise MalformedResponseError(
            f"{provider}: unreadable choice ({type(exc).__name__})", provider=provider
        ) from None
    usage = data.get("usage")
    if isinstance(usage, dict):
        return CompletionResult(choices, parse_usage(usage))
    produced = "".join(
        c.text + c.reasoning + "".join(t.arguments_json for t in c.tool_calls) for c in choices
    )
    return CompletionResult(choices, _estimate(messages, produced))


def _choice(raw: dict[str, Any], position: int, q: Quirks) -> Choice:
    message = raw.get("message") or {}
    text, reasoning = _content(message.get("content"))
    for key in q.reasoning_keys:
        reasoning += message.get(key) or ""
    calls = tuple(
        ToolCall(c.get("id") or "", c["function"]["name"], _arguments(c["function"].get("arguments")))
        for c in message.get("tool_calls") or ()
    )
    legacy = message.get("function_call")
    if legacy:
        calls += (ToolCall("", legacy["name"], _arguments(legacy.get("arguments"))),)
    refusal = message.get("refusal") or ""
    return Choice(
        index=raw.get("index", position),
        text=text,
        finish_reason=_finish(raw.get("finish_reason"), bool(refusal)),
        tool_calls=calls,
        reasoning=reasoning,
        refusal=refusal,
        logprobs=_logprobs(raw.get("logprobs")),
    )


def _content(value: Any) -> tuple[str, str]:
    """(text, reasoning) from a content string, null, or a list of parts (Mistral's thinking blocks)."""
    if value is None or isinstance(value, str):
        return value or "", ""
    text: list[str] = []
    reasoning: list[str] = []
    for part in value:
        kind = part.get("type")
        if kind == "text":
            text.append(part.get("text") or "")
        elif kind == "thinking":
            thinking = part.get("thinking")
            if isinstance(thinking, list):
                reasoning.extend(t.get("text") or "" for t in thinking)
            else:
                reasoning.append(thinking or "")
    return "".join(text), "".join(reasoning)


def _arguments(value: Any) -> str:
    # Some compatible servers send the arguments as an object, not a JSON string.
    if isinstance(value, str):
        return value
    return json.dumps(value if value is not None else {}, separators=(",", ":"))


def _finish(value: Any, refused: bool) -> FinishReason:
    reason = _FINISH.get(value, FinishReason.UNKNOWN) if value else FinishReason.UNKNOWN
    # OpenAI answers a refusal with finish "stop"; the refusal is the more useful fact.
    return FinishReason.REFUSAL if refused and reason is FinishReason.STOP else reason


def _logprobs(value: Any) -> tuple[TokenLogprob, ...] | None:
    if not isinstance(value, dict):
        return None
    return tuple(TokenLogprob(t["token"], float(t["logprob"])) for t in value.get("content") or ())


def parse_usage(usage: Mapping[str, Any]) -> TokenUsage:
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
    if cached is None:
        cached = usage.get("prompt_cache_hit_tokens")  # DeepSeek's name for cached input
    completion = usage.get("completion_tokens_details") or {}
    return TokenUsage(
        input_tokens=int(usage.get("prompt_tokens") or 0),
        output_tokens=int(usage.get("completion_tokens") or 0),
        cached_input_tokens=int(cached or 0),
        reasoning_tokens=int(completion.get("reasoning_tokens") or 0),
    )


def _estimate(messages: Sequence[Message], produced: str) -> TokenUsage:
    return TokenUsage(
        input_tokens=tokenizer.count_messages(messages),
        output_tokens=tokenizer.count_text(produced),
        estimated=True,
    )


def parse_embeddings(data: Any, provider: str = "openai") -> EmbeddingResult:
    """An /embeddings body; vectors may be float arrays or base64 little-endian float32."""
    try:
        rows = sorted(data["data"], key=lambda r: r.get("index", 0))
        vectors = tuple(_vector(r["embedding"]) for r in rows)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise MalformedResponseError(
            f"{provider}: unreadable embeddings ({type(exc).__name__})", provider=provider
        ) from None
    usage = data.get("usage") or {}
    return EmbeddingResult(vectors, TokenUsage(input_tokens=int(usage.get("prompt_tokens") or 0)))


def parse_models(data: Any, provider: str = "openai") -> tuple[str, ...]:
    """A /models body (``{"object": "list", "data": [{"id": …}, …]}``) as its model ids, in order."""
    try:
        return tuple(str(m["id"]) for m in data["data"])
    except (KeyError, TypeError) as exc:
        raise MalformedResponseError(
            f"{provider}: unreadable model list ({type(exc).__name__})", provider=provider
        ) from None


def _vector(value: Any) -> tuple[float, ...]:
    if isinstance(value, str):
        floats = array("f", base64.b64decode(value, validate=True))
        if sys.byteorder == "big":
            floats.byteswap()
        return tuple(floats)
    return tuple(float(v) for v in value)


# --- stream parsing -----------------------------------------------------------------------------------


@dataclass(slots=True)
class _ChoiceState:
    finished: bool = False
    refused: bool = False
    logprobs: list[TokenLogprob] | None = None


@dataclass
class StreamParser:
    """Turns /chat/completions SSE events into stream chunks.

    Usage can arrive on a ``choices: []`` chunk (include_usage), on the finish
    chunk (DeepSeek, Mistral) or in ``x_groq``; it is held and sent last, at
    ``[DONE]``, so the caller always sees exactly one UsageChunk at the end.
    """

    provider: str = "openai"
    flavor: str = ""
    messages: Sequence[Message] = ()
    done: bool = False
    _quirks: Quirks = field(init=False)
    _choices: dict[int, _ChoiceState] = field(default_factory=dict, init=False)
    _usage: Mapping[str, Any] | None = field(default=None, init=False)
    # Kept only to estimate output tokens when the server reports no usage.
    _produced: list[str] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self._quirks = quirks(self.flavor)

    def feed(self, event: SSEEvent) -> list[StreamChunk]:
        if self.done:
            return []
        if event.data == _DONE:
            return self._finish()
        try:
            data = json.loads(event.data)
        except ValueError:
            raise MalformedResponseError(
                f"{self.provider}: stream frame is not JSON", provider=self.provider
            ) from None
        if not isinstance(data, dict):
            raise MalformedResponseError(
                f"{self.provider}: stream frame is not an object", provider=self.provider
            )
        if data.get("error") or event.event == "error":
            raise stream_error(self.provider, data)
        self.check_frame(data)
        out: list[StreamChunk] = []
        try:
            usage = data.get("usage")
            if not usage and self._quirks.usage_in_x_groq:
                usage = (data.get("x_groq") or {}).get("usage")
            if isinstance(usage, dict):
                self._usage = usage
            for position, choice in enumerate(data.get("choices") or ()):
                self._choice(choice, position, out)
        except (AttributeError, TypeError, ValueError, KeyError) as exc:
            raise MalformedResponseError(
                f"{self.provider}: unreadable stream chunk ({type(exc).__name__})", provider=self.provider
            ) from None
        return out

    def end(self) -> list[StreamChunk]:
        """The body ended; without ``[DONE]`` the answer is incomplete."""
        if not self.done:
            raise StreamBrokenError(f"{self.provider}: stream ended before [DONE]", provider=self.provider)
        return []

    def check_frame(self, data: Mapping[str, Any]) -> None:
        """Raise if a frame's annotations refuse the answer (Azure's prompt filter overrides)."""

    def filtered(self, choice: Mapping[str, Any]) -> bool:
        """Whether an annotation says this choice was filtered (Azure overrides)."""
        return False

    def _choice(self, raw: Mapping[str, Any], position: int, out: list[StreamChunk]) -> None:
        index = raw.get("index", position)
        state = self._choices.get(index)
        if state is None:
            state = self._choices[index] = _ChoiceState()
        delta = raw.get("delta") or {}
        if delta:
            self._delta(index, state, delta, out)
        logprobs = raw.get("logprobs")
        if isinstance(logprobs, dict):
            if state.logprobs is None:
                state.logprobs = []
            state.logprobs.extend(
                TokenLogprob(t["token"], float(t["logprob"])) for t in logprobs.get("content") or ()
            )
        reason = raw.get("finish_reason")
        if self.filtered(raw):
            reason = "content_filter"
        if reason and not state.finished:
            state.finished = True
            logs = tuple(state.logprobs) if state.logprobs is not None else None
            out.append(FinishChunk(index, _finish(reason, state.refused), logs))

    def _delta(
        self, index: int, state: _ChoiceState, delta: Mapping[str, Any], out: list[StreamChunk]
    ) -> None:
        text, reasoning = _content(delta.get("content"))
        for key in self._quirks.reasoning_keys:
            reasoning += delta.get(key) or ""
        refusal = delta.get("refusal") or ""
        if text or reasoning or refusal:
            state.refused = state.refused or bool(refusal)
            self._produced.append(text + reasoning)
            out.append(TextDelta(index, text, reasoning, refusal))
        for position, call in enumerate(delta.get("tool_calls") or ()):
            function = call.get("function") or {}
            arguments = function.get("arguments")
            fragment = arguments if isinstance(arguments, str) else _arguments(arguments) if arguments else ""
            self._produced.append(fragment)
            out.append(
                ToolCallDelta(
                    index,
                    call.get("index", position),
                    id=call.get("id") or "",
                    name=function.get("name") or "",
                    arguments_delta=fragment,
                )
            )
        legacy = delta.get("function_call")
        if legacy:
            fragment = legacy.get("arguments") or ""
            self._produced.append(fragment)
            out.append(ToolCallDelta(index, 0, name=legacy.get("name") or "", arguments_delta=fragment))

    def _finish(self) -> list[StreamChunk]:
        self.done = True
        if not self._choices or not all(s.finished for s in self._choices.values()):
            raise StreamBrokenError(
                f"{self.provider}: stream ended without a finish reason", provider=self.provider
            )
        if self._usage is not None:
            usage = parse_usage(self._usage)
        else:
            usage = _estimate(self.messages, "".join(self._produced))
        return [UsageChunk(usage)]


# --- error mapping ------------------------------------------------------------------------------------

# "Please try again in 26.604s" / "in 120ms" / "in 6m0s" (OpenAI), "Please retry after 6 seconds" (Azure).
_RETRY_IN = re.compile(r"try again in (?:(\d+)m)?(\d+(?:\.\d+)?)(ms|s)\b|retry after (\d+) seconds?")
_REQUEST_ID_IN = re.compile(r"request ID (req_\w+)")


def parse_error(
    status: int, headers: Mapping[str, str], body: bytes, *, provider: str = "openai", secret: str = ""
) -> UpstreamError:
    """An error answer as the error tree's class; bodies that are not OpenAI-shaped classify by status."""
    error = _error_body(_json_or_none(body), status)
    if not upstream.request_id(headers):
        found = _REQUEST_ID_IN.search(error.message)
        if found:
            headers = {**headers, "x-request-id": found.group(1)}
    return upstream.classify(provider, status, error, headers, secret=secret)


def stream_error(provider: str, data: Mapping[str, Any]) -> UpstreamError:
    """An error frame inside a 200 stream: ``data: {"error": {...}}``, or Groq's ``event: error``.

    Without an HTTP status in the frame, an unknown kind counts as a server error.
    """
    if "error" not in data:
        data = {"error": data}
    raw = data["error"]
    status = 500
    if isinstance(raw, dict):
        for key in ("status", "code"):
            value = raw.get(key)
            if isinstance(value, int) and 400 <= value <= 599:
                status = value
                break
    return upstream.classify(provider, status, _error_body(data, status), {})


def _json_or_none(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


def _error_body(data: Any, status: int) -> ErrorBody:
    raw = data.get("error") if isinstance(data, dict) else None
    if isinstance(raw, str):  # {"error": "message"} (older Ollama, some proxies)
        raw = {"message": raw}
    if not isinstance(raw, dict):
        return ErrorBody(message="")
    message = str(raw.get("message") or "")
    code = str(raw.get("code") or "")
    kind = str(raw.get("type") or "")
    if not code and "maximum context length" in message:
        code = "context_length_exceeded"  # vLLM and others word it like OpenAI but send no code
    return ErrorBody(message=message, code=code, type=kind, retry_after_seconds=_retry_in(message))


def _retry_in(message: str) -> float | None:
    found = _RETRY_IN.search(message)
    if found is None:
        return None
    minutes, amount, unit, azure_seconds = found.groups()
    if azure_seconds is not None:
        return float(azure_seconds)
    seconds = float(amount) / (1000.0 if unit == "ms" else 1.0)
    return seconds + 60.0 * int(minutes or 0)


# --- the provider -------------------------------------------------------------------------------------


class OpenAIProvider(HttpAdapter):
    """api.openai.com or any OpenAI-compatible server (``settings.flavor``)."""

    def __init__(self, settings: HttpProviderSettings, transport: HttpTransport) -> None:
        super().__init__(settings, transport)
        self._flavor = settings.flavor
        self._quirks = quirks(settings.flavor)

    @property
    def unsupported_parameters(self) -> frozenset[str]:
        return self._quirks.unsupported

    async def complete(self, call: ProviderCall) -> CompletionResult:
        body = build_body(call, stream=False, flavor=self._flavor)
        response = await self._transport.post(
            self._chat_path(call.deployment), body, self._headers(), self._params()
        )
        data = self._json(response)
        result = self._parse(data, call.request.messages)
        return structs.replace(result, upstream_request_id=upstream.request_id(response.headers))

    async def stream(self, call: ProviderCall) -> AsyncGenerator[StreamChunk, None]:
        body = build_body(call, stream=True, flavor=self._flavor)
        parser = self._stream_parser(call.request.messages)
        decoder = SSEDecoder()
        async with AsyncExitStack() as stack:
            response = await self._open(stack, self._chat_path(call.deployment), body)
            try:
                async for raw in self._transport.chunks(response):
                    for event in decoder.feed(raw):
                        for chunk in parser.feed(event):
                            yield chunk
            except UpstreamConnectionError:
                # The body was cut (a dropped connection, not a refused one): the answer is partial.
                raise StreamBrokenError(
                    f"{self.name}: connection lost mid-stream", provider=self.name
                ) from None
            for event in decoder.flush():
                for chunk in parser.feed(event):
                    yield chunk
            for chunk in parser.end():
                yield chunk

    async def embed(self, deployment: Deployment, inputs: Sequence[str], dimensions: int) -> EmbeddingResult:
        body = embeddings_body(deployment.provider_model, inputs, dimensions)
        response = await self._transport.post(
            self._embeddings_path(deployment), body, self._headers(), self._params()
        )
        return parse_embeddings(self._json(response), self.name)

    async def list_models(self) -> tuple[str, ...]:
        """GET /models: free, so health probes can call it as often as they like."""
        response = await self._transport.get(self._models_path(), self._headers(), self._params())
        return parse_models(self._json(response), self.name)

    # Hooks Azure overrides: where, how to authenticate, and its content-filter annotations.

    def _chat_path(self, deployment: Deployment) -> str:
        return "/chat/completions"

    def _embeddings_path(self, deployment: Deployment) -> str:
        return "/embeddings"

    def _models_path(self) -> str:
        return "/models"

    def _params(self) -> Mapping[str, str] | None:
        return None

    def _headers(self) -> dict[str, str]:
        # Local servers (vLLM, Ollama) take no key; an empty Bearer would be refused by some proxies.
        return {"authorization": f"Bearer {self._settings.api_key}"} if self._settings.api_key else {}

    def _parse(self, data: Any, messages: Sequence[Message]) -> CompletionResult:
        return parse_response(data, flavor=self._flavor, provider=self.name, messages=messages)

    def _stream_parser(self, messages: Sequence[Message]) -> StreamParser:
        return StreamParser(self.name, self._flavor, messages)

    # Plumbing.

    def _json(self, response: UpstreamResponse) -> Any:
        if response.status >= 300:
            raise self._error(response.status, response.headers, response.body)
        try:
            return response.json()
        except ValueError:
            raise MalformedResponseError(
                f"{self.name}: response body is not JSON",
                provider=self.name,
                http_status=response.status,
                upstream_request_id=upstream.request_id(response.headers),
            ) from None

    async def _open(self, stack: AsyncExitStack, path: str, body: Mapping[str, Any]) -> httpx.Response:
        """The streamed response once its headers are in; the total timeout bounds the wait for them."""
        try:
            async with asyncio.timeout(self._transport.total_timeout):
                response = await stack.enter_async_context(
                    self._transport.stream(path, body, self._headers(), self._params())
                )
                if response.status_code >= 300:
                    raise self._error(response.status_code, response.headers, await _read(response))
        except TimeoutError:
            raise UpstreamTimeoutError(f"{self.name} did not answer in time", provider=self.name) from None
        return response

    def _error(self, status: int, headers: Mapping[str, str], body: bytes) -> UpstreamError:
        return parse_error(status, headers, body, provider=self.name, secret=self._settings.api_key)


async def _read(response: httpx.Response) -> bytes:
    """An error body; one that cannot be read still classifies by its status."""
    try:
        return await response.aread()
    except httpx.HTTPError:
        return b""
