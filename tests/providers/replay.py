"""A tiny HTTP server on 127.0.0.1 that answers every request with one recorded provider response.

The test says which fixture (or constructed body) the next calls get; every request, whatever
its method and path, is answered with it and remembered (method, path, query, headers, body), so
a test can also check what the gateway asked for. Bodies are sent by their kind:

    .json     200, application/json, one write
    .sse      200, text/event-stream, one write per event (LF or CRLF blank-line boundaries)
    .ndjson   200, application/x-ndjson, one write per line
    .http     the recorded status and headers; a text/event-stream body streams like .sse

Streamed bodies go out in separate writes with a short pause between them, so the gateway's
decoders really see a stream arriving in pieces, not one buffer.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.providers.conftest import fixture_bytes, fixture_http

CONTENT_TYPES = {
    ".json": "application/json",
    ".sse": "text/event-stream",
    ".ndjson": "application/x-ndjson",
}
# Recorded headers that described the recorded transfer, not this one.
_HOP_BY_HOP = frozenset(
    {"connection", "content-length", "transfer-encoding", "content-encoding", "keep-alive"}
)
# An SSE event ends at a blank line: LF LF (OpenAI, Anthropic) or CRLF CRLF (Gemini).
_SSE_EVENT = re.compile(rb".*?(?:\r\n\r\n|\n\n|\r\r)|.+", re.DOTALL)


@dataclass(frozen=True, slots=True)
class Answer:
    """One prepared response: status, headers, body, and the pieces it is written in."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    streamed: bool


@dataclass(frozen=True, slots=True)
class Seen:
    """One request the server answered."""

    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def kind_of(relative: str) -> str:
    """A fixture's kind by its name: ``.json``, ``.sse``, ``.ndjson`` or ``.http``."""
    for kind in (".json", ".sse", ".ndjson", ".http"):
        if relative.endswith(kind):
            return kind
    raise ValueError(f"{relative}: not a replayable fixture kind")


def answer_for(body: bytes, kind: str) -> Answer:
    """A body of the given kind (``.json``, ``.sse`` or ``.ndjson``) as a 200 answer."""
    return Answer(200, {"Content-Type": CONTENT_TYPES[kind]}, body, kind != ".json")


def fixture_answer(relative: str) -> Answer:
    """A shared fixture as the answer it was recorded as."""
    kind = kind_of(relative)
    if kind != ".http":
        return answer_for(fixture_bytes(relative), kind)
    status, headers, body = fixture_http(relative)
    kept = {name: value for name, value in headers.items() if name not in _HOP_BY_HOP}
    streamed = headers.get("content-type", "").startswith(("text/event-stream", "application/x-ndjson"))
    return Answer(status, kept, body, streamed)


def pieces(body: bytes, content_type: str) -> list[bytes]:
    """The writes a streamed body goes out in: SSE events, or NDJSON lines."""
    if content_type.startswith("application/x-ndjson"):
        return body.splitlines(keepends=True)
    return [m.group(0) for m in _SSE_EVENT.finditer(body) if m.group(0)]


@dataclass
class ReplayServer:
    """Answers every request with the current answer; ``serve``/``serve_body`` choose it."""

    pause_seconds: float = 0.002
    requests: list[Seen] = field(default_factory=list)
    _answer: Answer | None = None
    _runner: web.AppRunner | None = None
    _port: int = 0

    @property
    def base_url(self) -> str:
        assert self._runner is not None, "the replay server is not started"
        return f"http://127.0.0.1:{self._port}"

    def serve(self, relative: str) -> None:
        """Answer the next calls with the shared fixture ``relative`` (``openai/chat_completion.json``)."""
        self._answer = fixture_answer(relative)

    def serve_body(self, body: bytes, kind: str) -> None:
        """Answer the next calls with a constructed body of ``kind`` (``.json``, ``.sse``, ``.ndjson``)."""
        self._answer = answer_for(body, kind)

    async def start(self) -> ReplayServer:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._runner = runner
        self._port = int(runner.addresses[0][1])
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(
            Seen(
                request.method,
                request.path,
                dict(request.query),
                {k.lower(): v for k, v in request.headers.items()},
                await request.read(),
            )
        )
        answer = self._answer
        if answer is None:
            return web.Response(status=500, text="replay server: no answer chosen")
        if not answer.streamed:
            return web.Response(status=answer.status, headers=dict(answer.headers), body=answer.body)
        response = web.StreamResponse(status=answer.status, headers=dict(answer.headers))
        await response.prepare(request)
        content_type = next((v for k, v in answer.headers.items() if k.lower() == "content-type"), "")
        for number, piece in enumerate(pieces(answer.body, content_type)):
            if number:
                await asyncio.sleep(self.pause_seconds)
            await response.write(piece)
        await response.write_eof()
        return response
