"""Typed exceptions built from the server's rich gRPC status details.

OmniRelayError
├── InvalidArgumentError     .field_violations
├── NotFoundError            (ErrorInfo metadata "suggestions" for unknown models)
├── FailedPreconditionError
├── DeadlineExceededError
├── ResourceExhaustedError   .retry_delay, .quota_violations
├── UnavailableError         .retry_delay, .attempts, .route_attempts
├── UnimplementedError
├── UnauthenticatedError
├── PermissionDeniedError
├── CancelledError
└── InternalError
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

from omnirelay_client.v1 import types_pb2

_DETAILS_KEY = "grpc-status-details-bin"


@dataclass(frozen=True, slots=True)
class FieldViolation:
    field: str
    description: str


@dataclass(frozen=True, slots=True)
class QuotaViolation:
    subject: str
    description: str


class OmniRelayError(Exception):
    """A failed call, with everything the server said about it."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.reason = ""
        self.metadata: dict[str, str] = {}
        self.field_violations: tuple[FieldViolation, ...] = ()
        self.quota_violations: tuple[QuotaViolation, ...] = ()
        self.retry_delay: float | None = None
        # One readable line per attempt (DebugInfo), and the same attempts typed (RouteFacts).
        self.attempts: tuple[str, ...] = ()
        self.route_attempts: tuple[types_pb2.Attempt, ...] = ()
        self.request_id = ""


class InvalidArgumentError(OmniRelayError): ...


class NotFoundError(OmniRelayError): ...


class FailedPreconditionError(OmniRelayError): ...


class DeadlineExceededError(OmniRelayError): ...


class ResourceExhaustedError(OmniRelayError): ...


class UnavailableError(OmniRelayError): ...


class UnimplementedError(OmniRelayError): ...


class UnauthenticatedError(OmniRelayError): ...


class PermissionDeniedError(OmniRelayError): ...


class CancelledError(OmniRelayError): ...


class InternalError(OmniRelayError): ...


_BY_CODE: dict[grpc.StatusCode, type[OmniRelayError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.UNIMPLEMENTED: UnimplementedError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.CANCELLED: CancelledError,
}


def from_rpc_error(error: grpc.RpcError) -> OmniRelayError:
    """The typed exception for a failed call (sync or asyncio)."""
    code: grpc.StatusCode = error.code()
    message: str = error.details() or ""
    result = _BY_CODE.get(code, InternalError)(code, message)
    trailing: Any = error.trailing_metadata()
    for key, value in trailing or ():
        if key == _DETAILS_KEY and isinstance(value, bytes):
            _apply_details(result, status_pb2.Status.FromString(value))
        elif key == "x-request-id" and isinstance(value, str):
            result.request_id = value
    return result


def _error_info(result: OmniRelayError, info: error_details_pb2.ErrorInfo) -> None:
    result.reason = info.reason
    result.metadata = dict(info.metadata)
    result.request_id = result.request_id or info.metadata.get("request_id", "")


def _bad_request(result: OmniRelayError, bad: error_details_pb2.BadRequest) -> None:
    result.field_violations = tuple(FieldViolation(v.field, v.description) for v in bad.field_violations)


def _retry_info(result: OmniRelayError, retry: error_details_pb2.RetryInfo) -> None:
    result.retry_delay = retry.retry_delay.seconds + retry.retry_delay.nanos / 1e9


def _quota_failure(result: OmniRelayError, quota: error_details_pb2.QuotaFailure) -> None:
    result.quota_violations = tuple(QuotaViolation(v.subject, v.description) for v in quota.violations)


def _debug_info(result: OmniRelayError, debug: error_details_pb2.DebugInfo) -> None:
    result.attempts = tuple(debug.stack_entries)


def _route_facts(result: OmniRelayError, facts: types_pb2.RouteFacts) -> None:
    result.route_attempts = tuple(facts.attempts)


# Each google.rpc detail type the server sends, and where it lands on the exception.
_DETAILS: dict[str, tuple[Any, Any]] = {
    cls.DESCRIPTOR.full_name: (cls, apply)
    for cls, apply in (
        (error_details_pb2.ErrorInfo, _error_info),
        (error_details_pb2.BadRequest, _bad_request),
        (error_details_pb2.RetryInfo, _retry_info),
        (error_details_pb2.QuotaFailure, _quota_failure),
        (error_details_pb2.DebugInfo, _debug_info),
        (types_pb2.RouteFacts, _route_facts),
    )
}


def _apply_details(result: OmniRelayError, status: status_pb2.Status) -> None:
    for detail in status.details:
        known = _DETAILS.get(detail.TypeName())
        if known is not None:
            cls, apply = known
            message = cls()
            detail.Unpack(message)
            apply(result, message)
