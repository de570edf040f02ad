"""The one error tree of omnirelay, and its mapping to gRPC statuses.

Every failure the gateway reports to a caller is one of these classes. Each
class knows its gRPC code and a stable ``reason`` (sent as ``google.rpc.ErrorInfo``),
and adds the rich details a caller can act on::

    OmniRelayError                      INTERNAL
    ├── InvalidArgumentError            INVALID_ARGUMENT  + BadRequest field violations
    ├── FailedPreconditionError         FAILED_PRECONDITION
    ├── NotFoundError                   NOT_FOUND
    │   └── ModelNotFoundError          NOT_FOUND         (+ close matches in the message and ErrorInfo)
    ├── DeadlineExceededError           DEADLINE_EXCEEDED
    ├── ResourceExhaustedError          RESOURCE_EXHAUSTED + RetryInfo, QuotaFailure
    ├── UnavailableError                UNAVAILABLE       + RetryInfo
    │   └── StreamInterruptedError      UNAVAILABLE       (the upstream failed after chunks were delivered)
    ├── UnimplementedError              UNIMPLEMENTED
    ├── ShuttingDownError               UNAVAILABLE       (the server is draining)
    └── UpstreamError                   a provider failure (+ provider, HTTP status, upstream request id)
        ├── UpstreamAuthenticationError UNAUTHENTICATED   the gateway's key for that provider was refused
        ├── UpstreamPermissionError     PERMISSION_DENIED
        ├── UpstreamNotFoundError       NOT_FOUND         (the provider does not know the model)
        ├── UpstreamInvalidRequestError INVALID_ARGUMENT
        ├── ContextLengthExceededError  INVALID_ARGUMENT
        ├── ContentFilteredError        INVALID_ARGUMENT
        ├── RateLimitedError            RESOURCE_EXHAUSTED + RetryInfo (from retry-after(-ms), RetryInfo)
        ├── QuotaExhaustedError         RESOURCE_EXHAUSTED + QuotaFailure
        ├── OverloadedError             UNAVAILABLE       (Anthropic 529, Gemini 503 "overloaded")
        ├── UpstreamServerError         UNAVAILABLE
        ├── UpstreamConnectionError     UNAVAILABLE
        ├── UpstreamTimeoutError        DEADLINE_EXCEEDED
        ├── MalformedResponseError      UNAVAILABLE       (the upstream spoke nonsense)
        └── StreamBrokenError           UNAVAILABLE       (the stream ended or failed mid-way)

``retryable`` on an UpstreamError says whether another attempt (or another
deployment) may succeed; routing reads it, callers see it in ErrorInfo.

Any error that ends a routed call carries that call's ``attempts``: each one's
model, provider, deployment, outcome, reason and upstream request id, sent as an
``omnirelay.v1.RouteFacts`` detail (typed, for clients) and as ``DebugInfo``
lines (readable in grpcurl).

Foreign exceptions are translated where they are caught (``raise ... from exc``);
``to_status`` is the only place a gRPC status is built from an error. Messages
never contain secrets: adapters pass only what the caller may see.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

# The same violation types the client exposes: one definition of what goes on the wire.
from omnirelay.domain import AttemptOutcome, AttemptRecord
from omnirelay_client.errors import FieldViolation as FieldViolation
from omnirelay_client.errors import QuotaViolation as QuotaViolation
from omnirelay_client.v1 import types_pb2

ERROR_DOMAIN = "omnirelay.dev"


# A google.rpc detail message (ErrorInfo, BadRequest, RetryInfo, QuotaFailure, DebugInfo).
Detail = Message


class OmniRelayError(Exception):
    """Base of every error omnirelay reports; an unexpected one is INTERNAL."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    reason: str = "INTERNAL"

    def __init__(self, message: str, *, metadata: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.metadata: dict[str, str] = dict(metadata or {})
        # Set by routing on the error that ends a call.
        self.attempts: tuple[AttemptRecord, ...] = ()

    def _details(self) -> Iterable[Detail]:
        """Rich details beyond ErrorInfo; subclasses add theirs."""
        return ()

    def to_status(self, request_id: str = "") -> grpc.Status:
        """The gRPC status (code, message, google.rpc details) a caller receives."""
        metadata = dict(self.metadata)
        if request_id:
            metadata["request_id"] = request_id
        info = error_details_pb2.ErrorInfo(reason=self.reason, domain=ERROR_DOMAIN, metadata=metadata)
        details = [_pack(info), *(_pack(d) for d in self._details())]
        if self.attempts:
            details.extend(_pack(d) for d in _attempt_details(self.attempts))
        status = status_pb2.Status(code=_CODES[self.code], message=self.message, details=details)
        converted: grpc.Status = rpc_status.to_status(status)
        return converted


def _pack(message: Detail) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


class InvalidArgumentError(OmniRelayError):
    """The request is malformed; every bad field is named."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "INVALID_ARGUMENT"

    def __init__(self, violations: Sequence[FieldViolation], message: str | None = None) -> None:
        self.violations = tuple(violations)
        text = message or "invalid request: " + "; ".join(f"{v.field}: {v.description}" for v in violations)
        super().__init__(text)

    def _details(self) -> Iterable[Detail]:
        yield error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                for v in self.violations
            ]
        )


class FailedPreconditionError(OmniRelayError):
    """The request is well formed but cannot be served in the current state."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "FAILED_PRECONDITION"


class NotFoundError(OmniRelayError):
    """A named thing does not exist."""

    code = grpc.StatusCode.NOT_FOUND
    reason = "NOT_FOUND"


class ModelNotFoundError(NotFoundError):
    """The model name resolves to nothing; the message lists the closest known names."""

    reason = "MODEL_NOT_FOUND"

    def __init__(self, name: str, suggestions: Sequence[str]) -> None:
        self.name = name
        self.suggestions = tuple(suggestions)
        hint = f"; did you mean {', '.join(repr(s) for s in suggestions)}?" if suggestions else ""
        super().__init__(
            f"unknown model {name!r}{hint} (ListModels or `omnirelay models` lists every model)",
            metadata={"model": name, "suggestions": ",".join(suggestions)},
        )


class DeadlineExceededError(OmniRelayError):
    """The caller's deadline passed before the answer was complete."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED
    reason = "DEADLINE_EXCEEDED"


class ResourceExhaustedError(OmniRelayError):
    """A rate limit, quota or budget refuses the call; says when to retry."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "RESOURCE_EXHAUSTED"

    def __init__(
        self,
        message: str,
        *,
        retry_after_seconds: float | None = None,
        violations: Sequence[QuotaViolation] = (),
        reason: str | None = None,
    ) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds
        self.violations = tuple(violations)
        if reason:
            self.reason = reason

    def _details(self) -> Iterable[Detail]:
        yield from _retry_info(self.retry_after_seconds)
        if self.violations:
            yield error_details_pb2.QuotaFailure(
                violations=[
                    error_details_pb2.QuotaFailure.Violation(subject=v.subject, description=v.description)
                    for v in self.violations
                ]
            )


class UnavailableError(OmniRelayError):
    """No upstream could serve the call; the attempts say what each one did."""

    code = grpc.StatusCode.UNAVAILABLE
    reason = "UPSTREAM_UNAVAILABLE"

    def __init__(
        self,
        message: str,
        *,
        attempts: Sequence[AttemptRecord] = (),
        retry_after_seconds: float | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, metadata=metadata)
        self.attempts = tuple(attempts)
        self.retry_after_seconds = retry_after_seconds

    def _details(self) -> Iterable[Detail]:
        yield from _retry_info(self.retry_after_seconds)


class StreamInterruptedError(UnavailableError):
    """The upstream failed after chunks reached the caller; says how much was delivered."""

    reason = "STREAM_INTERRUPTED"

    def __init__(self, message: str, *, delivered_chunks: int, upstream_request_id: str = "") -> None:
        metadata = {"delivered_chunks": str(delivered_chunks)}
        if upstream_request_id:
            metadata["upstream_request_id"] = upstream_request_id
        super().__init__(message, metadata=metadata)
        self.delivered_chunks = delivered_chunks


class UnimplementedError(OmniRelayError):
    """The method exists in the contract but this server does not serve it yet."""

    code = grpc.StatusCode.UNIMPLEMENTED
    reason = "UNIMPLEMENTED"


class ShuttingDownError(OmniRelayError):
    """The server is draining; the caller should retry on another replica."""

    code = grpc.StatusCode.UNAVAILABLE
    reason = "SHUTTING_DOWN"


_OUTCOMES = {o: getattr(types_pb2, f"ATTEMPT_OUTCOME_{o.name}") for o in AttemptOutcome}


def _duration(seconds: float) -> duration_pb2.Duration:
    whole = int(seconds)
    return duration_pb2.Duration(seconds=whole, nanos=int((seconds - whole) * 1e9))


def attempt_proto(a: AttemptRecord) -> types_pb2.Attempt:
    """One attempt as the contract's ``Attempt`` (route facts and error details alike)."""
    return types_pb2.Attempt(
        model=a.model,
        provider=a.deployment.provider,
        deployment=a.deployment.name,
        outcome=_OUTCOMES[a.outcome],
        detail=f"{a.reason}: {a.detail}" if a.reason else a.detail,
        latency=_duration(a.latency_seconds),
        upstream_request_id=a.upstream_request_id,
    )


def _attempt_details(attempts: Sequence[AttemptRecord]) -> Iterable[Detail]:
    yield types_pb2.RouteFacts(attempts=[attempt_proto(a) for a in attempts])
    lines = []
    for a in attempts:
        upstream = f" [upstream request {a.upstream_request_id}]" if a.upstream_request_id else ""
        lines.append(f"{a.deployment.name} ({a.model}): {a.outcome.value} {a.reason}{upstream}: {a.detail}")
    yield error_details_pb2.DebugInfo(stack_entries=lines, detail="attempts")


def _retry_info(seconds: float | None) -> Iterable[Detail]:
    if seconds is not None:
        yield error_details_pb2.RetryInfo(retry_delay=_duration(seconds))


class UpstreamError(OmniRelayError):
    """A provider's failure, classified. Carries what operators need to chase it upstream."""

    retryable = False

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        http_status: int = 0,
        upstream_request_id: str = "",
        retry_after_seconds: float | None = None,
        upstream_code: str = "",
    ) -> None:
        metadata = {"provider": provider, "retryable": str(self.retryable).lower()}
        if http_status:
            metadata["http_status"] = str(http_status)
        if upstream_request_id:
            metadata["upstream_request_id"] = upstream_request_id
        if upstream_code:
            metadata["upstream_code"] = upstream_code
        super().__init__(message, metadata=metadata)
        self.provider = provider
        self.http_status = http_status
        self.upstream_request_id = upstream_request_id
        self.retry_after_seconds = retry_after_seconds
        self.upstream_code = upstream_code

    def _details(self) -> Iterable[Detail]:
        yield from _retry_info(self.retry_after_seconds)


