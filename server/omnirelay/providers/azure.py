"""Azure OpenAI: OpenAI's wire format at a deployment URL, plus content-filter annotations.

Only what Azure does differently lives here: the URL names the deployment and
carries ``api-version``, the key goes in ``api-key``, and answers carry
``prompt_filter_results`` (``prompt_annotations`` in older API versions) and
per-choice ``content_filter_results``. A prompt rejected by the filter is a 400
with code ``content_filter``, which the shared classification already maps.
The model listing (``list_models``) is ``GET /openai/models?api-version=…``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

from msgspec import structs

from omnirelay.domain import CompletionResult, Deployment, FinishReason, Message
from omnirelay.errors import ContentFilteredError
from omnirelay.providers import openai

# --- response mapping ---------------------------------------------------------------------------------


def filtered(results: Any) -> bool:
    """Whether a content_filter_results object says some category was filtered."""
    if not isinstance(results, Mapping):
        return False
    return any(isinstance(v, Mapping) and v.get("filtered") is True for v in results.values())


def check_prompt(data: Mapping[str, Any], provider: str) -> None:
    """Raise ContentFilteredError when the prompt annotations say the prompt was filtered."""
    prompts = data.get("prompt_filter_results") or data.get("prompt_annotations") or ()
    if any(isinstance(p, Mapping) and filtered(p.get("content_filter_results")) for p in prompts):
        raise ContentFilteredError(
            f"{provider}: the prompt was filtered by Azure's content management policy",
            provider=provider,
            upstream_code="content_filter",
        )


def parse_response(
    data: Any, *, provider: str = "azure", messages: Sequence[Message] = ()
) -> CompletionResult:
    result = openai.parse_response(data, provider=provider, messages=messages)
    check_prompt(data, provider)
    cut = {
        c.get("index", i) for i, c in enumerate(data["choices"]) if filtered(c.get("content_filter_results"))
    }
    if not cut:
        return result
    choices = tuple(
        structs.replace(c, finish_reason=FinishReason.CONTENT_FILTER) if c.index in cut else c
        for c in result.choices
    )
    return structs.replace(result, choices=choices)


# --- stream parsing -----------------------------------------------------------------------------------


class AzureStreamParser(openai.StreamParser):
    """OpenAI's stream parsing; annotation-only frames (no delta, empty id) may come at any point."""

    def check_frame(self, data: Mapping[str, Any]) -> None:
        # The first frame carries the prompt annotations and no choices.
        check_prompt(data, self.provider)

    def filtered(self, choice: Mapping[str, Any]) -> bool:
        return filtered(choice.get("content_filter_results"))


# --- the provider -------------------------------------------------------------------------------------


class AzureOpenAIProvider(openai.OpenAIProvider):
    """One Azure OpenAI resource; the model's ``provider_model`` is the deployment name."""

    def _chat_path(self, deployment: Deployment) -> str:
        return f"/openai/deployments/{quote(deployment.provider_model, safe='')}/chat/completions"

    def _embeddings_path(self, deployment: Deployment) -> str:
        return f"/openai/deployments/{quote(deployment.provider_model, safe='')}/embeddings"

    def _models_path(self) -> str:
        # The models the resource can deploy, not its deployments: it answers without naming one.
        return "/openai/models"

    def _params(self) -> Mapping[str, str] | None:
        return {"api-version": self._settings.api_version}

    def _headers(self) -> dict[str, str]:
        # Without a key, auth comes from configured headers (an Entra ID bearer token).
        return {"api-key": self._settings.api_key} if self._settings.api_key else {}

    def _parse(self, data: Any, messages: Sequence[Message]) -> CompletionResult:
        return parse_response(data, provider=self.name, messages=messages)

    def _stream_parser(self, messages: Sequence[Message]) -> openai.StreamParser:
        return AzureStreamParser(self.name, "", messages)
