"""No configured secret leaves the gateway in anything it prints: grep all output of a real run.

The real ``omnirelay serve`` runs in a child process, configured only through environment
variables with fake keys that look real: an OpenAI and an Anthropic provider pointing at the
provider simulator (in this process, so the test sees every request and its headers), a
provider header token, OTLP exporter headers, a budget webhook secret, and passwords in the
Redis and PostgreSQL URLs. Logging is as loud as it goes: DEBUG, JSON, content logging on,
HTTP client libraries at DEBUG. Calls succeed, fail upstream (401, 429, 500, a broken stream,
a budget refusal), stream, are cancelled, time out, and all carry the caller's own
``authorization: Bearer`` token.

Then none of the secrets (nor a 12-character piece of one) may appear in the server's whole
stderr and stdout, the CLI's outputs (``config show``/``validate``, ``models``, ``usage
summary``/``export``), the usage ledger's files, or the spans exported over OTLP.

The test can fail: it first proves the secrets were in use (the simulator received the keys and
the header token, the collector the exporter headers, the webhook receiver a delivery signed
with the secret), that the calls went through those providers, that the outputs hold what
they should (the calls' request lines, their prompts, the ledger's records), and that the
search finds a secret planted in a copy of the output.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from aiohttp import web
from aiohttp.typedefs import Handler
from grpc import aio

from omnirelay.sim.core import Simulator
from omnirelay.sim.server import build
from omnirelay.usage.alerts import verify_signature
from omnirelay_client.v1 import completion_pb2, completion_pb2_grpc, stream_pb2_grpc
from tests.helpers import request, stream_request
from tests.integration.serve import Served, run_cli, start

pytestmark = pytest.mark.subprocess

# Fake, but shaped like the real thing (the first two also match the log mask's credential shapes;
# the rest can only be masked by value, so they test that every configured place is known).
OPENAI_KEY = "sk-proj-N4bQ7xT2vLm9KcR3wZp8YhD5fJs1GqUe"
ANTHROPIC_KEY = "sk-ant-api03-Xw7Rk2PqL9mTz4VbN8cJh3Fd6Gs1YaEu"
RELAY_TOKEN = "rly_tok_5Hq9Zw2Lx7Pc4Vn8Kd3Mb6"
OTLP_TOKEN = "otlp_ing_8Fh2Kq7Wz3Xc9Lp4Tn6Vb1"
HONEYCOMB_KEY = "hcaik_7Jd4Qw9Zr2Lx6Pm3Kv8Tn5Bc"
WEBHOOK_SECRET = "whsec_3Nf8Qz2Lw7Kx4Pc9Vm6Hd1Tj"
REDIS_PASSWORD = "rds_pw_6Tq1Zx8Lk3Wv5Pn9Hc2Md"
POSTGRES_PASSWORD = "pg_pw_4Kz9Qx2Lm7Wt3Vp8Hn6Cd"
CALLER_TOKEN = "cllr_2Wq8Zk5Lx9Tp3Vn7Hm4Rd6Jc"
SECRETS = {
    "openai api key": OPENAI_KEY,
    "anthropic api key": ANTHROPIC_KEY,
    "provider header token": RELAY_TOKEN,
    "otlp authorization header": OTLP_TOKEN,
    "otlp honeycomb header": HONEYCOMB_KEY,
    "budget webhook secret": WEBHOOK_SECRET,
    "redis password": REDIS_PASSWORD,
    "postgres password": POSTGRES_PASSWORD,
    "caller bearer token": CALLER_TOKEN,
}
# A run of this many characters of a secret is a leak too (a key echoed "partly masked").
FRAGMENT = 12

CANARY = "canary-harbor-lantern-6731"
CALLER = (("authorization", f"Bearer {CALLER_TOKEN}"),)
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def leaks(text: str, secrets: Mapping[str, str] = SECRETS) -> dict[str, str]:
    """The secrets (by name) of which ``text`` holds the whole value or a FRAGMENT-long piece,
    each with the text around its first piece found."""
    found = {}
    for name, value in secrets.items():
        for i in range(len(value) - FRAGMENT + 1):
            at = text.find(value[i : i + FRAGMENT])
            if at >= 0:
                found[name] = text[max(0, at - 80) : at + 80]
                break
    return found


# --- the world around the gateway: simulator, OTLP collector, webhook receiver ---------------------


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: bytes = b""


@dataclass
class Upstreams:
    """The simulator plus an OTLP/HTTP collector and a webhook receiver, on one port."""

    simulator: Simulator
    runner: web.AppRunner
    port: int = 0
    requests: list[Seen] = field(default_factory=list)
    spans: list[Seen] = field(default_factory=list)
    hooks: list[Seen] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def headers_at(self, path_prefix: str) -> list[dict[str, str]]:
        return [s.headers for s in self.requests if s.path.startswith(path_prefix)]


@pytest.fixture
async def upstreams() -> AsyncIterator[Upstreams]:
    simulator = Simulator()
    app = build(simulator)
    up = Upstreams(simulator, web.AppRunner(app, access_log=None))

    @web.middleware
    async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
        up.requests.append(Seen(request.path, {k.lower(): v for k, v in request.headers.items()}))
        return await handler(request)

    async def collect_spans(req: web.Request) -> web.Response:
        up.spans.append(Seen(req.path, {k.lower(): v for k, v in req.headers.items()}, await req.read()))
        return web.Response(status=200, body=b"", content_type="application/x-protobuf")

    async def receive_hook(req: web.Request) -> web.Response:
        up.hooks.append(Seen(req.path, {k.lower(): v for k, v in req.headers.items()}, await req.read()))
        return web.Response(status=200, text="ok")

    app.middlewares.append(record)
    app.router.add_post("/otlp/v1/traces", collect_spans)
    app.router.add_post("/hooks/{path:.*}", receive_hook)
    await up.runner.setup()
    await web.TCPSite(up.runner, "127.0.0.1", 0).start()
    up.port = int(up.runner.addresses[0][1])
    yield up
    await up.runner.cleanup()


def gateway_env(up: Upstreams, tmp_path: Path, hook_token: str = "") -> dict[str, str]:
    """Everything through OMNIRELAY_* variables, as an operator would deploy it."""
    return {
        # Providers at the simulator, with their keys and an extra secret header.
        "OMNIRELAY_PROVIDERS__OPENAI__KIND": "openai",
        "OMNIRELAY_PROVIDERS__OPENAI__BASE_URL": f"{up.base_url}/v1",
        "OMNIRELAY_PROVIDERS__OPENAI__API_KEY": OPENAI_KEY,
        "OMNIRELAY_PROVIDERS__OPENAI__HEADERS": f'{{x-relay-token = "{RELAY_TOKEN}"}}',
        "OMNIRELAY_PROVIDERS__ANTHROPIC__KIND": "anthropic",
        "OMNIRELAY_PROVIDERS__ANTHROPIC__BASE_URL": up.base_url,
        "OMNIRELAY_PROVIDERS__ANTHROPIC__API_KEY": ANTHROPIC_KEY,
        # Quick retries, and health probes that list models (with the keys) every 0.2 s.
        "OMNIRELAY_RESILIENCE__RETRY__BASE_DELAY_SECONDS": "0.01",
        "OMNIRELAY_RESILIENCE__RETRY__MAX_DELAY_SECONDS": "0.02",
        # The simulated 429 says "try again in 26.604s": give up on it rather than wait.
        "OMNIRELAY_RESILIENCE__RETRY__MAX_RETRY_AFTER_SECONDS": "0.1",
        "OMNIRELAY_RESILIENCE__PROBES__ENABLED": "true",
        "OMNIRELAY_RESILIENCE__PROBES__INTERVAL_SECONDS": "0.2",
        # Logs as loud as they go.
        "OMNIRELAY_LOGGING__LEVEL": "DEBUG",
        "OMNIRELAY_LOGGING__FORMAT": "json",
        "OMNIRELAY_LOGGING__CONTENT": "true",
        "OMNIRELAY_LOGGING__LEVELS": (
            '{httpx = "DEBUG", httpcore = "DEBUG", urllib3 = "DEBUG", opentelemetry = "DEBUG", '
            'aiosqlite = "DEBUG", asyncio = "DEBUG"}'
        ),
        # Traces exported over OTLP/HTTP with secret headers, soon after each call.
        "OMNIRELAY_TRACING__ENABLED": "true",
        "OMNIRELAY_TRACING__EXPORTER": "otlp_http",
        "OMNIRELAY_TRACING__ENDPOINT": f"{up.base_url}/otlp",
        "OMNIRELAY_TRACING__HEADERS": (
            f'{{authorization = "Bearer {OTLP_TOKEN}", x-honeycomb-team = "{HONEYCOMB_KEY}"}}'
        ),
        "OMNIRELAY_TRACING__SCHEDULE_DELAY_SECONDS": "0.1",
        "OMNIRELAY_TRACING__EXPORT_TIMEOUT_SECONDS": "3",
        # A budget for one project, alerting a signed webhook at once.
        "OMNIRELAY_BUDGETS__LIMITS": (
            '[{id = "tiny", project = "capped", limit_usd = 0.00001, period = "day", thresholds = [1.0]}]'
        ),
        "OMNIRELAY_BUDGETS__WEBHOOK_URL": f"{up.base_url}/hooks/budget/{hook_token}".rstrip("/"),
        "OMNIRELAY_BUDGETS__WEBHOOK_SECRET": WEBHOOK_SECRET,
        # Passwords in URLs the run does not connect to (memory cache and counters, SQLite ledger).
        "OMNIRELAY_CACHE__REDIS_URL": f"redis://:{REDIS_PASSWORD}@127.0.0.1:6379/0",
        "OMNIRELAY_BUDGETS__REDIS_URL": f"redis://default:{REDIS_PASSWORD}@127.0.0.1:6379/1",
        "OMNIRELAY_USAGE__POSTGRES_DSN": f"postgresql://omnirelay:{POSTGRES_PASSWORD}@127.0.0.1:5432/omnirelay",
        "OMNIRELAY_USAGE__SQLITE_PATH": str(tmp_path / "usage.db"),
        "OMNIRELAY_USAGE__SPILL_PATH": str(tmp_path / "usage-spill.jsonl"),
        "OMNIRELAY_USAGE__FLUSH_INTERVAL_SECONDS": "0.05",
    }


# --- the calls -------------------------------------------------------------------------------------


@dataclass
class Outcome:
    request_id: str
    code: grpc.StatusCode
    provider: str = ""


async def unary(channel: aio.Channel, rid: str, req: completion_pb2.CompleteRequest, **kw: Any) -> Outcome:
    stub = completion_pb2_grpc.CompletionServiceStub(channel)
    metadata = (*CALLER, ("x-request-id", rid), ("traceparent", TRACEPARENT))
    try:
        response = await stub.Complete(req, metadata=metadata, **kw)
    except aio.AioRpcError as exc:
        return Outcome(rid, exc.code())
    return Outcome(rid, grpc.StatusCode.OK, response.route.provider)


async def stream(channel: aio.Channel, rid: str, model: str, *, cancel_after: int = 0) -> Outcome:
    stub = stream_pb2_grpc.StreamCompletionServiceStub(channel)
    call = stub.StreamComplete(
        stream_request(f"stream for {CANARY}", model=model), metadata=(*CALLER, ("x-request-id", rid))
    )
    provider = ""
    deltas = 0
    try:
        async for event in call:
            if event.HasField("route_started"):
                provider = event.route_started.provider
            if event.HasField("text_delta"):
                deltas += 1
                if deltas == cancel_after:
                    call.cancel()
                    return Outcome(rid, grpc.StatusCode.CANCELLED, provider)
    except aio.AioRpcError as exc:
        return Outcome(rid, exc.code(), provider)
    return Outcome(rid, grpc.StatusCode.OK, provider)


async def wait_for(condition: Any, seconds: float = 5.0) -> None:
    for _ in range(int(seconds / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)


async def drive(address: str, up: Upstreams) -> dict[str, Outcome]:
    """Every kind of call; returns each call's outcome by request id."""
    out: dict[str, Outcome] = {}
    # The content log line of this prompt must show the pasted key masked (a self-check below).
    pasted = f"say hello; {CANARY}; my key is {OPENAI_KEY}"
    async with aio.insecure_channel(address) as channel:
        calls = [
            unary(channel, "ok-openai", request(pasted, model="openai/gpt-4o-mini")),
            unary(channel, "ok-anthropic", request(CANARY, model="anthropic/claude-sonnet-4-20250514")),
            unary(channel, "fail-openai-401", request(CANARY, model="openai/gpt-4o+fault=401")),
            unary(channel, "fail-anthropic-401", request(CANARY, model="anthropic/claude+fault=401")),
            unary(channel, "fail-openai-429", request(CANARY, model="openai/gpt-4o+fault=429")),
            unary(channel, "fail-anthropic-500", request(CANARY, model="anthropic/claude+fault=500")),
            unary(channel, "fail-openai-500", request(CANARY, model="openai/gpt-4o+fault=500")),
            unary(channel, "timeout", request(CANARY, model="openai/gpt-4o+fault=hang"), timeout=0.5),
            stream(channel, "stream-openai", "openai/gpt-4o-mini+itl=1"),
            stream(channel, "stream-anthropic", "anthropic/claude-sonnet-4-20250514+itl=1"),
            stream(channel, "stream-broken", "openai/gpt-4o+fault=stream_error+after=3"),
            stream(channel, "cancelled", "openai/gpt-4o+itl=20+tokens=500", cancel_after=2),
        ]
        for outcome in await asyncio.gather(*calls):
            out[outcome.request_id] = outcome
        # A priced model (gpt-4o, served by the provider named openai) for the capped project: the
        # first call spends past the budget and fires the webhook, the next one is refused.
        capped = request(CANARY, model="gpt-4o")
        capped.attribution.project = "capped"
        out["budget-spent"] = await unary(channel, "budget-spent", capped)
        await wait_for(lambda: bool(up.hooks))
        out["budget-refused"] = await unary(channel, "budget-refused", capped)
    return out


