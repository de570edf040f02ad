"""Route facts as a response carries them: a first-try success's shared facts are merged in from
bytes serialized once per route, every other route is written field by field; both must read the same."""

from __future__ import annotations

from omnirelay import domain as d
from omnirelay.services import render
from omnirelay_client.v1 import completion_pb2, types_pb2

DEPLOYMENT = d.Deployment("eu/small", "local", "small")
OTHER = d.Deployment("us/small", "openai", "gpt-small")


def _completion(route: d.RouteInfo, upstream_id: str = "up-1", index: int = 0) -> d.Completion:
    choice = d.Choice(index, "some text", d.FinishReason.STOP)
    return d.Completion(d.CompletionResult((choice,), d.TokenUsage(3, 2), upstream_id), route)


def _route(**changes: object) -> d.RouteInfo:
    fields: dict[str, object] = {
        "requested_model": "fast",
        "resolved_model": "local-small",
        "deployment": DEPLOYMENT,
        "request_id": "rid-1",
        "latency_seconds": 0.25,
    }
    fields.update(changes)
    return d.RouteInfo(**fields)  # type: ignore[arg-type]


def test_a_first_try_success_reads_as_its_route_with_one_successful_attempt() -> None:
    response = render.complete_response(_completion(_route(ttft_seconds=0.125)))
    route = response.route
    assert (route.requested_model, route.resolved_model, route.provider, route.deployment) == (
        "fast",
        "local-small",
        "local",
        "eu/small",
    )
    assert route.request_id == "rid-1"
    assert route.latency.ToNanoseconds() == 250_000_000
    assert route.time_to_first_token.ToNanoseconds() == 125_000_000
    assert len(route.attempts) == 1
    attempt = route.attempts[0]
    assert (attempt.model, attempt.provider, attempt.deployment) == ("local-small", "local", "eu/small")
    assert attempt.outcome == types_pb2.ATTEMPT_OUTCOME_SUCCESS
    assert attempt.upstream_request_id == "up-1"
    assert attempt.latency.ToNanoseconds() == 250_000_000
    assert not route.fallback_used


def test_the_shared_facts_do_not_leak_between_calls_on_the_same_route() -> None:
    first = render.complete_response(_completion(_route(request_id="a", latency_seconds=2.5), "up-a"))
    second = render.complete_response(_completion(_route(request_id="b", latency_seconds=0.5), ""))
    assert first.route.request_id == "a"
    assert second.route.request_id == "b"
    assert (first.route.latency.seconds, first.route.latency.nanos) == (2, 500_000_000)
    assert (second.route.latency.seconds, second.route.latency.nanos) == (0, 500_000_000)
    assert first.route.attempts[0].upstream_request_id == "up-a"
    assert second.route.attempts[0].upstream_request_id == ""
    assert len(second.route.attempts) == 1


def test_routes_differing_only_in_deployment_or_requested_name_get_their_own_facts() -> None:
    one = render.complete_response(_completion(_route())).route
    moved = render.complete_response(_completion(_route(deployment=OTHER))).route
    renamed = render.complete_response(_completion(_route(requested_model="cheap"))).route
    assert (one.provider, one.deployment) == ("local", "eu/small")
    assert (moved.provider, moved.deployment, moved.attempts[0].provider) == ("openai", "us/small", "openai")
    assert renamed.requested_model == "cheap"
    assert renamed.resolved_model == "local-small"


def test_a_route_after_failed_attempts_lists_every_attempt_field_by_field() -> None:
    failed = d.AttemptRecord(
        model="local-small",
        deployment=OTHER,
        outcome=d.AttemptOutcome.UPSTREAM_ERROR,
        detail="upstream 500",
        latency_seconds=0.1,
    )
    success = d.AttemptRecord(
        model="local-small", deployment=DEPLOYMENT, outcome=d.AttemptOutcome.SUCCESS, latency_seconds=0.2
    )
    route = render.complete_response(
        _completion(_route(attempts=(failed, success), fallback_used=True))
    ).route
    assert (route.requested_model, route.resolved_model, route.provider, route.deployment) == (
        "fast",
        "local-small",
        "local",
        "eu/small",
    )
    assert [a.deployment for a in route.attempts] == ["us/small", "eu/small"]
    assert route.attempts[0].outcome == types_pb2.ATTEMPT_OUTCOME_UPSTREAM_ERROR
    assert route.fallback_used


def test_the_shared_facts_memo_is_bounded() -> None:
    render._shared_facts.cache_clear()
    for i in range(render.SHARED_FACTS_ROUTES + 10):
        route = render.complete_response(_completion(_route(requested_model=f"name-{i}"))).route
        assert route.requested_model == f"name-{i}"
    assert 0 < render._shared_facts.cache_info().currsize <= render.SHARED_FACTS_ROUTES


def test_a_later_choice_keeps_its_index_and_the_first_reads_zero() -> None:
    response = completion_pb2.CompleteResponse()
    render._fill_choice(response.choices.add(), d.Choice(0, "a", d.FinishReason.STOP))
    render._fill_choice(response.choices.add(), d.Choice(2, "b", d.FinishReason.LENGTH))
    assert [c.index for c in response.choices] == [0, 2]
    assert [c.finish_reason for c in response.choices] == [
        types_pb2.FINISH_REASON_STOP,
        types_pb2.FINISH_REASON_LENGTH,
    ]
