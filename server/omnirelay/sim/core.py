"""The simulator's shared core: what to answer (a Plan), faults to inject, pacing, and the record.

Each wire format (``sim/openai.py``, ``anthropic.py``, ``gemini.py``,
``ollama.py``) reads its own request shape into ``PromptFacts``, asks
``Simulator.plan`` what to say, and writes it in its own framing. Options
ride in the model name (``gpt-4o+ttft=50+itl=5+fault=429+retry_after=2``) so
they pass through the gateway untouched, or in an ``x-sim-options`` header
(``ttft=50;fault=drop``) for direct calls.

Options:
    ttft=MS          delay before the first token (unary: before the answer)
    itl=MS           delay between tokens
    tokens=N         answer length when max_tokens does not cut it (default 12)
    fault=KIND       401 403 404 400 429 500 503 529 context quota filter
                     hang (no answer until the client leaves) drop (connection closed mid-stream)
                     malformed (invalid JSON) stream_error (the format's in-stream error)
    retry_after=S    with 429/503/529: the retry-after header (seconds)
    after=N          with drop/stream_error/malformed in a stream: tokens sent first (default 3)
    fail_first=N     the fault hits only the first N requests for this exact model string,
                     ``+options`` and all (``x-sim-options`` is not part of it); later requests
                     for it are answered normally: "fails twice, then recovers" for retry and
                     circuit-breaker tests. Counted per Simulator across every wire format;
                     ``reset()`` (POST /_sim/reset) starts every count again.

Model listings (``GET /v1/models``, ``/openai/models``, ``/v1beta/models``,
``/api/tags``) spend no tokens and are the health probes' target; they are
recorded apart from completions (``listings`` in the stats) and take options
from the ``x-sim-options`` header only: a fault, ``ttft``, and ``fail_first``,
which there counts the listings the simulator has served.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from aiohttp import web

_WORDS = (
    "the quick amber signal drifts over quiet harbor lanterns while silver engines hum beneath "
    "northern winter skies and every relay keeps its promise to the patient listener"
).split()
_TOKEN = re.compile(r"\w+|[^\w\s]")
FAULTS = frozenset(
    {
        "401",
        "403",
        "404",
        "400",
        "429",
        "500",
        "503",
        "529",
        "context",
        "quota",
        "filter",
        "hang",
        "drop",
        "malformed",
        "stream_error",
    }
)

# A listing has no prompt to filter or overflow and no stream to break: these faults answer normally.
_NOT_FOR_LISTINGS = frozenset({"filter", "context", "stream_error"})


def count_tokens(text: str) -> int:
    """The simulator's tokenizer: the same rule as omnirelay's local estimator."""
    return sum(1 for _ in _TOKEN.finditer(text))


@dataclass(frozen=True, slots=True)
class PromptFacts:
    """What a format module read from its request."""

    model: str
    prompt: str
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    tools: tuple[str, ...] = ()
    forced_tool: str | None = None
    json_mode: bool = False
    stream: bool = False
    options_header: str = ""
    # The request's last message: its role as the wire format names it, and its text.
    last_role: str = ""
    last_message: str = ""


@dataclass(frozen=True, slots=True)
class ToolCallPlan:
    id: str
    name: str
    arguments_json: str


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything a format module needs to answer one request."""

    model: str
    pieces: tuple[str, ...]
    prompt_tokens: int
    finish: str  # "stop", "length" or "tool_calls"
    tool_call: ToolCallPlan | None
    ttft: float
    itl: float
    fault: str
    retry_after: float | None
    after: int
    request_id: str
    last_role: str = ""
    last_message: str = ""

    @property
    def completion_tokens(self) -> int:
        if self.tool_call is not None:
            return count_tokens(self.tool_call.arguments_json)
        return len(self.pieces)

    @property
    def text(self) -> str:
        return "".join(self.pieces)


@dataclass
class Served:
    """One request as the simulator saw it."""

    format: str
    model: str
    stream: bool
    fault: str
    request_id: str
    started: float = field(default_factory=time.monotonic)
    pieces_sent: int = 0
    completed: bool = False
    disconnected: bool = False
    # The last message of the request (role as the wire format names it: "model" for Gemini).
    last_role: str = ""
    last_message: str = ""
    # The W3C trace context the request carried ("" when none), so tests see it reach upstream.
    traceparent: str = ""