# --- the test ----------------------------------------------------------------------------------------


@dataclass
class Run:
    server_stdout: str
    server_stderr: str
    cli: dict[str, str]
    ledger: dict[str, str]


async def _cli(name: str, *args: str, env: Mapping[str, str]) -> tuple[str, str]:
    done = await asyncio.to_thread(run_cli, *args, extra_env=env)
    assert done.returncode == 0, f"{name}: exit {done.returncode}\n{done.stderr}"
    return name, f"{done.stdout}\n{done.stderr}"


async def _stop(served: Served) -> str:
    """SIGTERM, and the rest of the server's stdout (Served.stop would not return it).

    Off this loop: the shutdown exports the last spans to the collector served by it.
    """
    served.process.send_signal(signal.SIGTERM)
    try:
        rest, _ = await asyncio.to_thread(served.process.communicate, None, 20)
    finally:
        # Collects the whole stderr and closes its file (and kills a server that would not stop).
        code = await asyncio.to_thread(served.stop, 20, None)
    assert code == 0, served.stderr
    return str(rest)


def _ledger(tmp_path: Path) -> dict[str, str]:
    files = sorted(tmp_path.glob("usage*"))
    assert any(f.name == "usage.db" for f in files), files
    # The database, its WAL while one is left, and the spill file if anything ever spilled.
    return {f.name: f.read_bytes().decode("utf-8", errors="replace") for f in files if f.stat().st_size}


