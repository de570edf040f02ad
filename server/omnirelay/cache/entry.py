"""A stored answer, in both shapes: the stream's events (chunking preserved) and the unary response.

Either kind of call can be served from either kind of answer: a unary answer
becomes one delta per choice (then finishes and usage), a stream's events are
assembled into choices. Only whole, clean answers are stored: an answer whose
choice was filtered, errored or cancelled is not.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from omnirelay.domain import TokenUsage
from omnirelay_client.v1 import cache_pb2, completion_pb2, stream_pb2, types_pb2

_UNCACHEABLE = frozenset(
    {
        types_pb2.FINISH_REASON_UNSPECIFIED,
        types_pb2.FINISH_REASON_CONTENT_FILTER,
        types_pb2.FINISH_REASON_ERROR,
        types_pb2.FINISH_REASON_CANCELLED,
    }
)
# Events that are part of an answer (route events are per call, never stored).
_ANSWER_EVENTS = frozenset({"text_delta", "tool_call_delta", "finish", "usage"})


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    events: tuple[stream_pb2.StreamCompleteResponse, ...]
    response: completion_pb2.CompleteResponse  # choices and usage; no route
    model: str
    provider: str
    deployment: str
    size: int  # serialized bytes, for the memory store's bound
    # The answer's tokens as a hit's usage record keeps them (its cost is nothing): made once per
    # answer, not once per hit.
    usage: TokenUsage = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "usage", tokens(self.response.usage))

    def to_bytes(self) -> bytes:
        return _entry(
            self.events, self.response, self.model, self.provider, self.deployment
        ).SerializeToString()

    @classmethod
    def from_bytes(cls, data: bytes) -> CachedAnswer:
        entry = cache_pb2.CacheEntry.FromString(data)
        if entry.response.usage.cost_micros:  # served again it costs nothing (hits copy it as is)
            entry.response.usage.cost_micros = 0
        return cls(
            tuple(entry.events), entry.response, entry.model, entry.provider, entry.deployment, len(data)
        )


def tokens(usage: types_pb2.Usage) -> TokenUsage:
    """A response's token counts, without its cost (an answer served again costs nothing)."""
    return TokenUsage(
        usage.input_tokens,
        usage.output_tokens,
        usage.cached_input_tokens,
        usage.reasoning_tokens,
        usage.estimated,
        usage.cache_write_input_tokens,
    )


def from_response(response: completion_pb2.CompleteResponse) -> CachedAnswer | None:
    """A unary answer to store (None: not storable). The route's model and deployment come along."""
    if not response.choices or any(c.finish_reason in _UNCACHEABLE for c in response.choices):
        return None
    answer = completion_pb2.CompleteResponse()
    answer.choices.extend(response.choices)
    answer.usage.CopyFrom(response.usage)
    answer.usage.cost_micros = 0  # a stored answer costs nothing when served again
    events = tuple(_events_of(answer))
    return _answer(events, answer, response.route)


def from_events(
    events: Iterable[stream_pb2.StreamCompleteResponse], route: types_pb2.RouteFacts
) -> CachedAnswer | None:
    """A completed stream's events to store (None: not storable)."""
    kept = tuple(_free(e) for e in events if e.WhichOneof("event") in _ANSWER_EVENTS)
    answer = assemble(kept)
    if not answer.choices or any(c.finish_reason in _UNCACHEABLE for c in answer.choices):
        return None
    return _answer(kept, answer, route)


def _free(event: stream_pb2.StreamCompleteResponse) -> stream_pb2.StreamCompleteResponse:
    """The event as replayed from the store: a usage event's cost is nothing."""
    if not event.HasField("usage") or not event.usage.cost_micros:
        return event
    free = stream_pb2.StreamCompleteResponse()
    free.CopyFrom(event)
    free.usage.cost_micros = 0
    return free


def _answer(
    events: tuple[stream_pb2.StreamCompleteResponse, ...],
    response: completion_pb2.CompleteResponse,
    route: types_pb2.RouteFacts,
) -> CachedAnswer:
    size = _entry(events, response, route.resolved_model, route.provider, route.deployment).ByteSize()
    return CachedAnswer(events, response, route.resolved_model, route.provider, route.deployment, size)


