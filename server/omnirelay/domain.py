"""The frozen value types the core speaks: requests, chunks, results, usage.

The service layer builds these once from the protobuf request; providers,
routing and accounting see only these types, never protobuf messages, so a
contract change touches the translation modules alone.

They are frozen ``msgspec.Struct``s, not frozen dataclasses: several are built on every call
(and a text delta on every chunk), and a frozen dataclass sets each field through
``object.__setattr__``. By timeit, eight fields take 2.4 us as a frozen dataclass and 0.26 us as
a frozen Struct, and ``dataclasses.replace`` 5.9 us against ``msgspec.structs.replace``'s 0.24.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

import msgspec


class Role(enum.Enum):
    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"


class FinishReason(enum.Enum):
    UNKNOWN = "unknown"
    STOP = "stop"
    LENGTH = "length"
    TOOL_CALLS = "tool_calls"
    CONTENT_FILTER = "content_filter"
    REFUSAL = "refusal"
    CANCELLED = "cancelled"
    ERROR = "error"


class ToolChoiceMode(enum.Enum):
    DEFAULT = "default"
    AUTO = "auto"
    NONE = "none"
    REQUIRED = "required"
    FUNCTION = "function"


class ResponseFormatType(enum.Enum):
    TEXT = "text"
    JSON_OBJECT = "json_object"
    JSON_SCHEMA = "json_schema"


class CacheMode(enum.Enum):
    USE = "use"
    BYPASS = "bypass"
    REFRESH = "refresh"
    ONLY_IF_CACHED = "only_if_cached"


class TextPart(msgspec.Struct, frozen=True):
    text: str


class ImagePart(msgspec.Struct, frozen=True):
    url: str = ""
    data: bytes = b""
    media_type: str = ""
    detail: str = ""


ContentPart = TextPart | ImagePart


class ToolCall(msgspec.Struct, frozen=True):
    id: str
    name: str
    arguments_json: str


class Message(msgspec.Struct, frozen=True):
    role: Role
    parts: tuple[ContentPart, ...] = ()
    name: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str = ""

    @property
    def text(self) -> str:
        """The message's text parts joined; images contribute nothing."""
        return "".join(p.text for p in self.parts if isinstance(p, TextPart))


class ToolSpec(msgspec.Struct, frozen=True):
    name: str
    description: str = ""
    parameters: Mapping[str, Any] = msgspec.field(default_factory=dict)
    strict: bool = False


class ToolChoice(msgspec.Struct, frozen=True):
    mode: ToolChoiceMode = ToolChoiceMode.DEFAULT
    name: str = ""


class ResponseFormat(msgspec.Struct, frozen=True):
    type: ResponseFormatType = ResponseFormatType.TEXT
    schema_name: str = ""
    json_schema: Mapping[str, Any] | None = None
    strict: bool = False


class Sampling(msgspec.Struct, frozen=True):
    """Sampling parameters; ``None`` means "not set" so presets can fill it."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    n: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None

    def set_fields(self) -> tuple[str, ...]:
        """Names of the parameters the caller set (for unsupported-parameter checks)."""
        names = [n for n in _SAMPLING_SCALARS if getattr(self, n) is not None]
        if self.stop:
            names.append("stop")
        return tuple(names)

    def over(self, base: Sampling) -> Sampling:
        """These values where set, ``base``'s elsewhere (request over preset)."""
        values = {
            n: getattr(self, n) if getattr(self, n) is not None else getattr(base, n)
            for n in _SAMPLING_SCALARS
        }
        return Sampling(stop=self.stop or base.stop, **values)


_SAMPLING_SCALARS = (
    "temperature",
    "top_p",
    "top_k",
    "max_tokens",
    "seed",
    "n",
    "presence_penalty",
    "frequency_penalty",
    "response_format",
    "logprobs",
    "top_logprobs",
)


class Routing(msgspec.Struct, frozen=True):
    allow_fallback: bool | None = None
    fallback_models: tuple[str, ...] = ()
    strategy: str = ""
    sticky_key: str = ""
    strict_parameters: bool = False


class CachePolicy(msgspec.Struct, frozen=True):
    mode: CacheMode = CacheMode.USE
    ttl_seconds: float | None = None


class Attribution(msgspec.Struct, frozen=True):
    project: str = ""
    user: str = ""
    tags: tuple[tuple[str, str], ...] = ()


class CompletionRequest(msgspec.Struct, frozen=True):
    """One completion call as the core sees it, built once at the edge."""

    model: str
    messages: tuple[Message, ...]
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: ToolChoice = ToolChoice()
    sampling: Sampling = Sampling()
    preset: str = ""
    routing: Routing = Routing()
    cache: CachePolicy = CachePolicy()
    attribution: Attribution = Attribution()
    request_id: str = ""


