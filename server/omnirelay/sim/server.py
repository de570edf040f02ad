"""The provider simulator as one HTTP server: every wire format, plus its own record.

Routes (each format module adds its own):
    OpenAI     POST /v1/chat/completions, /v1/embeddings          GET /v1/models
    Azure      POST /openai/deployments/{deployment}/chat/completions?api-version=…
                                                                  GET /openai/models?api-version=…
    Anthropic  POST /v1/messages                                  GET /v1/models (anthropic-version header)
    Gemini     POST /v1beta/models/{model}:generateContent, :streamGenerateContent?alt=sse, :embedContent
                                                                  GET /v1beta/models
    Ollama     POST /api/chat, /api/embed (and the OpenAI shape under /v1 via the OpenAI routes)
                                                                  GET /api/tags
    GET  /_sim/stats   what was served (JSON)      POST /_sim/reset   forget it

The GETs are the free model listings health probes use; the stats count them as
``listings``, never as requests served.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from omnirelay.sim.core import Simulator

SIM_KEY = web.AppKey("simulator", Simulator)


def build(sim: Simulator | None = None) -> web.Application:
    from omnirelay.sim import anthropic, gemini, ollama, openai

    simulator = sim or Simulator()
    app = web.Application()
    app[SIM_KEY] = simulator
    for module in (openai, anthropic, gemini, ollama):
        app.add_routes(module.routes(simulator))

    async def models(request: web.Request) -> web.StreamResponse:
        # OpenAI and Anthropic both list at /v1/models; Anthropic's clients always send this header.
        if "anthropic-version" in request.headers:
            return await anthropic.list_models(simulator, request)
        return await openai.list_models(simulator, request)

    app.add_routes(
        [web.get("/v1/models", models), web.get("/_sim/stats", _stats), web.post("/_sim/reset", _reset)]
    )
    return app


async def _stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[SIM_KEY].snapshot())


async def _reset(request: web.Request) -> web.Response:
    request.app[SIM_KEY].reset()
    return web.json_response({"ok": True})


@dataclass
class RunningSim:
    """A simulator listening on 127.0.0.1 (tests and benchmarks start one per session)."""

    simulator: Simulator
    runner: web.AppRunner
    port: int

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        await self.runner.cleanup()


async def start(host: str = "127.0.0.1", port: int = 0) -> RunningSim:
    simulator = Simulator()
    runner = web.AppRunner(build(simulator), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    # Port 0 asks the OS for a free port; the runner's addresses say which one it gave.
    bound = int(runner.addresses[0][1])
    return RunningSim(simulator, runner, bound)
