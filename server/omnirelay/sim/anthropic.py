"""Anthropic's Messages wire format: ``POST /v1/messages``, one JSON answer or a named-event SSE stream.

Shapes follow the recorded traffic in the shared fixtures (anthropic/*): a
stream is ``message_start`` (input usage), per content block
``content_block_start`` / ``content_block_delta``... / ``content_block_stop``,
a ``ping`` after the first block start, ``message_delta`` with the stop reason
and cumulative usage, then ``message_stop``. A planned tool call is a
``tool_use`` block whose input arrives as ``input_json_delta`` fragments, the
first one empty as Anthropic sends it. Errors are
``{"type":"error","error":{"type","message"},"request_id"}`` with a
``request-id`` header; an error after the stream started is an ``event: error``
frame under HTTP 200. Anthropic has no content-filter error: a filtered answer
is a 200 with ``stop_reason: "refusal"``.

The free model listing is ``GET /v1/models`` with an ``anthropic-version``
header (``list_models``; server.py routes the path, which OpenAI shares):
``{"data": [{"type": "model", "id", "display_name", "created_at"}], "has_more",
"first_id", "last_id"}``, newest first, every model on one page.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from omnirelay.sim.core import (
    ClientGoneError,
    Plan,
    PromptFacts,
    Served,
    Simulator,
    drop_connection,
    error_response,
    hang,
    last_message,
    open_stream,
    parse_options,
    pause,
    send,
)

FORMAT = "anthropic"
SSE = "text/event-stream; charset=utf-8"
# The core's answer length when neither tokens= nor max_tokens shortens it.
DEFAULT_TOKENS = 12
# Tool input fragments are about this long, as Anthropic's input_json_delta events are.
_FRAGMENT = 8
_MID_STREAM = ("drop", "malformed", "stream_error")
_RATE_LIMIT = (
    "This request would exceed your organization's rate limit of 20,000,000 prompt bytes per hour "
    "(org: 00000000-0000-0000-0000-000000000000, model: {model}). For details, refer to: "
    "https://docs.claude.com/en/api/rate-limits. You can see the response headers for current usage. "
    "Please reduce the prompt length or the maximum tokens requested, or try again later."
)
_CREDIT = (
    "Your credit balance is too low to access the Anthropic API. "
    "Please go to Plans & Billing to upgrade or purchase credits."
)
_PERMISSION = "Your API key does not have permission to use the specified resource."
_OVERLOADED = "Overloaded"
# What GET /v1/models lists, newest first as Anthropic orders it: (id, display_name, created_at).
_MODELS = (
    ("claude-sonnet-4-5-20250929", "Claude Sonnet 4.5", "2025-09-29T00:00:00Z"),
    ("claude-opus-4-1-20250805", "Claude Opus 4.1", "2025-08-05T00:00:00Z"),
    ("claude-3-5-haiku-20241022", "Claude Haiku 3.5", "2024-10-22T00:00:00Z"),
)


def routes(sim: Simulator) -> list[web.RouteDef]:
    async def messages(request: web.Request) -> web.StreamResponse:
        return await _messages(sim, request)

    return [web.post("/v1/messages", messages)]


async def list_models(sim: Simulator, request: web.Request) -> web.StreamResponse:
    """``GET /v1/models`` in Anthropic's shape: free, recorded as a listing, failing as the header says."""
    plan, served = sim.listing(FORMAT, request.headers.get("x-sim-options", ""))
    try:
        early = await _fault(request, served, plan, stream=False)
        if early is not None:
            return early
        await pause(request, served, plan.ttft)
    except ClientGoneError:
        return web.Response()
    served.completed = True
    data = [{"type": "model", "id": i, "display_name": n, "created_at": c} for i, n, c in _MODELS]
    page = {"data": data, "has_more": False, "first_id": data[0]["id"], "last_id": data[-1]["id"]}
    return web.json_response(page, headers={"request-id": plan.request_id})


async def _messages(sim: Simulator, request: web.Request) -> web.StreamResponse:
    try:
        body = await request.json()
    except ValueError:
        return _invalid("There was an error parsing the body of your request.")
    if not isinstance(body, dict):
        return _invalid("Input should be a valid dictionary or object to extract fields from")
    for field in ("model", "messages", "max_tokens"):
        if field not in body:
            return _invalid(f"{field}: Field required")
    stream = body.get("stream") is True
    facts = _facts(body, stream, request.headers.get("x-sim-options", ""))
    plan = sim.plan(facts)
    served = sim.record(FORMAT, plan, stream, traceparent=request.headers.get("traceparent", ""))
    stop = _stop_reason(plan, facts)
    try:
        early = await _fault(request, served, plan, stream)
        if early is not None:
            return early
        if stream:
            return await _stream(request, served, plan, stop)
        await pause(request, served, plan.ttft + plan.itl * max(0, _piece_count(plan) - 1))
        served.pieces_sent = _piece_count(plan)
        served.completed = True
        return web.json_response(_message(plan, stop), headers={"request-id": plan.request_id})
    except ClientGoneError:
        return web.Response()


