"""The admin HTTP listener: ``GET /metrics`` in the Prometheus text format, apart from the gRPC port.

It runs on the server's own event loop (aiohttp, already the simulator's
server), so a scrape reads the counters without locks or threads; rendering
happens only when Prometheus asks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger("omnirelay.admin")


class AdminServer:
    def __init__(
        self,
        registry: CollectorRegistry,
        host: str,
        port: int,
        before_scrape: Callable[[], None] | None = None,
    ) -> None:
        self._registry = registry
        # Reports what is held back for a batch (ended calls), so a scrape sees every ended call.
        self._before_scrape = before_scrape
        self.host = host
        self.port = port
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)

    async def start(self) -> None:
        """Listen; raises OSError (with the address) when the port is taken."""
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise OSError(
                exc.errno, f"metrics listener cannot bind {self.host}:{self.port}: {exc.strerror}"
            ) from None
        server = site._server
        sockets = getattr(server, "sockets", None) or ()
        if sockets:
            self.port = sockets[0].getsockname()[1]
        log.info("metrics on http://%s:%d/metrics", self.host, self.port)

    async def stop(self) -> None:
        await self._runner.cleanup()

    async def _metrics(self, request: web.Request) -> web.Response:
        if self._before_scrape is not None:
            self._before_scrape()
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
