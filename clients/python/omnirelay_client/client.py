"""Ergonomic clients over the generated stubs: ``AsyncClient`` (asyncio) and ``Client`` (blocking).

Both take a prompt string, a list of messages or a full ``CompleteRequest``;
set the API key, request id and deadline as gRPC metadata and deadline; and
raise typed exceptions (``omnirelay_client.errors``) built from the server's
rich status details.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field

import grpc
from grpc import aio

from omnirelay_client.errors import from_rpc_error
from omnirelay_client.v1 import (
    completion_pb2,
    completion_pb2_grpc,
    stream_pb2,
    stream_pb2_grpc,
    types_pb2,
)

DEFAULT_TARGET = "127.0.0.1:50051"
Prompt = str | Sequence[types_pb2.Message] | completion_pb2.CompleteRequest


def system(text: str) -> types_pb2.Message:
    return types_pb2.Message(role=types_pb2.ROLE_SYSTEM, content=[types_pb2.ContentPart(text=text)])


def user(text: str) -> types_pb2.Message:
    return types_pb2.Message(role=types_pb2.ROLE_USER, content=[types_pb2.ContentPart(text=text)])


def assistant(text: str) -> types_pb2.Message:
    return types_pb2.Message(role=types_pb2.ROLE_ASSISTANT, content=[types_pb2.ContentPart(text=text)])


@dataclass(frozen=True, slots=True)
class Sampling:
    """The common sampling knobs; anything else goes in a full CompleteRequest."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: Sequence[str] = ()
    seed: int | None = None
    n: int | None = None


@dataclass(frozen=True, slots=True)
class CallOptions:
    """Per-call settings; ``timeout`` None means the client's default."""

    timeout: float | None = None
    request_id: str | None = None
    extra_metadata: Sequence[tuple[str, str]] = field(default_factory=tuple)


def build_request(
    prompt: Prompt, model: str = "", sampling: Sampling | None = None, preset: str = ""
) -> completion_pb2.CompleteRequest:
    """A CompleteRequest from a prompt string, a message list, or a request (returned as is)."""
    if isinstance(prompt, completion_pb2.CompleteRequest):
        return prompt
    messages = [user(prompt)] if isinstance(prompt, str) else list(prompt)
    request = completion_pb2.CompleteRequest(model=model, messages=messages, preset=preset)
    if sampling is not None:
        s = request.sampling
        if sampling.max_tokens is not None:
            s.max_tokens = sampling.max_tokens
        if sampling.temperature is not None:
            s.temperature = sampling.temperature
        if sampling.top_p is not None:
            s.top_p = sampling.top_p
        if sampling.seed is not None:
            s.seed = sampling.seed
        if sampling.n is not None:
            s.n = sampling.n
        s.stop.extend(sampling.stop)
    return request


def text_of(response: completion_pb2.CompleteResponse, choice: int = 0) -> str:
    """The text of one choice of a unary response."""
    return "".join(p.text for p in response.choices[choice].message.content)


@contextlib.contextmanager
def _typed_errors() -> Iterator[None]:
    """Turn a failed call (sync or asyncio) into the typed exception for its status."""
    try:
        yield
    except grpc.RpcError as exc:
        raise from_rpc_error(exc) from None


class _Base:
    def __init__(self, api_key: str | None, timeout: float | None) -> None:
        self._api_key = api_key
        self._timeout = timeout

    def _call_args(self, options: CallOptions | None) -> tuple[float | None, tuple[tuple[str, str], ...]]:
        options = options or CallOptions()
        metadata = [("x-request-id", options.request_id or uuid.uuid4().hex), *options.extra_metadata]
        if self._api_key:
            metadata.append(("authorization", f"Bearer {self._api_key}"))
        timeout = options.timeout if options.timeout is not None else self._timeout
        return timeout, tuple(metadata)