def _facts(body: dict[str, Any], stream: bool, header: str) -> PromptFacts:
    choice = _object(body.get("tool_choice"))
    tools = tuple(str(t.get("name", "")) for t in body.get("tools") or () if isinstance(t, dict))
    if choice.get("type") == "none":
        tools = ()
    forced = None
    if tools and choice.get("type") == "tool":
        forced = str(choice.get("name", ""))
    elif tools and choice.get("type") == "any":
        forced = tools[0]
    output_format = _object(_object(body.get("output_config")).get("format"))
    max_tokens = body.get("max_tokens")
    last_role, last_text = last_message(body)
    return PromptFacts(
        model=str(body.get("model", "")),
        prompt=_prompt(body),
        max_tokens=max_tokens if isinstance(max_tokens, int) else None,
        stop=tuple(body.get("stop_sequences") or ()),
        tools=tools,
        forced_tool=forced,
        json_mode=output_format.get("type") == "json_schema",
        stream=stream,
        options_header=header,
        last_role=last_role,
        last_message=last_text,
    )


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _prompt(body: dict[str, Any]) -> str:
    texts = [_text(body.get("system"))]
    texts.extend(_text(m.get("content")) for m in body.get("messages") or () if isinstance(m, dict))
    return "\n".join(t for t in texts if t)


def _text(content: Any) -> str:
    """The readable text of a content value: a string, or blocks (text, tool_result, tool_use input)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    out = []
    for block in content:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text":
            out.append(str(block.get("text", "")))
        elif block.get("type") == "tool_result":
            out.append(_text(block.get("content")))
        elif block.get("type") == "tool_use":
            out.append(json.dumps(block.get("input", {})))
    return "\n".join(out)


def _stop_reason(plan: Plan, facts: PromptFacts) -> tuple[str, str | None]:
    """Anthropic's stop_reason and stop_sequence for the plan."""
    if plan.finish == "tool_calls":
        return "tool_use", None
    if plan.finish == "length":
        return "max_tokens", None
    if facts.stop and not facts.json_mode:
        # The plan cut at a stop sequence when it holds fewer pieces than it would have.
        wanted = int(parse_options(facts.model, facts.options_header)[1].get("tokens", DEFAULT_TOKENS))
        planned = min(wanted, facts.max_tokens) if facts.max_tokens is not None else wanted
        if len(plan.pieces) < planned:
            # The plan does not say which sequence matched; with one (the usual case) it is exact.
            return "stop_sequence", facts.stop[0]
    return "end_turn", None


def _piece_count(plan: Plan) -> int:
    return len(_fragments(plan)) if plan.tool_call is not None else len(plan.pieces)


def _fragments(plan: Plan) -> list[str]:
    assert plan.tool_call is not None
    args = plan.tool_call.arguments_json
    return [args[i : i + _FRAGMENT] for i in range(0, len(args), _FRAGMENT)]


def _usage(plan: Plan, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": plan.prompt_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": output_tokens,
    }


def _message_id(plan: Plan) -> str:
    return "msg_" + plan.request_id.replace("-", "_")


def _message(plan: Plan, stop: tuple[str, str | None]) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if plan.fault == "filter":
        stop = ("refusal", None)
    elif plan.tool_call is not None:
        call = plan.tool_call
        content.append(
            {
                "type": "tool_use",
                "id": _tool_id(call.id),
                "name": call.name,
                "input": json.loads(call.arguments_json),
            }
        )
    else:
        content.append({"type": "text", "text": plan.text})
    output = 0 if plan.fault == "filter" else plan.completion_tokens
    return {
        "model": plan.model,
        "id": _message_id(plan),
        "type": "message",
        "role": "assistant",
        "content": content,
        "stop_reason": stop[0],
        "stop_sequence": stop[1],
        "usage": {**_usage(plan, output), "service_tier": "standard"},
    }


def _tool_id(call_id: str) -> str:
    # Anthropic's tool ids are toolu_…; the plan's are call_….
    return "toolu_" + call_id.removeprefix("call_")


def _frame(event: str, data: dict[str, Any]) -> bytes:
    return (
        b"event: " + event.encode() + b"\ndata: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"
    )


async def _stream(
    request: web.Request, served: Served, plan: Plan, stop: tuple[str, str | None]
) -> web.StreamResponse:
    response = await open_stream(
        request, served, SSE, {"cache-control": "no-cache", "request-id": plan.request_id}
    )
    try:
        await pause(request, served, plan.ttft)
        start: dict[str, Any] = {
            "model": plan.model,
            "id": _message_id(plan),
            "type": "message",
            "role": "assistant",
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": _usage(plan, 1),
        }
        await send(
            request, response, served, _frame("message_start", {"type": "message_start", "message": start})
        )
        if plan.fault == "filter":
            stop = ("refusal", None)
            pieces: list[str] = []
        elif plan.tool_call is not None:
            call = plan.tool_call
            block = {"type": "tool_use", "id": _tool_id(call.id), "name": call.name, "input": {}}
            pieces = _fragments(plan)
            if not await _block(request, response, served, plan, block, pieces):
                return response
        else:
            pieces = list(plan.pieces)
            if not await _block(request, response, served, plan, {"type": "text", "text": ""}, pieces):
                return response
        output = 0 if plan.fault == "filter" else plan.completion_tokens
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": stop[0], "stop_sequence": stop[1]},
            "usage": _usage(plan, output),
        }
        await send(request, response, served, _frame("message_delta", delta))
        await send(request, response, served, _frame("message_stop", {"type": "message_stop"}))
        await response.write_eof()
        served.completed = True
    except ClientGoneError:
        pass
    return response


