"""Stored answers: from a unary response or a stream's events, back to both shapes, and to bytes."""

from __future__ import annotations

import pytest

from omnirelay.cache.entry import CachedAnswer, assemble, from_events, from_response
from omnirelay.domain import TokenUsage
from omnirelay_client.v1 import cache_pb2, completion_pb2, stream_pb2, types_pb2

Event = stream_pb2.StreamCompleteResponse
ROUTE = types_pb2.RouteFacts(
    requested_model="fast",
    resolved_model="gpt-4o",
    provider="openai",
    deployment="openai/gpt-4o-2024",
    request_id="req-1",
    cache=types_pb2.CACHE_OUTCOME_MISS,
)
USAGE = types_pb2.Usage(input_tokens=11, output_tokens=7, reasoning_tokens=2, cost_micros=340)
# The same usage as stored: token counts kept, the cost not charged again.
STORED_USAGE = types_pb2.Usage(input_tokens=11, output_tokens=7, reasoning_tokens=2)


def logprobs(*tokens: str) -> types_pb2.Logprobs:
    return types_pb2.Logprobs(
        tokens=[
            types_pb2.TokenLogprob(
                token=t, logprob=-0.5, top_logprobs=[types_pb2.TopLogprob(token=t, logprob=-0.5)]
            )
            for t in tokens
        ]
    )


def choice(
    index: int,
    text: str = "",
    finish: int = types_pb2.FINISH_REASON_STOP,
    *,
    reasoning: str = "",
    refusal: str = "",
    calls: tuple[types_pb2.ToolCall, ...] = (),
    probs: types_pb2.Logprobs | None = None,
) -> types_pb2.Choice:
    c = types_pb2.Choice(index=index, finish_reason=finish, reasoning=reasoning, refusal=refusal)  # type: ignore[arg-type]
    c.message.role = types_pb2.ROLE_ASSISTANT
    if text:
        c.message.content.add(text=text)
    c.message.tool_calls.extend(calls)
    if probs is not None:
        c.logprobs.CopyFrom(probs)
    return c


def response(*choices: types_pb2.Choice) -> completion_pb2.CompleteResponse:
    return completion_pb2.CompleteResponse(choices=choices, usage=USAGE, route=ROUTE)


def without_route(r: completion_pb2.CompleteResponse) -> completion_pb2.CompleteResponse:
    """The answer as stored: no route, and no cost (serving it again costs nothing)."""
    out = completion_pb2.CompleteResponse()
    out.CopyFrom(r)
    out.ClearField("route")
    out.usage.cost_micros = 0
    return out


def stored(answer: CachedAnswer | None) -> CachedAnswer:
    assert answer is not None
    return answer


def delta(i: int, text: str = "", reasoning: str = "", refusal: str = "") -> Event:
    return Event(
        text_delta=stream_pb2.TextDelta(choice_index=i, text=text, reasoning=reasoning, refusal=refusal)
    )


def call_delta(i: int, index: int, args: str, call_id: str = "", name: str = "") -> Event:
    return Event(
        tool_call_delta=stream_pb2.ToolCallDelta(
            choice_index=i, index=index, id=call_id, name=name, arguments_delta=args
        )
    )


def finish(
    i: int, reason: int = types_pb2.FINISH_REASON_STOP, probs: types_pb2.Logprobs | None = None
) -> Event:
    f = stream_pb2.Finish(choice_index=i, finish_reason=reason)  # type: ignore[arg-type]
    if probs is not None:
        f.logprobs.CopyFrom(probs)
    return Event(finish=f)


def route_events() -> tuple[Event, Event]:
    started = Event(route_started=stream_pb2.RouteStarted(model="gpt-4o", provider="openai", attempt=1))
    done = Event(done=stream_pb2.Done(route=ROUTE))
    return started, done


# --- from_response ------------------------------------------------------------------------------------


