"""omnirelay serving Complete with part of its path cut away, for `bench.stages`.

`bench.stages` times a unary call through a server that does a little more at each stage, and the
difference between two stages is what the part added costs in a real server. This starts omnirelay
exactly as `serve` does, except that Complete is answered from a point further in:

- ``edge``: the response the echo server sends (and omnirelay's three route trailers), returned as
  soon as the call reaches the service; what is left is the process, the edge and whatever layers
  the settings switch on.
- ``service``: the request converted and the response rendered as `serve` does, from the completion
  the gateway made on the first call (its route included); everything but routing and the provider.

Run: python -m bench.stage_server --stage edge -- --host 127.0.0.1 --port 0 --profile development
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

from bench.echo_server import REQUEST_ID, build_unary_response
from omnirelay import cli
from omnirelay.domain import Completion
from omnirelay.interceptors.edge import current_request_id
from omnirelay.services import completion, convert, render
from omnirelay.services.context import deadline, route_metadata
from omnirelay_client.v1 import completion_pb2

STAGES: Final = ("edge", "service")
Complete = Callable[
    [completion.CompletionService, completion_pb2.CompleteRequest, Any],
    Awaitable[completion_pb2.CompleteResponse],
]
# What `route_metadata` sends for the bench's model, with an id of a generated id's size.
ROUTE_TRAILERS: Final = (
    ("x-request-id", REQUEST_ID),
    ("x-omnirelay-model", "local-small"),
    ("x-omnirelay-provider", "local"),
)


def _edge_only() -> Complete:
    response = build_unary_response()

    async def complete(
        self: completion.CompletionService, request: completion_pb2.CompleteRequest, context: Any
    ) -> completion_pb2.CompleteResponse:
        context.set_trailing_metadata(ROUTE_TRAILERS)
        return response

    return complete


def _without_gateway() -> Complete:
    made: list[Completion] = []

    async def complete(
        self: completion.CompletionService, request: completion_pb2.CompleteRequest, context: Any
    ) -> completion_pb2.CompleteResponse:
        domain_request = convert.completion_request(request, current_request_id())
        if not made:
            # The gateway answers once, so that what is rendered is a real completion.
            made.append(await self._gateway.complete(domain_request, deadline(context)))
        context.set_trailing_metadata(route_metadata(made[0].route))
        return render.complete_response(made[0])

    return complete


def install(stage: str) -> None:
    """Replace ``CompletionService.Complete`` (before the server is built, which wraps it)."""
    if stage not in STAGES:
        raise ValueError(f"stage {stage!r}: expected one of {', '.join(STAGES)}")
    replacement = _edge_only() if stage == "edge" else _without_gateway()
    setattr(completion.CompletionService, "Complete", replacement)  # noqa: B010 (a method, on purpose)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stage_server", description=__doc__.split("\n")[0])
    parser.add_argument("--stage", choices=STAGES, required=True)
    parser.add_argument("serve_args", nargs="*", help="after --: what `omnirelay serve` takes")
    args = parser.parse_args(argv)
    install(args.stage)
    return cli.main(["serve", *args.serve_args])


if __name__ == "__main__":
    sys.exit(main())
