"""Protobuf requests into domain requests, validated in the same pass.

Every violation is collected (not just the first) and reported with the
field's path in the proto (``messages[2].role``, ``sampling.temperature``) so
a caller can fix the whole request at once.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from google.protobuf import json_format

from omnirelay import domain as d
from omnirelay.errors import FieldViolation, InvalidArgumentError
from omnirelay_client.v1 import completion_pb2, types_pb2

_ROLES = {
    types_pb2.ROLE_SYSTEM: d.Role.SYSTEM,
    types_pb2.ROLE_USER: d.Role.USER,
    types_pb2.ROLE_ASSISTANT: d.Role.ASSISTANT,
    types_pb2.ROLE_TOOL: d.Role.TOOL,
}
_TOOL_MODES = {
    types_pb2.ToolChoice.MODE_UNSPECIFIED: d.ToolChoiceMode.DEFAULT,
    types_pb2.ToolChoice.MODE_AUTO: d.ToolChoiceMode.AUTO,
    types_pb2.ToolChoice.MODE_NONE: d.ToolChoiceMode.NONE,
    types_pb2.ToolChoice.MODE_REQUIRED: d.ToolChoiceMode.REQUIRED,
    types_pb2.ToolChoice.MODE_FUNCTION: d.ToolChoiceMode.FUNCTION,
}
_FORMATS = {
    types_pb2.ResponseFormat.TYPE_UNSPECIFIED: d.ResponseFormatType.TEXT,
    types_pb2.ResponseFormat.TYPE_TEXT: d.ResponseFormatType.TEXT,
    types_pb2.ResponseFormat.TYPE_JSON_OBJECT: d.ResponseFormatType.JSON_OBJECT,
    types_pb2.ResponseFormat.TYPE_JSON_SCHEMA: d.ResponseFormatType.JSON_SCHEMA,
}
_CACHE_MODES = {
    types_pb2.CacheOptions.MODE_UNSPECIFIED: d.CacheMode.USE,
    types_pb2.CacheOptions.MODE_USE: d.CacheMode.USE,
    types_pb2.CacheOptions.MODE_BYPASS: d.CacheMode.BYPASS,
    types_pb2.CacheOptions.MODE_REFRESH: d.CacheMode.REFRESH,
    types_pb2.CacheOptions.MODE_ONLY_IF_CACHED: d.CacheMode.ONLY_IF_CACHED,
}
_DEFAULT_TOOL_CHOICE = d.ToolChoice()
_DEFAULT_CACHE = d.CachePolicy()
_DEFAULT_ROUTING = d.Routing()
_DEFAULT_ATTRIBUTION = d.Attribution()
_TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_STOP_SEQUENCES = 4
MAX_CHOICES = 16


def completion_request(msg: completion_pb2.CompleteRequest, request_id: str) -> d.CompletionRequest:
    """The domain request, or InvalidArgumentError naming every bad field."""
    bad: list[FieldViolation] = []
    messages = messages_from(msg.messages, bad)
    tools = tuple(_tool(t, i, bad) for i, t in enumerate(msg.tools)) if msg.tools else ()
    # Unset sub-messages (the common case) take the shared defaults: no per-call objects.
    tool_choice = _DEFAULT_TOOL_CHOICE
    if msg.HasField("tool_choice"):
        tool_choice = d.ToolChoice(
            _TOOL_MODES.get(msg.tool_choice.mode, d.ToolChoiceMode.DEFAULT), msg.tool_choice.name
        )
    if tool_choice.mode is d.ToolChoiceMode.FUNCTION and tool_choice.name not in {t.name for t in tools}:
        bad.append(
            FieldViolation("tool_choice.name", f"{tool_choice.name!r} is not one of the declared tools")
        )
    if tool_choice.mode in (d.ToolChoiceMode.REQUIRED, d.ToolChoiceMode.FUNCTION) and not tools:
        bad.append(FieldViolation("tool_choice.mode", "requires at least one tool in `tools`"))
    sampling = _sampling(msg.sampling, bad) if msg.HasField("sampling") else d.Sampling()
    cache = _cache(msg.cache, bad) if msg.HasField("cache") else _DEFAULT_CACHE
    routing = _routing(msg.routing, bad) if msg.HasField("routing") else _DEFAULT_ROUTING
    if bad:
        raise InvalidArgumentError(bad)
    return d.CompletionRequest(
        model=msg.model,
        messages=messages,
        tools=tools,
        tool_choice=tool_choice,
        sampling=sampling,
        preset=msg.preset,
        routing=routing,
        cache=cache,
        attribution=_attribution(msg.attribution) if msg.HasField("attribution") else _DEFAULT_ATTRIBUTION,
        request_id=request_id,
    )


_STRATEGIES = {
    types_pb2.RoutingOptions.STRATEGY_UNSPECIFIED: "",
    types_pb2.RoutingOptions.STRATEGY_PRIORITY: "priority",
    types_pb2.RoutingOptions.STRATEGY_WEIGHTED: "weighted",
    types_pb2.RoutingOptions.STRATEGY_LEAST_IN_FLIGHT: "least_in_flight",
    types_pb2.RoutingOptions.STRATEGY_LOWEST_LATENCY: "lowest_latency",
    types_pb2.RoutingOptions.STRATEGY_LOWEST_COST: "lowest_cost",
    types_pb2.RoutingOptions.STRATEGY_STICKY: "sticky",
}


def stream_completion_request(msg: completion_pb2.CompleteRequest, request_id: str) -> d.CompletionRequest:
    """``completion_request`` for the request inside a StreamCompleteRequest: paths say ``request.``."""
    try:
        return completion_request(msg, request_id)
    except InvalidArgumentError as exc:
        raise InvalidArgumentError(
            [FieldViolation(f"request.{v.field}", v.description) for v in exc.violations]
        ) from None


def option_violations(msg: completion_pb2.CompleteRequest) -> list[FieldViolation]:
    """Problems in the options a cache key leaves out (routing, cache), for a request served from cache.

    Everything else in the request is part of the key, so a stored answer implies it was valid.
    """
    bad: list[FieldViolation] = []
    if msg.HasField("routing"):
        _routing(msg.routing, bad)
    if msg.HasField("cache"):
        _cache(msg.cache, bad)
    return bad


def _routing(routing: types_pb2.RoutingOptions, bad: list[FieldViolation]) -> d.Routing:
    strategy = _STRATEGIES.get(routing.strategy)
    if strategy is None:
        bad.append(FieldViolation("routing.strategy", f"unknown strategy {routing.strategy}"))
    for i, name in enumerate(routing.fallback_models):
        if not name:
            bad.append(FieldViolation(f"routing.fallback_models[{i}]", "must name a model"))
    return d.Routing(
        allow_fallback=routing.allow_fallback if routing.HasField("allow_fallback") else None,
        fallback_models=tuple(routing.fallback_models),
        strategy=strategy or "",
        sticky_key=routing.sticky_key,
        strict_parameters=routing.strict_parameters,
    )


def _attribution(a: types_pb2.Attribution) -> d.Attribution:
    return d.Attribution(project=a.project, user=a.user, tags=tuple(sorted(a.tags.items())))


def messages_from(items: Any, bad: list[FieldViolation], *, required: bool = True) -> tuple[d.Message, ...]:
    if required and not items:
        bad.append(FieldViolation("messages", "must contain at least one message"))
    # By index: iterating a protobuf repeated field ends on a raised and caught IndexError.
    return tuple([_message(items[i], i, bad) for i in range(len(items))])


def _message(m: types_pb2.Message, i: int, bad: list[FieldViolation]) -> d.Message:
    # The common message (a known role, text parts, no tool calls) builds no error paths.
    role = _ROLES.get(m.role)
    if role is None:
        bad.append(
            FieldViolation(
                f"messages[{i}].role", "is required: ROLE_SYSTEM, ROLE_USER, ROLE_ASSISTANT or ROLE_TOOL"
            )
        )
        role = d.Role.USER
    parts: list[d.ContentPart] = []
    content = m.content
    for j in range(len(content)):
        part = content[j]
        kind = part.WhichOneof("part")
        if kind == "text":
            parts.append(d.TextPart(part.text))
        elif kind == "image":
            image = part.image
            if image.WhichOneof("source") is None:
                bad.append(FieldViolation(f"messages[{i}].content[{j}].image", "must set url or data"))
            elif image.HasField("data") and not image.media_type:
                bad.append(
                    FieldViolation(f"messages[{i}].content[{j}].image.media_type", "is required with data")
                )
            parts.append(d.ImagePart(image.url, image.data, image.media_type, image.detail))
        else:
            bad.append(FieldViolation(f"messages[{i}].content[{j}]", "must set text or image"))
    calls = tuple(d.ToolCall(c.id, c.name, c.arguments_json) for c in m.tool_calls) if m.tool_calls else ()
    if not parts and not calls:
        bad.append(FieldViolation(f"messages[{i}].content", "must contain at least one part (or tool calls)"))
    if calls and role is not d.Role.ASSISTANT:
        bad.append(FieldViolation(f"messages[{i}].tool_calls", "only assistant messages carry tool calls"))
    if role is d.Role.TOOL and not m.tool_call_id:
        bad.append(FieldViolation(f"messages[{i}].tool_call_id", "is required for ROLE_TOOL messages"))
    return d.Message(role, tuple(parts), m.name, calls, m.tool_call_id)


def _tool(t: types_pb2.Tool, i: int, bad: list[FieldViolation]) -> d.ToolSpec:
    if not _TOOL_NAME.match(t.name):
        bad.append(FieldViolation(f"tools[{i}].name", "must be 1-64 letters, digits, '_' or '-'"))
    params = json_format.MessageToDict(t.parameters) if t.HasField("parameters") else {}
    return d.ToolSpec(t.name, t.description, params, t.strict)


# Bounds of the sampling fields: (low, high, low end open?) for floats, (low, high or None) for ints.
_FLOAT_BOUNDS: dict[str, tuple[float, float, bool]] = {
    "temperature": (0.0, 2.0, False),
    "top_p": (0.0, 1.0, True),
    "presence_penalty": (-2.0, 2.0, False),
    "frequency_penalty": (-2.0, 2.0, False),
}
_INT_BOUNDS: dict[str, tuple[int, int | None]] = {
    "top_k": (1, None),
    "max_tokens": (1, None),
    "n": (1, MAX_CHOICES),
    "top_logprobs": (0, 20),
}


def _sampling(s: types_pb2.SamplingParams, bad: list[FieldViolation]) -> d.Sampling:
    # ListFields yields only the fields the caller set: a typical request sets one or two.
    values: dict[str, Any] = {}
    for field, value in s.ListFields():
        name = field.name
        if name in _FLOAT_BOUNDS:
            lo, hi, low_open = _FLOAT_BOUNDS[name]
            if not (math.isfinite(value) and (lo < value if low_open else lo <= value) and value <= hi):
                bracket = "(" if low_open else "["
                bad.append(
                    FieldViolation(f"sampling.{name}", f"must be in {bracket}{lo:g}, {hi:g}], got {value:g}")
                )
            values[name] = value
        elif name in _INT_BOUNDS:
            low, high = _INT_BOUNDS[name]
            if value < low or (high is not None and value > high):
                allowed = f"from {low} to {high}" if high is not None else f">= {low}"
                bad.append(FieldViolation(f"sampling.{name}", f"must be {allowed}, got {value}"))
            values[name] = value
        elif name == "stop":
            stop = tuple(value)
            if len(stop) > MAX_STOP_SEQUENCES:
                bad.append(
                    FieldViolation(
                        "sampling.stop", f"at most {MAX_STOP_SEQUENCES} stop sequences, got {len(stop)}"
                    )
                )
            if any(not x for x in stop):
                bad.append(FieldViolation("sampling.stop", "stop sequences must not be empty"))
            values["stop"] = stop
        elif name == "response_format":
            values[name] = _format(value, bad)
        else:  # seed, logprobs: any value is valid
            values[name] = value
    return d.Sampling(**values)


def _format(f: types_pb2.ResponseFormat, bad: list[FieldViolation]) -> d.ResponseFormat:
    kind = _FORMATS.get(f.type, d.ResponseFormatType.TEXT)
    schema: Mapping[str, Any] | None = None
    if f.HasField("json_schema"):
        schema = json_format.MessageToDict(f.json_schema)
    if kind is d.ResponseFormatType.JSON_SCHEMA and not schema:
        bad.append(FieldViolation("sampling.response_format.json_schema", "is required for TYPE_JSON_SCHEMA"))
    return d.ResponseFormat(kind, f.schema_name, schema, f.strict)


def _cache(c: types_pb2.CacheOptions, bad: list[FieldViolation]) -> d.CachePolicy:
    ttl: float | None = None
    if c.HasField("ttl"):
        ttl = c.ttl.seconds + c.ttl.nanos / 1e9
        if ttl < 0:
            bad.append(FieldViolation("cache.ttl", "must not be negative"))
    return d.CachePolicy(_CACHE_MODES.get(c.mode, d.CacheMode.USE), ttl)