def _row(s: Served) -> dict[str, Any]:
    return {
        "format": s.format,
        "model": s.model,
        "stream": s.stream,
        "fault": s.fault,
        "request_id": s.request_id,
        "pieces_sent": s.pieces_sent,
        "completed": s.completed,
        "disconnected": s.disconnected,
        "last_role": s.last_role,
        "last_message": s.last_message,
        "traceparent": s.traceparent,
    }


class ClientGoneError(Exception):
    """The client closed the connection; stop producing."""


def parse_options(model: str, header: str = "") -> tuple[str, dict[str, str]]:
    base, *parts = model.split("+")
    options = dict(p.split("=", 1) for p in parts if "=" in p)
    for item in header.split(";"):
        if "=" in item:
            key, value = item.split("=", 1)
            options[key.strip()] = value.strip()
    return base, options


class Simulator:
    """Plans answers and keeps the record of everything served."""

    def __init__(self) -> None:
        self.served: list[Served] = []
        # Model listings, kept apart so a health probe never shows up as a completion.
        self.listed: list[Served] = []
        self._counter = 0
        # Requests seen per full model string, for fail_first; only strings that carry it are counted.
        self._seen: dict[str, int] = {}

    def reset(self) -> None:
        self.served.clear()
        self.listed.clear()
        self._seen.clear()

    def plan(self, facts: PromptFacts) -> Plan:
        base, options = parse_options(facts.model, facts.options_header)
        fault = self._fault(facts.model, options)
        self._counter += 1
        digest = hashlib.blake2b(f"{base}\x1f{facts.prompt}".encode(), digest_size=8).digest()
        rng = random.Random(int.from_bytes(digest))
        wanted = int(options.get("tokens", "12"))
        limit = facts.max_tokens if facts.max_tokens is not None else wanted
        count = min(wanted, limit)
        finish = "length" if facts.max_tokens is not None and facts.max_tokens <= wanted else "stop"
        pieces = [" " + _WORDS[rng.randrange(len(_WORDS))] for _ in range(count)]
        if pieces:
            pieces[0] = pieces[0].lstrip()
        if facts.json_mode:
            pieces = ['{"answer": "', *(p.strip() + " " for p in pieces), '"}']
            finish = "stop"
        text = "".join(pieces)
        for stop in facts.stop:
            cut = text.find(stop)
            if cut >= 0:
                pieces = _cut(pieces, cut)
                finish = "stop"
                text = "".join(pieces)
        tool_call = None
        if facts.forced_tool or (facts.tools and "tool" in options):
            name = facts.forced_tool or options.get("tool") or facts.tools[0]
            args = json.dumps({"query": " ".join(p.strip() for p in pieces[:3])})
            tool_call = ToolCallPlan(f"call_{rng.getrandbits(64):016x}", name, args)
            finish = "tool_calls"
        retry = options.get("retry_after")
        return Plan(
            model=base,
            pieces=tuple(pieces),
            prompt_tokens=count_tokens(facts.prompt),
            finish=finish,
            tool_call=tool_call,
            ttft=float(options.get("ttft", "0")) / 1000.0,
            itl=float(options.get("itl", "0")) / 1000.0,
            fault=fault,
            retry_after=float(retry) if retry is not None else None,
            after=int(options.get("after", "3")),
            request_id=f"sim-{self._counter:06d}",
            last_role=facts.last_role,
            last_message=facts.last_message,
        )

    def _fault(self, model: str, options: Mapping[str, str]) -> str:
        """The fault this request gets: none once fail_first requests for ``model`` have had it."""
        fault = options.get("fault", "")
        if fault and fault not in FAULTS:
            fault = "400"
        if "fail_first" in options:
            seen = self._seen.get(model, 0) + 1
            self._seen[model] = seen
            if seen > int(options["fail_first"]):
                return ""
        return fault

    def record(self, fmt: str, plan: Plan, stream: bool, traceparent: str = "") -> Served:
        served = Served(
            fmt,
            plan.model,
            stream,
            plan.fault,
            plan.request_id,
            last_role=plan.last_role,
            last_message=plan.last_message,
            traceparent=traceparent,
        )
        self.served.append(served)
        return served

    def listing(self, fmt: str, options_header: str) -> tuple[Plan, Served]:
        """Plan and record one model listing: options come from the header, the record is ``listed``."""
        # The empty model string is the listings' own fail_first count, apart from every completion's.
        plan = self.plan(PromptFacts(model="", prompt="", options_header=options_header))
        if plan.fault in _NOT_FOR_LISTINGS:
            plan = replace(plan, fault="")
        served = Served(fmt, "", False, plan.fault, plan.request_id)
        self.listed.append(served)
        return plan, served

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": len(self.served),
            "completed": sum(1 for s in self.served if s.completed),
            "disconnected": sum(1 for s in self.served if s.disconnected),
            "by_format": _count(s.format for s in self.served),
            "served": [_row(s) for s in self.served],
            "listings": len(self.listed),
            "listings_by_format": _count(s.format for s in self.listed),
            "listed": [_row(s) for s in self.listed],
        }