def test_a_text_answer_round_trips_through_its_events() -> None:
    original = response(
        choice(0, "the amber signal", reasoning="think first", refusal="", probs=logprobs("the", "amber"))
    )
    answer = stored(from_response(original))
    assert answer.response == without_route(original)
    assert not answer.response.HasField("route")
    assert (answer.model, answer.provider, answer.deployment) == ("gpt-4o", "openai", "openai/gpt-4o-2024")
    kinds = [e.WhichOneof("event") for e in answer.events]
    assert kinds == ["text_delta", "text_delta", "finish", "usage"]
    assert answer.events[0].text_delta.reasoning == "think first"
    assert answer.events[1].text_delta.text == "the amber signal"
    assert answer.events[2].finish.logprobs == logprobs("the", "amber")
    assert answer.events[3].usage == STORED_USAGE
    assert assemble(answer.events) == answer.response


def test_a_refusal_and_tool_calls_round_trip() -> None:
    calls = (
        types_pb2.ToolCall(id="call_1", name="search", arguments_json='{"query": "harbor"}'),
        types_pb2.ToolCall(id="call_2", name="fetch", arguments_json='{"url": "https://x"}'),
    )
    original = response(
        choice(0, finish=types_pb2.FINISH_REASON_TOOL_CALLS, calls=calls),
        choice(1, finish=types_pb2.FINISH_REASON_REFUSAL, refusal="I can't help with that"),
    )
    answer = stored(from_response(original))
    assert assemble(answer.events) == without_route(original)
    tool_deltas = [e.tool_call_delta for e in answer.events if e.HasField("tool_call_delta")]
    assert [(t.index, t.id, t.name) for t in tool_deltas] == [(0, "call_1", "search"), (1, "call_2", "fetch")]


def test_two_choices_keep_their_text_finish_and_order() -> None:
    original = response(
        choice(0, "first answer", types_pb2.FINISH_REASON_STOP),
        choice(1, "second answer", types_pb2.FINISH_REASON_LENGTH, probs=logprobs("second")),
    )
    answer = stored(from_response(original))
    rebuilt = assemble(answer.events)
    assert rebuilt == without_route(original)
    assert [c.finish_reason for c in rebuilt.choices] == [
        types_pb2.FINISH_REASON_STOP,
        types_pb2.FINISH_REASON_LENGTH,
    ]


@pytest.mark.parametrize(
    "reason",
    [
        types_pb2.FINISH_REASON_CONTENT_FILTER,
        types_pb2.FINISH_REASON_ERROR,
        types_pb2.FINISH_REASON_CANCELLED,
        types_pb2.FINISH_REASON_UNSPECIFIED,
    ],
)
def test_an_unclean_finish_is_not_storable(reason: int) -> None:
    assert from_response(response(choice(0, "partial", reason))) is None
    # One bad choice spoils the whole answer.
    assert from_response(response(choice(0, "fine"), choice(1, "partial", reason))) is None
    assert from_events([delta(0, "partial"), finish(0, reason), Event(usage=USAGE)], ROUTE) is None


def test_an_answer_without_choices_is_not_storable() -> None:
    assert from_response(completion_pb2.CompleteResponse(usage=USAGE, route=ROUTE)) is None
    assert from_events([Event(usage=USAGE)], ROUTE) is None
    assert from_events([], ROUTE) is None


def test_a_stream_without_its_finish_is_not_storable() -> None:
    started, done = route_events()
    assert from_events([started, delta(0, "the amber"), delta(0, " signal"), done], ROUTE) is None


# --- from_events --------------------------------------------------------------------------------------


def test_a_stream_assembles_into_the_same_answer_and_keeps_its_chunking() -> None:
    started, done = route_events()
    answer_events = [
        delta(0, reasoning="let me "),
        delta(0, reasoning="think"),
        delta(1, "B says "),
        delta(0, "the "),
        call_delta(0, 0, '{"que', call_id="call_9", name="search"),
        delta(0, "amber"),
        call_delta(0, 0, 'ry": "ha'),
        delta(1, "hi"),
        call_delta(0, 1, "{}", call_id="call_10", name="noop"),
        call_delta(0, 0, 'rbor"}'),
        finish(1, types_pb2.FINISH_REASON_LENGTH, logprobs("hi")),
        finish(0, types_pb2.FINISH_REASON_TOOL_CALLS),
        Event(usage=USAGE),
    ]
    answer = stored(from_events([started, *answer_events, done], ROUTE))
    # Route events are per call: never stored. The answer's events keep their order and chunking
    # (the usage event's cost aside: replaying it costs nothing).
    assert list(answer.events) == [*answer_events[:-1], Event(usage=STORED_USAGE)]
    assert (answer.model, answer.provider, answer.deployment) == ("gpt-4o", "openai", "openai/gpt-4o-2024")
    expected = completion_pb2.CompleteResponse(
        choices=[
            choice(
                0,
                "the amber",
                types_pb2.FINISH_REASON_TOOL_CALLS,
                reasoning="let me think",
                calls=(
                    types_pb2.ToolCall(id="call_9", name="search", arguments_json='{"query": "harbor"}'),
                    types_pb2.ToolCall(id="call_10", name="noop", arguments_json="{}"),
                ),
            ),
            choice(1, "B says hi", types_pb2.FINISH_REASON_LENGTH, probs=logprobs("hi")),
        ],
        usage=STORED_USAGE,
    )
    assert answer.response == expected