class UpstreamAuthenticationError(UpstreamError):
    code = grpc.StatusCode.UNAUTHENTICATED
    reason = "UPSTREAM_AUTHENTICATION"


class UpstreamPermissionError(UpstreamError):
    code = grpc.StatusCode.PERMISSION_DENIED
    reason = "UPSTREAM_PERMISSION_DENIED"


class UpstreamNotFoundError(UpstreamError):
    code = grpc.StatusCode.NOT_FOUND
    reason = "UPSTREAM_NOT_FOUND"


class UpstreamInvalidRequestError(UpstreamError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "UPSTREAM_INVALID_REQUEST"


class ContextLengthExceededError(UpstreamError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "CONTEXT_LENGTH_EXCEEDED"


class ContentFilteredError(UpstreamError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "CONTENT_FILTERED"


class RateLimitedError(UpstreamError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "UPSTREAM_RATE_LIMITED"
    retryable = True


class QuotaExhaustedError(UpstreamError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "UPSTREAM_QUOTA_EXHAUSTED"

    def _details(self) -> Iterable[Detail]:
        yield from super()._details()
        yield error_details_pb2.QuotaFailure(
            violations=[
                error_details_pb2.QuotaFailure.Violation(
                    subject=f"provider:{self.provider}", description=self.message
                )
            ]
        )


class OverloadedError(UpstreamError):
    code = grpc.StatusCode.UNAVAILABLE
    reason = "UPSTREAM_OVERLOADED"
    retryable = True


class UpstreamServerError(UpstreamError):
    code = grpc.StatusCode.UNAVAILABLE
    reason = "UPSTREAM_SERVER_ERROR"
    retryable = True


class UpstreamConnectionError(UpstreamError):
    code = grpc.StatusCode.UNAVAILABLE
    reason = "UPSTREAM_CONNECTION"
    retryable = True


class UpstreamTimeoutError(UpstreamError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    reason = "UPSTREAM_TIMEOUT"
    retryable = True


class MalformedResponseError(UpstreamError):
    code = grpc.StatusCode.UNAVAILABLE
    reason = "UPSTREAM_MALFORMED"
    retryable = True


class StreamBrokenError(UpstreamError):
    code = grpc.StatusCode.UNAVAILABLE
    reason = "UPSTREAM_STREAM_BROKEN"
    retryable = True


_CODES: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INTERNAL: code_pb2.INTERNAL,
    grpc.StatusCode.INVALID_ARGUMENT: code_pb2.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION: code_pb2.FAILED_PRECONDITION,
    grpc.StatusCode.NOT_FOUND: code_pb2.NOT_FOUND,
    grpc.StatusCode.DEADLINE_EXCEEDED: code_pb2.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED: code_pb2.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNAVAILABLE: code_pb2.UNAVAILABLE,
    grpc.StatusCode.UNIMPLEMENTED: code_pb2.UNIMPLEMENTED,
    grpc.StatusCode.UNAUTHENTICATED: code_pb2.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED: code_pb2.PERMISSION_DENIED,
}