def _count(items: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        out[item] = out.get(item, 0) + 1
    return out


def _cut(pieces: Sequence[str], at: int) -> list[str]:
    kept: list[str] = []
    used = 0
    for piece in pieces:
        if used + len(piece) > at:
            if at > used:
                kept.append(piece[: at - used])
            break
        kept.append(piece)
        used += len(piece)
    return kept


async def open_stream(
    request: web.Request, served: Served, content_type: str, headers: Mapping[str, str] | None = None
) -> web.StreamResponse:
    response = web.StreamResponse(status=200, headers={"content-type": content_type, **(headers or {})})
    await response.prepare(request)
    return response


async def send(request: web.Request, response: web.StreamResponse, served: Served, data: bytes) -> None:
    """Write one frame; a client that left raises ClientGoneError (and is recorded as having left)."""
    transport = request.transport
    if transport is None or transport.is_closing():
        served.disconnected = True
        raise ClientGoneError
    try:
        await response.write(data)
    except (ConnectionResetError, ConnectionError) as exc:
        served.disconnected = True
        raise ClientGoneError from exc


async def pause(request: web.Request, served: Served, seconds: float) -> None:
    """Sleep, noticing a client that leaves meanwhile."""
    if seconds <= 0:
        return
    end = time.monotonic() + seconds
    while True:
        transport = request.transport
        if transport is None or transport.is_closing():
            served.disconnected = True
            raise ClientGoneError
        left = end - time.monotonic()
        if left <= 0:
            return
        await asyncio.sleep(min(left, 0.02))


async def hang(request: web.Request, served: Served) -> web.StreamResponse:
    """Answer nothing until the client gives up."""
    await pause(request, served, 3600.0)
    raise ClientGoneError


def drop_connection(request: web.Request, served: Served) -> None:
    """Close the socket mid-answer, as a crashed upstream or a cut network would."""
    served.disconnected = False
    if request.transport is not None:
        request.transport.abort()


def error_response(
    status: int, body: Mapping[str, Any], plan: Plan, extra: Mapping[str, str] | None = None
) -> web.Response:
    headers = {"x-request-id": plan.request_id, **(extra or {})}
    if plan.retry_after is not None and status in (429, 503, 529):
        headers["retry-after"] = f"{plan.retry_after:g}"
    return web.json_response(body, status=status, headers=headers)


def last_message(body: Mapping[str, Any]) -> tuple[str, str]:
    """The last message's role and text (its text parts joined), for the record.

    OpenAI's and Anthropic's message lists have the same shape here: role, and content as a
    string or a list of typed parts.
    """
    messages = [m for m in body.get("messages") or () if isinstance(m, dict)]
    if not messages:
        return "", ""
    content = messages[-1].get("content")
    if isinstance(content, list):
        content = "".join(
            str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text"
        )
    return str(messages[-1].get("role", "")), str(content or "")
