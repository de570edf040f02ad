"""The ``omnirelay`` command: serve, config, chat, models, health, cache, usage, pricing.

Exit codes: 0 success, 1 a failed call or check, 2 invalid configuration or usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

from omnirelay import grpc_io
from omnirelay.config import ConfigError, Settings, load_raw, load_settings, masked, secret_values
from omnirelay.config.schema import CAPABILITIES, build_settings
from omnirelay.domain import Deployment

EXIT_FAILED = 1
EXIT_CONFIG = 2


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"config error: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="omnirelay", description="A gRPC-native gateway in front of LLM providers."
    )
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--host", help="address to bind (default: server.host)")
    serve.add_argument("--port", type=int, help="port to bind; 0 picks a free one (default: server.port)")
    serve.add_argument("--profile", help="settings profile (default: $OMNIRELAY_ENV or development)")
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes sharing the port (SO_REUSEPORT), kept by a supervising parent (default: 1)",
    )
    # Internal: set by the --workers parent on each worker it starts (see omnirelay.workers).
    serve.add_argument("--supervised-fd", type=int, help=argparse.SUPPRESS)
    serve.set_defaults(func=_serve)

    config = sub.add_parser("config", help="validate or show the settings")
    config.add_argument("action", choices=("validate", "show"))
    config.add_argument("--profile")
    config.set_defaults(func=_config)

    chat = sub.add_parser("chat", help="send a prompt to a running gateway and print the answer")
    chat.add_argument("prompt")
    chat.add_argument("--model", default="", help="alias, canonical name or provider/model")
    chat.add_argument("--stream", action="store_true", help="print tokens as they arrive")
    chat.add_argument("--system", default="", help="a system prompt")
    chat.add_argument("--max-tokens", type=int)
    chat.add_argument("--temperature", type=float)
    chat.add_argument("--preset", default="")
    chat.add_argument("--target", default="127.0.0.1:50051")
    chat.add_argument("--timeout", type=float, default=60.0, help="deadline in seconds")
    chat.set_defaults(func=_chat)

    models = sub.add_parser(
        "models", help="list models (from the settings, or a running gateway with --target)"
    )
    models.add_argument("--target", help="ask this gateway instead of reading the settings")
    models.add_argument("--profile")
    models.add_argument("--all", action="store_true", help="include registry models no provider serves here")
    models.add_argument("--provider", default="", help="only models this provider serves")
    models.add_argument(
        "--capability",
        action="append",
        default=[],
        choices=CAPABILITIES,
        help="only models with this capability (repeatable)",
    )
    models.set_defaults(func=_models)

    sim = sub.add_parser(
        "sim", help="run the provider simulator (OpenAI, Anthropic, Gemini, Ollama wire formats)"
    )
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8089)
    sim.set_defaults(func=_sim)

    health = sub.add_parser("health", help="check a gateway's gRPC health (exit 0 when SERVING)")
    health.add_argument("--target", default="127.0.0.1:50051")
    health.add_argument("--service", default="", help="service name; empty is the whole server")
    health.add_argument("--timeout", type=float, default=3.0)
    health.set_defaults(func=_health)

    cache = sub.add_parser("cache", help="a running gateway's response cache: stats, or clear it")
    cache.add_argument("action", choices=("stats", "clear"))
    cache.add_argument("--model", default="", help="clear: only this model's answers (name or alias)")
    cache.add_argument("--target", default="127.0.0.1:50051")
    cache.add_argument("--timeout", type=float, default=10.0)
    cache.set_defaults(func=_cache)

    from omnirelay import cli_usage

    cli_usage.add_commands(sub)
    return parser


def _serve(args: argparse.Namespace) -> int:
    settings = load_settings(args.profile)
    if args.port is not None and not 0 <= args.port <= 65535:
        print(f"config error: --port = {args.port}: expected an integer from 0 to 65535", file=sys.stderr)
        return EXIT_CONFIG
    if args.workers < 1:
        print(f"config error: --workers = {args.workers}: expected an integer of at least 1", file=sys.stderr)
        return EXIT_CONFIG
    if not grpc_io.apply(settings.server.grpc_io, os.environ):
        print(
            f"omnirelay: gRPC was loaded before server.grpc_io = {settings.server.grpc_io!r} could apply; "
            "serving with the I/O it loaded with",
            file=sys.stderr,
        )
    if args.workers > 1:
        from omnirelay import workers
        from omnirelay.telemetry import logs

        logs.configure(settings.logging, secret_values(settings))
        host = args.host if args.host is not None else settings.server.host
        port = args.port if args.port is not None else settings.server.port
        return workers.supervise(settings, host, port, args.workers)
    return run_on(settings.server.event_loop, _run_server(settings, args.host, args.port, args.supervised_fd))


def run_on(event_loop: str, main: Coroutine[Any, Any, int]) -> int:
    """Run ``main`` on the configured event loop: uvloop unless settings ask for asyncio's own."""
    if event_loop == "uvloop":
        try:
            import uvloop
        except ImportError:  # no build for this platform: the standard loop serves the same calls
            print("omnirelay: uvloop is not installed; serving on asyncio's event loop", file=sys.stderr)
        else:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                return runner.run(main)
    return asyncio.run(main)


