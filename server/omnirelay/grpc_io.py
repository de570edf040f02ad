"""Which threads do gRPC's socket work on the server: chosen by ``server.grpc_io`` before gRPC loads.

grpcio's default, the EventEngine listener, reads and writes the server's sockets on
EventEngine worker threads and hands each call to the thread that polls grpc.aio's
completion queue: one more thread hop per call than gRPC's older iomgr TCP server,
which does that socket work on the polling thread itself. On one core the hop is
dear (a context switch and cold caches for every call): in ABBA A/B runs of the
bench's servers pinned to one core, the iomgr server answered about 1-11% more small
unary calls per second through omnirelay (four runs; bench/README.md has each) and
10-16% more on the bare echo server, and streamed as many messages (within noise).
It was never slower, so omnirelay serves with it by default (``poller``);
``event_engine`` keeps grpcio's own default.

gRPC reads its experiments (``GRPC_EXPERIMENTS``) once, when its core first loads,
so ``serve`` applies the choice before anything imports grpc; other experiments a
deployment sets in ``GRPC_EXPERIMENTS`` are kept.
"""

from __future__ import annotations

import sys
from collections.abc import MutableMapping
from typing import Final

CHOICES: Final = ("poller", "event_engine")
ENV: Final = "GRPC_EXPERIMENTS"
EXPERIMENT: Final = "event_engine_listener"
_CORE_MODULE: Final = "grpc._cython.cygrpc"


def experiments(choice: str, current: str) -> str:
    """``current`` (a GRPC_EXPERIMENTS value) with the listener experiment set for ``choice``."""
    if choice not in CHOICES:
        raise ValueError(f"grpc_io {choice!r}: expected one of {', '.join(CHOICES)}")
    kept = [
        token
        for token in (t.strip() for t in current.split(","))
        if token and token.lstrip("-") != EXPERIMENT
    ]
    kept.append(f"-{EXPERIMENT}" if choice == "poller" else EXPERIMENT)
    return ",".join(kept)


def apply(choice: str, environ: MutableMapping[str, str]) -> bool:
    """Set ``environ``'s GRPC_EXPERIMENTS for ``choice``; False when gRPC's core is already loaded
    in this process, so the choice cannot take effect here (it still reaches child processes)."""
    environ[ENV] = experiments(choice, environ.get(ENV, ""))
    return _CORE_MODULE not in sys.modules