HOOK_TOKEN = "hk_9Vq3Zw7Lx2Pc8Kd4Mb6Tn1"


@pytest.mark.parametrize("hook_token", ["", HOOK_TOKEN])
async def test_no_configured_secret_appears_in_any_output(
    upstreams: Upstreams, tmp_path: Path, hook_token: str
) -> None:
    secrets = {**SECRETS, "token in the webhook url": hook_token} if hook_token else SECRETS
    env = gateway_env(upstreams, tmp_path, hook_token)
    served = await asyncio.to_thread(start, extra_env=env)
    try:
        outcomes = await drive(served.address, upstreams)
        await wait_for(lambda: bool(upstreams.spans))
        target = ("--target", served.address)
        cli = dict(
            await asyncio.gather(
                _cli("config show", "config", "show", "--profile", "development", env=env),
                _cli("config validate", "config", "validate", "--profile", "development", env=env),
                _cli("models", "models", "--profile", "development", env=env),
                _cli("usage summary", "usage", "summary", *target, env=env),
                _cli("usage export jsonl", "usage", "export", "--format", "jsonl", *target, env=env),
                _cli("usage export csv", "usage", "export", "--format", "csv", *target, env=env),
            )
        )
    finally:
        rest = await _stop(served)
    run = Run(
        # `start` read the serving line; the rest is what the server printed after it.
        f"omnirelay serving on {served.address} profile={served.profile}\n{rest}",
        served.stderr,
        cli,
        _ledger(tmp_path),
    )

    # 1. The secrets were in use: the upstreams received every one that is ever sent.
    openai_headers = upstreams.headers_at("/v1/chat/completions")
    anthropic_headers = upstreams.headers_at("/v1/messages")
    assert openai_headers
    assert anthropic_headers
    assert all(h.get("authorization") == f"Bearer {OPENAI_KEY}" for h in openai_headers)
    assert all(h.get("x-relay-token") == RELAY_TOKEN for h in openai_headers)
    assert all(h.get("x-api-key") == ANTHROPIC_KEY for h in anthropic_headers)
    listings = upstreams.headers_at("/v1/models")
    assert listings, "the health probes listed no models"
    assert all(
        h.get("authorization") == f"Bearer {OPENAI_KEY}" or h.get("x-api-key") == ANTHROPIC_KEY
        for h in listings
    )
    assert upstreams.spans, "no spans reached the collector"
    assert all(s.headers.get("authorization") == f"Bearer {OTLP_TOKEN}" for s in upstreams.spans)
    assert all(s.headers.get("x-honeycomb-team") == HONEYCOMB_KEY for s in upstreams.spans)
    (hook, *_) = upstreams.hooks
    assert hook.path == f"/hooks/budget/{hook_token}".rstrip("/")
    assert verify_signature(
        WEBHOOK_SECRET,
        hook.headers["x-omnirelay-timestamp"],
        hook.body,
        hook.headers["x-omnirelay-signature"],
    )

    # 2. The calls went where they should and ended as they should.
    ok, failed = grpc.StatusCode.OK, {o.request_id for o in outcomes.values() if o.code != grpc.StatusCode.OK}
    assert (outcomes["ok-openai"].code, outcomes["ok-openai"].provider) == (ok, "openai")
    assert (outcomes["ok-anthropic"].code, outcomes["ok-anthropic"].provider) == (ok, "anthropic")
    assert (outcomes["stream-openai"].code, outcomes["stream-openai"].provider) == (ok, "openai")
    assert (outcomes["stream-anthropic"].code, outcomes["stream-anthropic"].provider) == (ok, "anthropic")
    assert (outcomes["budget-spent"].code, outcomes["budget-spent"].provider) == (ok, "openai")
    assert outcomes["budget-refused"].code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert outcomes["timeout"].code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert outcomes["cancelled"].code == grpc.StatusCode.CANCELLED
    assert {
        "fail-openai-401",
        "fail-anthropic-401",
        "fail-openai-429",
        "fail-anthropic-500",
        "fail-openai-500",
        "stream-broken",
    } <= failed
    # (The timed-out call may end before it reaches the simulator on a busy machine.)
    faults = {s.fault for s in upstreams.simulator.served}
    assert {"401", "429", "500", "stream_error"} <= faults
    assert {s.format for s in upstreams.simulator.served} == {"openai", "anthropic"}

    # 3. The outputs hold what they should: request lines (with content) for every call, records.
    lines = [json.loads(line) for line in run.server_stderr.splitlines() if line.startswith("{")]
    access = {e["request_id"]: e for e in lines if e.get("logger") == "omnirelay.access"}
    assert set(outcomes) <= set(access)
    assert {access[rid]["provider"] for rid in ("ok-openai", "ok-anthropic")} == {"openai", "anthropic"}
    assert access["cancelled"]["status"] == "CANCELLED"
    assert access["budget-refused"]["status"] == "RESOURCE_EXHAUSTED"
    assert CANARY in access["ok-anthropic"]["prompt"]
    assert access["ok-openai"]["prompt"] == f"user: say hello; {CANARY}; my key is [REDACTED]"
    exported = [
        json.loads(line) for line in run.cli["usage export jsonl"].splitlines() if line.startswith("{")
    ]
    assert set(outcomes) <= {r["request_id"] for r in exported}
    assert "ok-anthropic" in run.cli["usage export csv"]
    assert "********" in run.cli["config show"]
    assert upstreams.base_url in run.cli["config show"]
    assert any("ok-openai" in text for text in run.ledger.values())

    # 4. The search works: a secret planted in a copy of each output is found.
    outputs = {
        "server stdout": run.server_stdout,
        "server stderr": run.server_stderr,
        **{f"`omnirelay {name}`": text for name, text in run.cli.items()},
        **{f"ledger file {name}": text for name, text in run.ledger.items()},
        "exported spans": "\n".join(s.body.decode("utf-8", errors="replace") for s in upstreams.spans),
    }
    for name, text in outputs.items():
        assert text, f"{name} is empty"
        for secret_name, value in secrets.items():
            assert secret_name in leaks(f"{text}\n...{value[3:-3]}...", secrets)

    # 5. And no secret appears anywhere.
    found = [
        f"{secret} in {where}: ...{around!r}..."
        for where, text in outputs.items()
        for secret, around in leaks(text, secrets).items()
    ]
    assert not found, "secrets leaked:\n" + "\n".join(found)


def test_config_show_masks_a_token_in_the_webhook_url() -> None:
    token = "T0KEN5Vq8Zw2Lx7Pc4Kd3Mb6"
    url = f"https://hooks.example.com/services/T024BE7LD/B01ABCDEF/{token}"
    shown = run_cli(
        "config",
        "show",
        extra_env={
            "OMNIRELAY_BUDGETS__WEBHOOK_URL": url,
            "OMNIRELAY_BUDGETS__WEBHOOK_SECRET": WEBHOOK_SECRET,
        },
    )
    assert shown.returncode == 0, shown.stderr
    assert "hooks.example.com" in shown.stdout or "********" in shown.stdout
    assert token not in shown.stdout