class AsyncClient(_Base):
    """asyncio client. Use ``async with AsyncClient(target) as client``."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        api_key: str | None = None,
        timeout: float | None = 60.0,
        credentials: grpc.ChannelCredentials | None = None,
        channel: aio.Channel | None = None,
    ) -> None:
        super().__init__(api_key, timeout)
        if channel is None:
            channel = (
                aio.secure_channel(target, credentials)
                if credentials is not None
                else aio.insecure_channel(target)
            )
        self._channel = channel
        self._completion = completion_pb2_grpc.CompletionServiceStub(channel)
        self._stream = stream_pb2_grpc.StreamCompletionServiceStub(channel)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def complete(
        self,
        prompt: Prompt,
        *,
        model: str = "",
        sampling: Sampling | None = None,
        preset: str = "",
        options: CallOptions | None = None,
    ) -> completion_pb2.CompleteResponse:
        timeout, metadata = self._call_args(options)
        with _typed_errors():
            return await self._completion.Complete(
                build_request(prompt, model, sampling, preset), timeout=timeout, metadata=metadata
            )

    async def stream(
        self,
        prompt: Prompt,
        *,
        model: str = "",
        sampling: Sampling | None = None,
        preset: str = "",
        options: CallOptions | None = None,
    ) -> AsyncIterator[stream_pb2.StreamCompleteResponse]:
        """The stream's events as they arrive. Leaving the loop early cancels the call."""
        timeout, metadata = self._call_args(options)
        request = stream_pb2.StreamCompleteRequest(request=build_request(prompt, model, sampling, preset))
        call = self._stream.StreamComplete(request, timeout=timeout, metadata=metadata)
        try:
            with _typed_errors():
                async for event in call:
                    yield event
        finally:
            call.cancel()

    async def embed(
        self,
        inputs: Sequence[str],
        *,
        model: str = "",
        dimensions: int = 0,
        options: CallOptions | None = None,
    ) -> completion_pb2.EmbedResponse:
        timeout, metadata = self._call_args(options)
        request = completion_pb2.EmbedRequest(model=model, inputs=list(inputs), dimensions=dimensions)
        with _typed_errors():
            return await self._completion.Embed(request, timeout=timeout, metadata=metadata)

    async def count_tokens(
        self, prompt: Prompt, *, model: str = "", options: CallOptions | None = None
    ) -> completion_pb2.CountTokensResponse:
        timeout, metadata = self._call_args(options)
        request = completion_pb2.CountTokensRequest(model=model, messages=build_request(prompt).messages)
        with _typed_errors():
            return await self._completion.CountTokens(request, timeout=timeout, metadata=metadata)

    async def list_models(
        self,
        *,
        provider: str = "",
        capabilities: Sequence[types_pb2.Capability.ValueType] = (),
        include_unavailable: bool = False,
        options: CallOptions | None = None,
    ) -> list[types_pb2.ModelInfo]:
        timeout, metadata = self._call_args(options)
        request = completion_pb2.ListModelsRequest(
            provider=provider, capabilities=capabilities, include_unavailable=include_unavailable
        )
        with _typed_errors():
            response = await self._completion.ListModels(request, timeout=timeout, metadata=metadata)
        return list(response.models)


class Client(_Base):
    """Blocking client with the same methods as AsyncClient."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        api_key: str | None = None,
        timeout: float | None = 60.0,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        super().__init__(api_key, timeout)
        self._channel = (
            grpc.secure_channel(target, credentials)
            if credentials is not None
            else grpc.insecure_channel(target)
        )
        self._completion = completion_pb2_grpc.CompletionServiceStub(self._channel)
        self._stream = stream_pb2_grpc.StreamCompletionServiceStub(self._channel)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def complete(
        self,
        prompt: Prompt,
        *,
        model: str = "",
        sampling: Sampling | None = None,
        preset: str = "",
        options: CallOptions | None = None,
    ) -> completion_pb2.CompleteResponse:
        timeout, metadata = self._call_args(options)
        with _typed_errors():
            return self._completion.Complete(
                build_request(prompt, model, sampling, preset), timeout=timeout, metadata=metadata
            )

    def stream(
        self,
        prompt: Prompt,
        *,
        model: str = "",
        sampling: Sampling | None = None,
        preset: str = "",
        options: CallOptions | None = None,
    ) -> Iterator[stream_pb2.StreamCompleteResponse]:
        timeout, metadata = self._call_args(options)
        request = stream_pb2.StreamCompleteRequest(request=build_request(prompt, model, sampling, preset))
        call = self._stream.StreamComplete(request, timeout=timeout, metadata=metadata)
        try:
            with _typed_errors():
                yield from call
        finally:
            call.cancel()

    def list_models(
        self,
        *,
        provider: str = "",
        capabilities: Sequence[types_pb2.Capability.ValueType] = (),
        include_unavailable: bool = False,
        options: CallOptions | None = None,
    ) -> list[types_pb2.ModelInfo]:
        timeout, metadata = self._call_args(options)
        request = completion_pb2.ListModelsRequest(
            provider=provider, capabilities=capabilities, include_unavailable=include_unavailable
        )
        with _typed_errors():
            response = self._completion.ListModels(request, timeout=timeout, metadata=metadata)
        return list(response.models)