async def _run_server(
    settings: Settings, host: str | None, port: int | None, supervised_fd: int | None
) -> int:
    from omnirelay.app import build_app
    from omnirelay.telemetry import logs

    logs.configure(settings.logging, secret_values(settings))
    try:
        # A supervised worker shares its port with its siblings; anything else must own its port.
        app = build_app(settings, host=host, port=port, reuse_port=supervised_fd is not None)
    except RuntimeError as exc:
        print(f"omnirelay: cannot listen on {host or settings.server.host}:{port}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await app.start()
    # Once listening, when gRPC's and the ledger's threads exist.
    _yield_helpers(settings.server.helper_threads)
    _freeze_startup_heap()
    if supervised_fd is None:
        print(f"omnirelay serving on {app.address} profile={settings.profile}", flush=True)
    else:
        from omnirelay import workers

        # The parent prints the one serving line once every worker is ready.
        workers.report_ready(supervised_fd, loop, stop.set)
    await stop.wait()
    await app.shutdown()
    return 0


def _freeze_startup_heap() -> None:
    """Keep what start-up built (modules, settings, protobuf descriptors, the wired app) out of
    the garbage collector's full passes: it lives as long as the process.

    Each full pass otherwise walks all of it again. Under c=64 unary load a full pass took about
    31 ms, six times in 35 s (timed with ``gc.callbacks``): a stall of every call in flight. The
    garbage start-up left is collected first, so none of it is kept for good.
    """
    import gc
    import logging

    gc.collect()
    gc.freeze()
    logging.getLogger("omnirelay.app").info(
        "start-up heap left out of garbage collection passes: %d objects", gc.get_freeze_count()
    )


def _yield_helpers(choice: str) -> None:
    import logging
    import threading

    from omnirelay import helper_threads

    log = logging.getLogger("omnirelay.app")
    done = helper_threads.apply(choice, threading.get_native_id())
    if done is None:
        if choice == "batch":
            log.info(
                "server.helper_threads = 'batch' needs Linux's SCHED_BATCH; helper threads keep their policy"
            )
        return
    if done.refused:
        log.warning(
            "server.helper_threads = 'batch': %d helper threads could not be set to SCHED_BATCH "
            "(%d were); they may interrupt the event loop",
            done.refused,
            done.batched,
        )
    else:
        log.info("helper threads yield to the event loop: %d under SCHED_BATCH", done.batched)


def _config(args: argparse.Namespace) -> int:
    profile, raw = load_raw(args.profile)
    settings = build_settings(raw, profile)
    if args.action == "validate":
        print(f"settings for profile {settings.profile!r} are valid")
    else:
        shown = {k: v for k, v in masked(raw).items() if k not in ("env", "load_dotenv")}
        print(json.dumps({"profile": profile, **shown}, indent=2, sort_keys=True, default=str))
    return 0


def _chat(args: argparse.Namespace) -> int:
    from omnirelay_client import Client, OmniRelayError, Sampling, system, user

    messages = [*([system(args.system)] if args.system else []), user(args.prompt)]
    sampling = Sampling(max_tokens=args.max_tokens, temperature=args.temperature)
    with Client(args.target, timeout=args.timeout) as client:
        try:
            if args.stream:
                for event in client.stream(messages, model=args.model, sampling=sampling, preset=args.preset):
                    if event.WhichOneof("event") == "text_delta":
                        print(event.text_delta.text, end="", flush=True)
                print()
            else:
                response = client.complete(messages, model=args.model, sampling=sampling, preset=args.preset)
                for choice in response.choices:
                    print("".join(p.text for p in choice.message.content))
        except OmniRelayError as exc:
            print(f"omnirelay: {exc}", file=sys.stderr)
            for violation in exc.field_violations:
                print(f"  {violation.field}: {violation.description}", file=sys.stderr)
            if exc.retry_delay is not None:
                print(f"  retry after {exc.retry_delay:g}s", file=sys.stderr)
            return EXIT_FAILED
    return 0


def _models(args: argparse.Namespace) -> int:
    from omnirelay.services.render import CAPABILITIES

    names = {v: k for k, v in CAPABILITIES.items()}
    wanted = [CAPABILITIES[c] for c in args.capability]
    if args.target:
        from omnirelay_client import Client, OmniRelayError

        try:
            with Client(args.target, timeout=10.0) as client:
                models = client.list_models(
                    provider=args.provider, capabilities=wanted, include_unavailable=args.all
                )
        except OmniRelayError as exc:
            print(f"omnirelay: {exc}", file=sys.stderr)
            return EXIT_FAILED
    else:
        from omnirelay.routing.catalog import bind_providers
        from omnirelay.services.render import model_info

        settings = load_settings(args.profile)
        models = []
        for m in settings.models.values():
            bound = [
                Deployment(f"{p}/{d.provider_model}", p, d.provider_model)
                for d in m.deployments
                for p in bind_providers(d.provider, settings.providers)
            ]
            info = model_info(m, bound or None)
            shown = (info.available or args.all) and set(wanted) <= set(info.capabilities)
            if shown and (not args.provider or args.provider in info.providers):
                models.append(info)
    header = ("MODEL", "PROVIDERS", "ALIASES", "CONTEXT", "USD/M IN/OUT", "CAPABILITIES")
    rows = [
        (
            m.name if m.available else f"{m.name} (unavailable)",
            ",".join(m.providers),
            ",".join(m.aliases),
            str(m.context_window),
            _price(m.pricing),
            ",".join(names[c] for c in m.capabilities),
        )
        for m in models
    ]
    from omnirelay.cli_usage import print_table

    print_table(header, sorted(rows))
    return 0


def _price(p: Any) -> str:
    if not p.known:
        return "-"
    return f"{p.input_per_million_micros / 1e6:g}/{p.output_per_million_micros / 1e6:g}"


def _sim(args: argparse.Namespace) -> int:
    from omnirelay.sim import server

    async def run() -> int:
        running = await server.start(args.host, args.port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        print(f"omnirelay sim serving on {args.host}:{running.port}", flush=True)
        await stop.wait()
        await running.stop()
        return 0

    return asyncio.run(run())


def _health(args: argparse.Namespace) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(args.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout)
        except grpc.RpcError as exc:
            print(f"omnirelay: health check failed: {exc.code().name}", file=sys.stderr)
            return EXIT_FAILED
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(status)
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else EXIT_FAILED


def _cache(args: argparse.Namespace) -> int:
    import grpc

    from omnirelay_client.errors import from_rpc_error
    from omnirelay_client.v1 import cache_pb2, cache_pb2_grpc

    with grpc.insecure_channel(args.target) as channel:
        stub = cache_pb2_grpc.CacheServiceStub(channel)
        try:
            if args.action == "stats":
                stats = stub.GetCacheStats(cache_pb2.GetCacheStatsRequest(), timeout=args.timeout)
                for field, value in (
                    ("backend", stats.backend),
                    ("hits", stats.hits),
                    ("misses", stats.misses),
                    ("coalesced", stats.coalesced),
                    ("bypassed", stats.bypassed),
                    ("stored", stats.stored),
                    ("evictions", stats.evictions),
                    ("backend_errors", stats.backend_errors),
                    ("entries", stats.entries),
                    ("bytes", stats.bytes),
                ):
                    print(f"{field:15s} {value}")
            else:
                cleared = stub.ClearCache(cache_pb2.ClearCacheRequest(model=args.model), timeout=args.timeout)
                print(f"removed {cleared.removed} cached answers")
        except grpc.RpcError as exc:
            print(f"omnirelay: {from_rpc_error(exc)}", file=sys.stderr)
            return EXIT_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
