"""The record of a call's attempts, and the errors built from it when the route runs out.

When every attempt failed the caller gets the most specific status the attempts
allow: the shared error when they all failed the same way (all rate limited →
RESOURCE_EXHAUSTED with the shortest retry delay), UNAVAILABLE otherwise, and
always every attempt's model, deployment, outcome and upstream request id.
"""

from __future__ import annotations

import time

from omnirelay.domain import AttemptOutcome, AttemptRecord, RouteInfo
from omnirelay.errors import DeadlineExceededError, OmniRelayError, UnavailableError, UpstreamError
from omnirelay.resilience.failures import outcome
from omnirelay.routing.planner import Candidate, Plan


class Trail:
    """Attempts so far. Empty (and allocation-free) on the common first-try success."""

    __slots__ = ("_pending", "_pending_started", "errors", "records")

    def __init__(self) -> None:
        self.records: list[AttemptRecord] = []
        self.errors: list[UpstreamError] = []
        self._pending: Candidate | None = None
        self._pending_started = 0.0

    def pending(self, cand: Candidate, started: float) -> None:
        """An attempt in flight: recorded as timed out if the call's deadline ends it."""
        self._pending = cand
        self._pending_started = started

    def failed(self, cand: Candidate, exc: UpstreamError, started: float) -> None:
        self._pending = None
        self.errors.append(exc)
        self.records.append(
            AttemptRecord(
                model=cand.entry.name,
                deployment=cand.target.deployment,
                outcome=outcome(exc),
                detail=exc.message,
                latency_seconds=time.perf_counter() - started,
                upstream_request_id=exc.upstream_request_id,
                reason=exc.reason,
            )
        )

    def circuit_open(self, cand: Candidate) -> None:
        self.records.append(
            AttemptRecord(
                model=cand.entry.name,
                deployment=cand.target.deployment,
                outcome=AttemptOutcome.CIRCUIT_OPEN,
                detail="circuit breaker open; not called",
                reason="CIRCUIT_OPEN",
            )
        )

    def route(
        self,
        plan: Plan,
        cand: Candidate,
        started: float,
        attempt_started: float,
        ttft: float | None,
        upstream_request_id: str = "",
    ) -> RouteInfo:
        """The serving route; the attempt list is left empty for a first-try success."""
        now = time.perf_counter()
        attempts: tuple[AttemptRecord, ...] = ()
        if self.records:
            success = AttemptRecord(
                model=cand.entry.name,
                deployment=cand.target.deployment,
                outcome=AttemptOutcome.SUCCESS,
                latency_seconds=now - attempt_started,
                upstream_request_id=upstream_request_id,
            )
            attempts = (*self.records, success)
        return RouteInfo(
            requested_model=plan.request.model,
            resolved_model=cand.entry.name,
            deployment=cand.target.deployment,
            request_id=plan.request.request_id,
            latency_seconds=now - started,
            ttft_seconds=ttft,
            dropped_parameters=cand.dropped,
            attempts=attempts,
            # Checked only after failed attempts: a first-try success builds no generator.
            fallback_used=cand.entry is not plan.primary
            or (bool(self.records) and any(r.deployment != cand.target.deployment for r in self.records)),
        )

    def final(self, exc: OmniRelayError) -> OmniRelayError:
        """``exc`` carrying the attempts, for an error that ends the call."""
        exc.attempts = tuple(self.records)
        return exc

    def exhausted(self, plan: Plan) -> OmniRelayError:
        """The error when no candidate is left."""
        records = tuple(self.records)
        name = plan.primary.name
        if not self.errors:
            error: OmniRelayError = UnavailableError(
                f"no deployment of {name!r} is available: every circuit breaker on the route is open; "
                "retry shortly",
                attempts=records,
            )
            return error
        last = self.errors[-1]
        if len({type(e) for e in self.errors}) == 1 and len(self.errors) > 1:
            delays = [e.retry_after_seconds for e in self.errors if e.retry_after_seconds is not None]
            last.retry_after_seconds = min(delays) if delays else None
            last.message = (
                f"all {len(records)} attempts for {name!r} failed the same way; the last: {last.message}"
            )
            return self.final(last)
        if len(self.errors) == 1 and len(records) == 1:
            return self.final(last)
        summary = ", ".join(f"{r.deployment.name}: {r.outcome.value}" for r in records)
        delays = [e.retry_after_seconds for e in self.errors if e.retry_after_seconds is not None]
        return UnavailableError(
            f"no deployment could serve {name!r} ({summary}); the last error: {last.message}",
            attempts=records,
            retry_after_seconds=min(delays) if delays else None,
        )

    def deadline(self, plan: Plan) -> DeadlineExceededError:
        tried = f" after {len(self.records)} failed attempts" if self.records else ""
        cand = self._pending
        if cand is not None:
            self.records.append(
                AttemptRecord(
                    model=cand.entry.name,
                    deployment=cand.target.deployment,
                    outcome=AttemptOutcome.TIMEOUT,
                    detail="still waiting for the upstream when the call's deadline passed",
                    latency_seconds=time.perf_counter() - self._pending_started,
                    reason="DEADLINE_EXCEEDED",
                )
            )
        error = DeadlineExceededError(
            f"the deadline passed before {plan.primary.name!r} finished answering{tried}; "
            "raise the call's deadline or lower max_tokens"
        )
        error.attempts = tuple(self.records)
        return error
