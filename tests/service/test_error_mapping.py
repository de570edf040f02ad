"""Every branch of the error tree crosses the wire with its code and details, and the client reads them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from grpc import aio

from omnirelay.domain import AttemptOutcome, AttemptRecord, Deployment
from omnirelay.errors import (
    DeadlineExceededError,
    FailedPreconditionError,
    OmniRelayError,
    QuotaViolation,
    ResourceExhaustedError,
    ShuttingDownError,
    UnavailableError,
)
from omnirelay.interceptors.edge import Edge
from omnirelay_client import AsyncClient
from omnirelay_client import errors as client_errors
from omnirelay_client.v1 import completion_pb2, completion_pb2_grpc, types_pb2


class _Failing(completion_pb2_grpc.CompletionServiceServicer):
    """Raises whatever the test puts in ``error`` (the real interceptor maps it)."""

    error: BaseException = RuntimeError()

    async def Complete(self, request: Any, context: Any) -> completion_pb2.CompleteResponse:  # noqa: N802
        raise self.error


@pytest.fixture
async def failing() -> AsyncIterator[tuple[_Failing, AsyncClient]]:
    servicer = _Failing()  # type: ignore[abstract]  # only Complete is called
    server = aio.server()
    service = completion_pb2.DESCRIPTOR.services_by_name["CompletionService"]
    completion_pb2_grpc.add_CompletionServiceServicer_to_server(Edge().guard(servicer, service), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    client = AsyncClient(f"127.0.0.1:{port}")
    yield servicer, client
    await client.close()
    await server.stop(0)


async def test_resource_exhausted_carries_retry_info_and_quota_failure(
    failing: tuple[_Failing, AsyncClient],
) -> None:
    servicer, client = failing
    servicer.error = ResourceExhaustedError(
        "project acme spent its daily budget",
        retry_after_seconds=1.5,
        violations=[QuotaViolation("project:acme", "daily budget of $10.00 reached")],
        reason="BUDGET_EXHAUSTED",
    )
    with pytest.raises(client_errors.ResourceExhaustedError) as caught:
        await client.complete("hi")
    assert caught.value.retry_delay == 1.5
    assert caught.value.quota_violations == (
        client_errors.QuotaViolation("project:acme", "daily budget of $10.00 reached"),
    )
    assert caught.value.reason == "BUDGET_EXHAUSTED"
    assert caught.value.message == "project acme spent its daily budget"


async def test_unavailable_lists_every_attempt(failing: tuple[_Failing, AsyncClient]) -> None:
    servicer, client = failing
    servicer.error = UnavailableError(
        "no upstream answered",
        attempts=[
            AttemptRecord(
                "gpt-4o",
                Deployment("openai/gpt-4o", "openai", "gpt-4o"),
                AttemptOutcome.UPSTREAM_ERROR,
                "server error",
                0.25,
                "req-1",
                "UPSTREAM_SERVER_ERROR",
            ),
            AttemptRecord(
                "claude",
                Deployment("anthropic/claude", "anthropic", "claude"),
                AttemptOutcome.TIMEOUT,
                "no answer in 5s",
                5.0,
                "",
                "UPSTREAM_TIMEOUT",
            ),
        ],
        retry_after_seconds=2,
    )
    with pytest.raises(client_errors.UnavailableError) as caught:
        await client.complete("hi")
    assert caught.value.attempts == (
        "openai/gpt-4o (gpt-4o): upstream_error UPSTREAM_SERVER_ERROR [upstream request req-1]: server error",
        "anthropic/claude (claude): timeout UPSTREAM_TIMEOUT: no answer in 5s",
    )
    typed = caught.value.route_attempts
    assert [(a.provider, a.deployment, a.outcome, a.upstream_request_id) for a in typed] == [
        ("openai", "openai/gpt-4o", types_pb2.ATTEMPT_OUTCOME_UPSTREAM_ERROR, "req-1"),
        ("anthropic", "anthropic/claude", types_pb2.ATTEMPT_OUTCOME_TIMEOUT, ""),
    ]
    assert typed[1].latency.seconds == 5
    assert caught.value.retry_delay == 2.0
    assert caught.value.reason == "UPSTREAM_UNAVAILABLE"


@pytest.mark.parametrize(
    ("error", "expected", "reason"),
    [
        (
            FailedPreconditionError("provider down for maintenance"),
            client_errors.FailedPreconditionError,
            "FAILED_PRECONDITION",
        ),
        (DeadlineExceededError("too slow"), client_errors.DeadlineExceededError, "DEADLINE_EXCEEDED"),
        (ShuttingDownError("draining"), client_errors.UnavailableError, "SHUTTING_DOWN"),
    ],
)
async def test_codes_and_reasons(
    failing: tuple[_Failing, AsyncClient], error: OmniRelayError, expected: type[Exception], reason: str
) -> None:
    servicer, client = failing
    servicer.error = error
    with pytest.raises(expected) as caught:
        await client.complete("hi")
    assert getattr(caught.value, "reason") == reason  # noqa: B009


async def test_unexpected_exception_is_internal_and_leaks_nothing(
    failing: tuple[_Failing, AsyncClient],
) -> None:
    servicer, client = failing
    servicer.error = RuntimeError("connection string postgres://admin:hunter2@db/prod failed")
    with pytest.raises(client_errors.InternalError) as caught:
        await client.complete("hi")
    assert "hunter2" not in str(caught.value)
    assert caught.value.request_id
    assert f"request id {caught.value.request_id}" in caught.value.message