class TokenUsage(msgspec.Struct, frozen=True):
    """Tokens in the gateway's one convention, whatever the provider's.

    ``input_tokens`` includes cached reads and cache writes; ``output_tokens``
    includes reasoning. ``cost_micros`` is filled by the router from the
    serving deployment's prices (providers leave it 0).
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    reasoning_tokens: int = 0
    estimated: bool = False
    cache_write_input_tokens: int = 0
    cost_micros: int = 0

    def costing(self, micros: int) -> TokenUsage:
        """These tokens at ``micros`` (itself when that is their cost already: no new object)."""
        return self if micros == self.cost_micros else msgspec.structs.replace(self, cost_micros=micros)


class TokenLogprob(msgspec.Struct, frozen=True):
    token: str
    logprob: float


class Choice(msgspec.Struct, frozen=True):
    index: int
    text: str
    finish_reason: FinishReason
    tool_calls: tuple[ToolCall, ...] = ()
    reasoning: str = ""
    refusal: str = ""
    logprobs: tuple[TokenLogprob, ...] | None = None


class CompletionResult(msgspec.Struct, frozen=True):
    """What a provider returns for a unary call."""

    choices: tuple[Choice, ...]
    usage: TokenUsage
    upstream_request_id: str = ""


# Stream chunks: what a provider yields while streaming, in order.


class TextDelta(msgspec.Struct, frozen=True):
    choice_index: int
    text: str
    reasoning: str = ""
    refusal: str = ""


class ToolCallDelta(msgspec.Struct, frozen=True):
    choice_index: int
    index: int
    id: str = ""
    name: str = ""
    arguments_delta: str = ""


class FinishChunk(msgspec.Struct, frozen=True):
    choice_index: int
    reason: FinishReason
    logprobs: tuple[TokenLogprob, ...] | None = None


class UsageChunk(msgspec.Struct, frozen=True):
    usage: TokenUsage


StreamChunk = TextDelta | ToolCallDelta | FinishChunk | UsageChunk


class Deployment(msgspec.Struct, frozen=True):
    """Where a model is served: a provider and the provider's own model id."""

    name: str
    provider: str
    provider_model: str


class ProviderCall(msgspec.Struct, frozen=True):
    """One upstream attempt: the request with its sampling resolved, and the target."""

    request: CompletionRequest
    sampling: Sampling
    deployment: Deployment


class AttemptOutcome(enum.Enum):
    SUCCESS = "success"
    RATE_LIMITED = "rate_limited"
    UPSTREAM_ERROR = "upstream_error"
    TIMEOUT = "timeout"
    CONNECTION_ERROR = "connection_error"
    CIRCUIT_OPEN = "circuit_open"
    REJECTED = "rejected"
    CANCELLED = "cancelled"
    STREAM_BROKEN = "stream_broken"


class AttemptRecord(msgspec.Struct, frozen=True):
    """One try at one deployment, as the caller sees it in route facts and error details."""

    model: str
    deployment: Deployment
    outcome: AttemptOutcome
    detail: str = ""
    latency_seconds: float = 0.0
    upstream_request_id: str = ""
    # The error's stable reason (``UPSTREAM_RATE_LIMITED``…), empty on success.
    reason: str = ""


class RouteInfo(msgspec.Struct, frozen=True):
    """How a call was served, for the response's route facts."""

    requested_model: str
    resolved_model: str
    deployment: Deployment
    request_id: str
    latency_seconds: float = 0.0
    ttft_seconds: float | None = None
    dropped_parameters: tuple[str, ...] = ()
    # Every attempt in order, the serving one last (empty: a single first-try success).
    attempts: tuple[AttemptRecord, ...] = ()
    fallback_used: bool = False


class Completion(msgspec.Struct, frozen=True):
    """A finished unary call: the provider's result and the route that served it."""

    result: CompletionResult
    route: RouteInfo


class EmbeddingResult(msgspec.Struct, frozen=True):
    vectors: tuple[tuple[float, ...], ...]
    usage: TokenUsage


# Gateway stream events: what the core yields to the stream service, in order.


class RouteStart(msgspec.Struct, frozen=True):
    """The upstream chosen; precedes the attempt's chunks."""

    route: RouteInfo
    attempt: int = 1


class RouteChange(msgspec.Struct, frozen=True):
    """A stream moved to another deployment after chunks were delivered (``continue`` recovery)."""

    previous: RouteInfo
    route: RouteInfo
    reason: str
    attempt: int


class StreamDone(msgspec.Struct, frozen=True):
    """The stream completed; carries the final route facts (latency, time to first token)."""

    route: RouteInfo


GatewayEvent = StreamChunk | RouteStart | RouteChange | StreamDone