def test_a_stream_and_a_unary_answer_give_the_same_response() -> None:
    unary = response(choice(0, "the amber signal", reasoning="hm", probs=logprobs("the")))
    streamed = [
        delta(0, reasoning="h"),
        delta(0, reasoning="m"),
        delta(0, "the"),
        delta(0, " amber"),
        delta(0, " signal"),
        finish(0, types_pb2.FINISH_REASON_STOP, logprobs("the")),
        Event(usage=USAGE),
    ]
    from_stream = stored(from_events(streamed, ROUTE))
    from_unary = stored(from_response(unary))
    assert from_stream.response == from_unary.response
    assert len(from_stream.events) > len(from_unary.events)


# --- bytes --------------------------------------------------------------------------------------------


def test_to_bytes_and_from_bytes_round_trip() -> None:
    started, done = route_events()
    events = [
        started,
        delta(0, "one"),
        delta(0, " two"),
        call_delta(0, 0, "{}", call_id="c", name="n"),
        finish(0, probs=logprobs("one")),
        Event(usage=USAGE),
        done,
    ]
    for original in (
        stored(from_events(events, ROUTE)),
        stored(from_response(response(choice(0, "x", refusal="r"), choice(1, "y")))),
    ):
        data = original.to_bytes()
        back = CachedAnswer.from_bytes(data)
        assert back.events == original.events
        assert back.response == original.response
        assert (back.model, back.provider, back.deployment) == (
            original.model,
            original.provider,
            original.deployment,
        )
        assert back.size == len(data) == original.size
        assert back.to_bytes() == data


def test_size_grows_with_the_answer() -> None:
    small = stored(from_response(response(choice(0, "x"))))
    large = stored(from_response(response(choice(0, "x" * 5000))))
    assert large.size - small.size >= 2 * 4999  # the text is stored twice: as events and as the response


def test_a_stored_answer_carries_no_cost_in_either_shape() -> None:
    # What the first call paid is not charged again to whoever is served from the store.
    paid = completion_pb2.CompleteResponse()
    paid.choices.add(index=0, finish_reason=types_pb2.FINISH_REASON_STOP).message.content.add(text="hi")
    paid.usage.input_tokens = 3
    paid.usage.output_tokens = 1
    paid.usage.cost_micros = 340
    answer = stored(from_response(paid))
    assert answer.response.usage.cost_micros == 0
    assert answer.response.usage.output_tokens == 1
    usage_events = [e for e in answer.events if e.HasField("usage")]
    assert [e.usage.cost_micros for e in usage_events] == [0]
    streamed = stored(from_events(list(answer.events), paid.route))
    assert [e.usage.cost_micros for e in streamed.events if e.HasField("usage")] == [0]


def test_an_answer_read_back_costs_nothing_and_carries_its_tokens_for_the_usage_record() -> None:
    # An entry written with a cost (by a server that did not clear it) is served free all the same.
    entry = cache_pb2.CacheEntry(model="m", provider="p", deployment="p/m")
    entry.response.choices.add(index=0, finish_reason=types_pb2.FINISH_REASON_STOP)
    entry.response.usage.CopyFrom(
        types_pb2.Usage(input_tokens=7, output_tokens=3, cached_input_tokens=2, cost_micros=99)
    )
    answer = CachedAnswer.from_bytes(entry.SerializeToString())
    assert answer.response.usage.cost_micros == 0
    assert answer.usage == TokenUsage(input_tokens=7, output_tokens=3, cached_input_tokens=2)
    assert answer.usage.cost_micros == 0
