"""omnirelay's Python client: ``AsyncClient``, ``Client``, message helpers and typed errors."""

from omnirelay_client.client import (
    AsyncClient,
    CallOptions,
    Client,
    Sampling,
    assistant,
    build_request,
    system,
    text_of,
    user,
)
from omnirelay_client.errors import (
    DeadlineExceededError,
    FieldViolation,
    InvalidArgumentError,
    NotFoundError,
    OmniRelayError,
    ResourceExhaustedError,
    UnavailableError,
    UnimplementedError,
)

__all__ = [
    "AsyncClient",
    "CallOptions",
    "Client",
    "DeadlineExceededError",
    "FieldViolation",
    "InvalidArgumentError",
    "NotFoundError",
    "OmniRelayError",
    "ResourceExhaustedError",
    "Sampling",
    "UnavailableError",
    "UnimplementedError",
    "assistant",
    "build_request",
    "system",
    "text_of",
    "user",
]
