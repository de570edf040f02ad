"""Model listings: the free endpoints active health probes call, in the simulator and in every adapter.

A probe must never spend tokens, so a listing is recorded apart from
completions (``listings`` in ``/_sim/stats``), and a failed listing raises the
same classified errors a failed completion does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from omnirelay import errors
from omnirelay.config.schema import HttpProviderSettings, LocalProviderSettings
from omnirelay.domain import CompletionRequest, Deployment, Message, ProviderCall, Role, Sampling, TextPart
from omnirelay.providers import anthropic, gemini, ollama, openai
from omnirelay.providers.base import ChatProvider, ModelLister
from omnirelay.providers.http import HttpTransport
from omnirelay.providers.local import LocalProvider
from omnirelay.providers.registry import ProviderRegistry
from omnirelay.sim.server import RunningSim

SECRET = "sk-test-secret-never-shown"
OPENAI_IDS = ("gpt-4o", "gpt-4o-mini", "o3-mini", "text-embedding-3-small")


@dataclass(frozen=True)
class Target:
    id: str
    kind: str
    format: str
    ids: tuple[str, ...]
    path: str = ""
    flavor: str = ""
    api_version: str = ""


TARGETS = [
    Target("openai", "openai", "openai", OPENAI_IDS, "/v1"),
    Target("azure", "azure", "azure", OPENAI_IDS, api_version="2024-10-21"),
    Target(
        "anthropic",
        "anthropic",
        "anthropic",
        ("claude-sonnet-4-5-20250929", "claude-opus-4-1-20250805", "claude-3-5-haiku-20241022"),
    ),
    Target(
        "gemini",
        "gemini",
        "gemini",
        ("gemini-2.5-pro", "gemini-2.5-flash", "gemini-2.0-flash", "text-embedding-004"),
    ),
    Target("ollama", "ollama", "ollama", ("llama3.1:8b", "llama3.2:latest", "nomic-embed-text:latest")),
    Target("ollama-openai-compat", "openai", "openai", OPENAI_IDS, "/v1", flavor="ollama"),
]


@pytest.fixture(params=TARGETS, ids=[t.id for t in TARGETS])
def target(request: pytest.FixtureRequest) -> Target:
    param: Target = request.param
    return param


Make = Callable[..., ChatProvider]


@pytest.fixture
async def make(sim: RunningSim, target: Target) -> AsyncIterator[Make]:
    """Providers built by the registry, as the server builds them; ``options`` go in x-sim-options."""
    made: list[ChatProvider] = []

    def build(options: str = "", total_timeout: float = 30.0) -> ChatProvider:
        settings = HttpProviderSettings(
            name=f"sim-{target.id}",
            kind=target.kind,
            base_url=sim.base_url + target.path,
            api_key=SECRET,
            flavor=target.flavor,
            api_version=target.api_version,
            total_timeout=total_timeout,
            headers=(("x-sim-options", options),) if options else (),
        )
        provider = ProviderRegistry.from_settings({settings.name: settings}).get(settings.name)
        made.append(provider)
        return provider

    yield build
    for provider in made:
        await provider.aclose()


def lister(provider: ChatProvider) -> ModelLister:
    assert isinstance(provider, ModelLister)
    return provider


async def stats(sim: RunningSim) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=sim.base_url) as client:
        response = await client.get("/_sim/stats")
    response.raise_for_status()
    data: dict[str, Any] = response.json()
    return data


def call(model: str = "sim-model") -> ProviderCall:
    request = CompletionRequest(model=model, messages=(Message(Role.USER, (TextPart("hello"),)),))
    return ProviderCall(request, Sampling(), Deployment("sim", "sim", model))


# --- every adapter, against the simulator -------------------------------------------------------------


async def test_list_models_returns_the_upstream_ids(make: Make, target: Target, sim: RunningSim) -> None:
    ids = await lister(make()).list_models()
    assert ids == target.ids
    data = await stats(sim)
    assert data["listings"] == 1
    assert data["listings_by_format"] == {target.format: 1}
    assert [(row["format"], row["fault"], row["completed"]) for row in data["listed"]] == [
        (target.format, "", True)
    ]
    # A probe is not a completion: nothing was served, no tokens were spent.
    assert data["requests"] == 0
    assert data["served"] == []


async def test_a_listing_leaves_the_completion_record_alone(make: Make, sim: RunningSim) -> None:
    provider = make()
    await provider.complete(call())
    await lister(provider).list_models()
    await lister(provider).list_models()
    data = await stats(sim)
    assert (data["requests"], data["completed"], data["listings"]) == (1, 1, 2)
    assert len(data["served"]) == 1


async def test_a_503_listing_is_overloaded(make: Make, target: Target, sim: RunningSim) -> None:
    with pytest.raises(errors.UpstreamError) as caught:
        await lister(make("fault=503;retry_after=2")).list_models()
    error = caught.value
    assert isinstance(error, errors.OverloadedError), f"{type(error).__name__}: {error.message}"
    assert error.http_status == 503
    assert error.retryable
    assert error.retry_after_seconds == 2.0
    assert SECRET not in error.message
    data = await stats(sim)
    assert [(row["format"], row["fault"], row["completed"]) for row in data["listed"]] == [
        (target.format, "503", False)
    ]
    assert data["requests"] == 0


FAULTS = [
    ("401", errors.UpstreamAuthenticationError),
    ("429", errors.RateLimitedError),
    ("500", errors.UpstreamServerError),
    ("malformed", errors.MalformedResponseError),
]


@pytest.mark.parametrize(("fault", "cls"), FAULTS, ids=[f[0] for f in FAULTS])
async def test_listing_faults_classify_like_completion_faults(
    make: Make, fault: str, cls: type[errors.UpstreamError]
) -> None:
    with pytest.raises(errors.UpstreamError) as caught:
        await lister(make(f"fault={fault}")).list_models()
    assert isinstance(caught.value, cls), f"{type(caught.value).__name__}: {caught.value.message}"


async def test_a_hung_listing_hits_the_provider_timeout(make: Make) -> None:
    with pytest.raises(errors.UpstreamTimeoutError):
        await lister(make("fault=hang", total_timeout=0.3)).list_models()


async def test_a_listing_fails_first_n_then_recovers(make: Make, target: Target, sim: RunningSim) -> None:
    provider = lister(make("fault=503;fail_first=2"))
    outcomes: list[str] = []
    for _ in range(3):
        try:
            outcomes.append(str(len(await provider.list_models())))
        except errors.UpstreamError as exc:
            outcomes.append(type(exc).__name__)
    assert outcomes == ["OverloadedError", "OverloadedError", str(len(target.ids))]
    assert [row["fault"] for row in (await stats(sim))["listed"]] == ["503", "503", ""]


# --- the local provider -------------------------------------------------------------------------------


async def test_local_lists_its_known_models_without_io() -> None:
    provider = LocalProvider(LocalProviderSettings(name="local"))
    assert isinstance(provider, ModelLister)
    assert await provider.list_models() == ("small", "large")


# --- the simulator's wire shapes ----------------------------------------------------------------------


async def test_sim_openai_listing_shape(sim: RunningSim) -> None:
    async with httpx.AsyncClient(base_url=sim.base_url) as client:
        response = await client.get("/v1/models")
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == list(OPENAI_IDS)
    for model in body["data"]:
        assert set(model) == {"id", "object", "created", "owned_by"}
        assert model["object"] == "model"
        assert isinstance(model["created"], int)


async def test_sim_anthropic_listing_shape_on_the_shared_path(sim: RunningSim) -> None:
    async with httpx.AsyncClient(base_url=sim.base_url) as client:
        response = await client.get("/v1/models", headers={"anthropic-version": "2023-06-01"})
    assert response.status_code == 200
    assert response.headers["request-id"].startswith("sim-")
    body = response.json()
    assert set(body) == {"data", "has_more", "first_id", "last_id"}
    assert body["has_more"] is False
    ids = [m["id"] for m in body["data"]]
    assert (body["first_id"], body["last_id"]) == (ids[0], ids[-1])
    for model in body["data"]:
        assert set(model) == {"type", "id", "display_name", "created_at"}
        assert model["type"] == "model"
        assert model["created_at"].endswith("Z")
    assert (await stats(sim))["listings_by_format"] == {"anthropic": 1}


async def test_sim_azure_listing_wants_api_version_and_a_key(sim: RunningSim) -> None:
    async with httpx.AsyncClient(base_url=sim.base_url) as client:
        unversioned = await client.get("/openai/models", headers={"api-key": SECRET})
        keyless = await client.get("/openai/models", params={"api-version": "2024-10-21"})
        listed = await client.get(
            "/openai/models", params={"api-version": "2024-10-21"}, headers={"api-key": SECRET}
        )
    assert (unversioned.status_code, keyless.status_code, listed.status_code) == (404, 401, 200)
    assert listed.json()["object"] == "list"
    assert listed.headers["apim-request-id"].startswith("sim-")
    # Refused at the gate, before any work: only the answered listing is recorded.
    assert (await stats(sim))["listings"] == 1


async def test_sim_gemini_listing_shape(sim: RunningSim) -> None:
    async with httpx.AsyncClient(base_url=sim.base_url) as client:
        response = await client.get("/v1beta/models")
    assert response.status_code == 200
    models = response.json()["models"]
    by_name = {m["name"]: m for m in models}
    assert all(name.startswith("models/") for name in by_name)
    assert "generateContent" in by_name["models/gemini-2.0-flash"]["supportedGenerationMethods"]
    assert by_name["models/text-embedding-004"]["supportedGenerationMethods"][0] == "embedContent"


async def test_sim_ollama_tags_shape(sim: RunningSim) -> None:
    async with httpx.AsyncClient(base_url=sim.base_url) as client:
        response = await client.get("/api/tags")
    assert response.status_code == 200
    models = response.json()["models"]
    assert models[0]["name"] == models[0]["model"] == "llama3.1:8b"
    for model in models:
        assert {"name", "model", "modified_at", "size", "digest"} <= set(model)
        assert isinstance(model["size"], int)
        assert len(model["digest"]) == 64


# --- paging, where the upstream pages -----------------------------------------------------------------


def paged(pages: list[dict[str, Any]], seen: list[httpx.Request]) -> httpx.AsyncClient:
    """A client whose upstream answers ``pages`` in turn (the last one for ever after)."""

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=pages[min(len(seen), len(pages)) - 1])

    return httpx.AsyncClient(base_url="http://upstream.test", transport=httpx.MockTransport(handler))


def http_settings(kind: str) -> HttpProviderSettings:
    return HttpProviderSettings(name=kind, kind=kind, base_url="http://upstream.test", api_key=SECRET)


async def test_anthropic_follows_has_more_with_after_id() -> None:
    seen: list[httpx.Request] = []
    pages = [
        {"data": [{"id": "a"}, {"id": "b"}], "has_more": True, "first_id": "a", "last_id": "b"},
        {"data": [{"id": "c"}], "has_more": False, "first_id": "c", "last_id": "c"},
    ]
    config = http_settings("anthropic")
    provider = anthropic.AnthropicProvider(config, HttpTransport(config, client=paged(pages, seen)))
    assert await provider.list_models() == ("a", "b", "c")
    await provider.aclose()
    assert [r.url.path for r in seen] == ["/v1/models", "/v1/models"]
    assert [dict(r.url.params) for r in seen] == [{"limit": "1000"}, {"limit": "1000", "after_id": "b"}]
    assert seen[0].headers["x-api-key"] == SECRET
    assert seen[0].headers["anthropic-version"] == anthropic.DEFAULT_API_VERSION


async def test_anthropic_paging_is_bounded() -> None:
    seen: list[httpx.Request] = []
    endless = [{"data": [{"id": "x"}], "has_more": True, "first_id": "x", "last_id": "x"}]
    config = http_settings("anthropic")
    provider = anthropic.AnthropicProvider(config, HttpTransport(config, client=paged(endless, seen)))
    ids = await provider.list_models()
    await provider.aclose()
    assert len(seen) == len(ids) == 10


async def test_gemini_follows_next_page_token_and_strips_the_prefix() -> None:
    seen: list[httpx.Request] = []
    pages: list[dict[str, Any]] = [
        {"models": [{"name": "models/gemini-2.0-flash"}], "nextPageToken": "t1"},
        {"models": [{"name": "models/text-embedding-004"}]},
    ]
    config = http_settings("gemini")
    provider = gemini.GeminiProvider(config, HttpTransport(config, client=paged(pages, seen)))
    assert await provider.list_models() == ("gemini-2.0-flash", "text-embedding-004")
    await provider.aclose()
    assert [r.url.path for r in seen] == ["/v1beta/models", "/v1beta/models"]
    assert [dict(r.url.params) for r in seen] == [
        {"pageSize": "1000"},
        {"pageSize": "1000", "pageToken": "t1"},
    ]
    assert seen[0].headers["x-goog-api-key"] == SECRET


ADAPTERS: dict[str, Callable[[HttpProviderSettings, HttpTransport], ChatProvider]] = {
    "openai": openai.OpenAIProvider,
    "anthropic": anthropic.AnthropicProvider,
    "gemini": gemini.GeminiProvider,
    "ollama": ollama.OllamaProvider,
}


@pytest.mark.parametrize("kind", sorted(ADAPTERS))
async def test_an_unreadable_model_list_is_malformed(kind: str) -> None:
    seen: list[httpx.Request] = []
    # A string where each format expects a list: "data" (OpenAI, Anthropic), "models" (Gemini, Ollama).
    config = http_settings(kind)
    client = paged([{"data": "nope", "models": "nope"}], seen)
    provider = ADAPTERS[kind](config, HttpTransport(config, client=client))
    with pytest.raises(errors.MalformedResponseError):
        await lister(provider).list_models()
    await provider.aclose()


async def test_gemini_reads_an_empty_page_as_no_models() -> None:
    # proto3 JSON leaves empty repeated fields out: {} is a page without models, not a broken one.
    seen: list[httpx.Request] = []
    config = http_settings("gemini")
    provider = gemini.GeminiProvider(config, HttpTransport(config, client=paged([{}], seen)))
    assert await provider.list_models() == ()
    await provider.aclose()
