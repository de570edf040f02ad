"""Optional active health probes: each provider's free model listing, never a completion.

Off by default (``resilience.probes.enabled``). A failed probe counts against
the breakers of that provider's deployments like a failed call would, so an
outage is noticed before a caller's request pays for it; a successful probe
moves an open breaker to half-open, so the next real call is its trial instead
of waiting out the whole reset timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from omnirelay.config.routing import ProbeSettings
from omnirelay.errors import UpstreamError, UpstreamTimeoutError
from omnirelay.providers.base import ModelLister
from omnirelay.providers.registry import ProviderRegistry
from omnirelay.resilience.failures import counts_against_breaker
from omnirelay.routing.targets import TargetPool

log = logging.getLogger("omnirelay.probes")


class Prober:
    def __init__(self, providers: ProviderRegistry, pool: TargetPool, settings: ProbeSettings) -> None:
        self._providers = providers
        self._pool = pool
        self._settings = settings
        self._task: asyncio.Task[None] | None = None

    async def probe_once(self) -> dict[str, str]:
        """Probe every provider that has a listing endpoint: provider -> "ok" or the error reason."""
        results: dict[str, str] = {}
        for name in self._providers.names():
            provider = self._providers.get(name)
            if not isinstance(provider, ModelLister):
                continue
            try:
                async with asyncio.timeout(self._settings.timeout_seconds):
                    await provider.list_models()
            except TimeoutError:
                self._failed(name, UpstreamTimeoutError("model listing timed out", provider=name))
                results[name] = "UPSTREAM_TIMEOUT"
            except UpstreamError as exc:
                self._failed(name, exc)
                results[name] = exc.reason
            else:
                for breaker in self._pool.breakers_of(name):
                    breaker.probe_succeeded()
                results[name] = "ok"
        return results

    def _failed(self, provider: str, exc: UpstreamError) -> None:
        log.warning("health probe of provider %s failed: %s", provider, exc.reason)
        if counts_against_breaker(exc):
            for breaker in self._pool.breakers_of(provider):
                breaker.failed(exc)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._settings.interval_seconds)
            await self.probe_once()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