async def _block(
    request: web.Request,
    response: web.StreamResponse,
    served: Served,
    plan: Plan,
    block: dict[str, Any],
    pieces: list[str],
) -> bool:
    """One content block, piece by piece; False when a mid-stream fault ended the stream."""
    tool = block["type"] == "tool_use"
    await send(
        request,
        response,
        served,
        _frame("content_block_start", {"type": "content_block_start", "index": 0, "content_block": block}),
    )
    await send(request, response, served, _frame("ping", {"type": "ping"}))
    if tool:
        await send(request, response, served, _delta({"type": "input_json_delta", "partial_json": ""}))
    for i, piece in enumerate(pieces):
        if i == plan.after and plan.fault in _MID_STREAM:
            await _break(request, response, served, plan)
            return False
        if i:
            await pause(request, served, plan.itl)
        if tool:
            await send(request, response, served, _delta({"type": "input_json_delta", "partial_json": piece}))
        else:
            await send(request, response, served, _delta({"type": "text_delta", "text": piece}))
        served.pieces_sent += 1
    if plan.fault in _MID_STREAM:
        # Fewer pieces than ``after``: the failure comes once they are all out.
        await _break(request, response, served, plan)
        return False
    await send(
        request, response, served, _frame("content_block_stop", {"type": "content_block_stop", "index": 0})
    )
    return True


def _delta(delta: dict[str, Any]) -> bytes:
    return _frame("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})


async def _break(request: web.Request, response: web.StreamResponse, served: Served, plan: Plan) -> None:
    """The stream's failure: a cut connection, a frame that is not JSON, or Anthropic's error event."""
    if plan.fault == "drop":
        drop_connection(request, served)
        return
    if plan.fault == "stream_error":
        # As observed live: "details": null, and the stream closes after the event.
        error = {
            "type": "error",
            "error": {"details": None, "type": "overloaded_error", "message": _OVERLOADED},
        }
        await send(request, response, served, _frame("error", error))
    else:
        await send(
            request,
            response,
            served,
            b'event: content_block_delta\ndata: {"type":"content_block_delta","ind\n\n',
        )
    await response.write_eof()


async def _fault(request: web.Request, served: Served, plan: Plan, stream: bool) -> web.StreamResponse | None:
    """The answer a fault gives before any token, or None to go on (stream faults act mid-stream)."""
    fault = plan.fault
    if not fault or fault == "filter" or (stream and fault in _MID_STREAM):
        return None
    await pause(request, served, plan.ttft)
    if fault == "hang":
        return await hang(request, served)
    if fault == "drop":
        drop_connection(request, served)
        return web.Response()
    if fault == "malformed":
        body = (
            b'{"model":"'
            + plan.model.encode()
            + b'","id":"'
            + _message_id(plan).encode()
            + b'","content":[{"ty'
        )
        return web.Response(
            status=200, body=body, content_type="application/json", headers={"request-id": plan.request_id}
        )
    status, kind, message = _error_for(fault, plan)
    return _error(status, kind, message, plan)


def _error_for(fault: str, plan: Plan) -> tuple[int, str, str]:
    if fault == "401":
        return 401, "authentication_error", "invalid x-api-key"
    if fault == "403":
        return 403, "permission_error", _PERMISSION
    if fault == "404":
        return 404, "not_found_error", f"model: {plan.model}"
    if fault == "429":
        return 429, "rate_limit_error", _RATE_LIMIT.format(model=plan.model)
    if fault == "500":
        return 500, "api_error", "Internal server error"
    if fault in ("503", "529"):
        return int(fault), "overloaded_error", _OVERLOADED
    if fault == "context":
        return (
            400,
            "invalid_request_error",
            f"prompt is too long: {200_000 + plan.prompt_tokens} tokens > 200000 maximum",
        )
    if fault == "quota":
        return 400, "invalid_request_error", _CREDIT
    return 400, "invalid_request_error", "messages: at least one message is required"


def _error(status: int, kind: str, message: str, plan: Plan) -> web.Response:
    body = {"type": "error", "error": {"type": kind, "message": message}, "request_id": plan.request_id}
    retry = "true" if status in (429, 500, 503, 529) else "false"
    return error_response(status, body, plan, {"request-id": plan.request_id, "x-should-retry": retry})


def _invalid(message: str) -> web.Response:
    body = {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": message},
        "request_id": None,
    }
    return web.json_response(body, status=400, headers={"x-should-retry": "false"})
