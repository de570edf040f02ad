"""Cache keys: a stable hash of everything that decides an answer, and nothing else.

The key covers the tenant, the resolved model, the preset, the messages, the
tools, the tool choice, the response format and every sampling parameter. It
is computed from a canonical form: a copy of the request without the fields
that do not change the answer (the model as the caller spelled it, routing,
cache and attribution options), with parameters that only restate a default
(``n = 1``, ``logprobs = false``, a plain-text response format…) removed, in
protobuf's deterministic serialization (fields in number order, maps sorted,
so neither the order a client set fields in nor JSON key order matters).
"""

from __future__ import annotations

import hashlib

from omnirelay_client.v1 import completion_pb2, types_pb2

_TEXT_FORMATS = (types_pb2.ResponseFormat.TYPE_UNSPECIFIED, types_pb2.ResponseFormat.TYPE_TEXT)
_SEPARATOR = b"\x1f"


def canonical(request: completion_pb2.CompleteRequest) -> bytes:
    """The request's answer-deciding content, as bytes that are equal exactly when it is."""
    copy = completion_pb2.CompleteRequest()
    copy.CopyFrom(request)
    copy.ClearField("model")
    copy.ClearField("routing")
    copy.ClearField("cache")
    copy.ClearField("attribution")
    if copy.HasField("sampling"):
        _normalize_sampling(copy.sampling)
        if not copy.sampling.ListFields():
            copy.ClearField("sampling")
    if copy.HasField("tool_choice") and not copy.tool_choice.ListFields():
        copy.ClearField("tool_choice")
    return copy.SerializeToString(deterministic=True)


def _normalize_sampling(s: types_pb2.SamplingParams) -> None:
    if s.HasField("n") and s.n == 1:
        s.ClearField("n")
    if s.HasField("logprobs") and not s.logprobs:
        s.ClearField("logprobs")
    if s.HasField("top_logprobs") and s.top_logprobs == 0:
        s.ClearField("top_logprobs")
    if s.HasField("response_format"):
        f = s.response_format
        if f.type in _TEXT_FORMATS and not f.schema_name and not f.HasField("json_schema") and not f.strict:
            s.ClearField("response_format")


def cache_key(request: completion_pb2.CompleteRequest, model: str, tenant: str) -> str:
    """``model|digest``: the model in clear so one model's entries can be cleared together."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(tenant.encode())
    digest.update(_SEPARATOR)
    digest.update(model.encode())
    digest.update(_SEPARATOR)
    digest.update(canonical(request))
    return f"{model}|{digest.hexdigest()}"