def _entry(
    events: Iterable[stream_pb2.StreamCompleteResponse],
    response: completion_pb2.CompleteResponse,
    model: str,
    provider: str,
    deployment: str,
) -> cache_pb2.CacheEntry:
    entry = cache_pb2.CacheEntry(model=model, provider=provider, deployment=deployment)
    entry.events.extend(events)
    entry.response.CopyFrom(response)
    return entry


class _Choice:
    __slots__ = ("calls", "finish", "logprobs", "reasoning", "refusal", "text")

    def __init__(self) -> None:
        self.text: list[str] = []
        self.reasoning: list[str] = []
        self.refusal: list[str] = []
        self.calls: dict[int, types_pb2.ToolCall] = {}
        self.finish: int = types_pb2.FINISH_REASON_UNSPECIFIED
        self.logprobs: types_pb2.Logprobs | None = None


def assemble(events: Iterable[stream_pb2.StreamCompleteResponse]) -> completion_pb2.CompleteResponse:
    """A stream's answer events as one unary response (choices by index, then usage)."""
    choices: dict[int, _Choice] = {}
    response = completion_pb2.CompleteResponse()
    for event in events:
        kind = event.WhichOneof("event")
        if kind == "text_delta":
            d = event.text_delta
            c = choices.setdefault(d.choice_index, _Choice())
            c.text.append(d.text)
            c.reasoning.append(d.reasoning)
            c.refusal.append(d.refusal)
        elif kind == "tool_call_delta":
            t = event.tool_call_delta
            call = choices.setdefault(t.choice_index, _Choice()).calls.setdefault(
                t.index, types_pb2.ToolCall()
            )
            if t.id:
                call.id = t.id
            if t.name:
                call.name = t.name
            call.arguments_json += t.arguments_delta
        elif kind == "finish":
            f = event.finish
            c = choices.setdefault(f.choice_index, _Choice())
            c.finish = f.finish_reason
            if f.HasField("logprobs"):
                c.logprobs = f.logprobs
        elif kind == "usage":
            response.usage.CopyFrom(event.usage)
    for index in sorted(choices):
        c = choices[index]
        out = response.choices.add(
            index=index,
            finish_reason=c.finish,
            reasoning="".join(c.reasoning),
            refusal="".join(c.refusal),
        )
        out.message.role = types_pb2.ROLE_ASSISTANT
        text = "".join(c.text)
        if text:
            out.message.content.add(text=text)
        for i in sorted(c.calls):
            out.message.tool_calls.append(c.calls[i])
        if c.logprobs is not None:
            out.logprobs.CopyFrom(c.logprobs)
    return response


def _events_of(response: completion_pb2.CompleteResponse) -> Iterable[stream_pb2.StreamCompleteResponse]:
    """A unary answer as stream events: one delta per part of each choice, its finish, then usage."""
    event = stream_pb2.StreamCompleteResponse
    for c in response.choices:
        if c.reasoning:
            yield event(text_delta=stream_pb2.TextDelta(choice_index=c.index, reasoning=c.reasoning))
        text = "".join(p.text for p in c.message.content)
        if text:
            yield event(text_delta=stream_pb2.TextDelta(choice_index=c.index, text=text))
        if c.refusal:
            yield event(text_delta=stream_pb2.TextDelta(choice_index=c.index, refusal=c.refusal))
        for i, call in enumerate(c.message.tool_calls):
            yield event(
                tool_call_delta=stream_pb2.ToolCallDelta(
                    choice_index=c.index,
                    index=i,
                    id=call.id,
                    name=call.name,
                    arguments_delta=call.arguments_json,
                )
            )
        finish = stream_pb2.Finish(choice_index=c.index, finish_reason=c.finish_reason)
        if c.HasField("logprobs"):
            finish.logprobs.CopyFrom(c.logprobs)
        yield event(finish=finish)
    yield event(usage=response.usage)
