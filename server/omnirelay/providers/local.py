"""The offline ``local`` provider: deterministic text with honest token counts.

It stands in for a real upstream in development, tests, demos and benchmarks:
the same request (prompt, model, seed, temperature, choice index) always gives
the same text, different seeds or temperatures give different text, and it
honours max_tokens, stop sequences, n, tool choice and logprobs. Latency knobs
(time to first token, tokens per second) imitate a real upstream.

Every generated token is one vocabulary word with a leading space, which the
local tokenizer counts as exactly one token, so reported usage is exact.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import random
from collections.abc import AsyncGenerator, Sequence

from omnirelay.config.schema import LocalProviderSettings
from omnirelay.domain import (
    Choice,
    CompletionResult,
    Deployment,
    EmbeddingResult,
    FinishChunk,
    FinishReason,
    Message,
    ProviderCall,
    StreamChunk,
    TextDelta,
    TokenLogprob,
    TokenUsage,
    ToolCall,
    ToolCallDelta,
    ToolChoiceMode,
    UsageChunk,
)
from omnirelay.providers import tokenizer

# Vocabulary of the generated text; every word is one token to the local tokenizer.
_VOCAB = tuple(
    (
        "the of and to in is that for it as with was on be by at this from or an are not have but they "
        "which one you were all we when there can been has more if will what would about some into time "
        "only new like other than could these two may first then any after most also made over did many "
        "gateway relay signal stream token model route cache budget packet river stone light ocean "
        "forest quiet rapid amber silver north winter garden engine harbor lantern meadow orbit prism "
        "quartz velvet willow zephyr canyon delta ember falcon glacier horizon island jasmine kernel "
        "lattice"
    ).split()
)
_TOKENS = tuple(" " + w for w in _VOCAB)
_TOKEN_COUNT = len(_TOKENS)
# Unary answers kept for reuse (see LocalProvider.complete); cleared whole when full.
_MEMO_ENTRIES = 1024
# A plain call's answer by model, messages, seed, temperature, max_tokens and n (``_memo_key``).
_MemoKey = tuple[str, tuple[Message, ...], int | None, float | None, int | None, int | None]
# The provider models the shipped settings route here (local-small, local-large). Any name is
# answered, so this is what a listing advertises, not a limit on what may be asked for.
MODELS = ("small", "large")


class LocalProvider:
    """Generates text locally; counts what it generates so tests can see cancellation work."""

    unsupported_parameters = frozenset({"response_format", "top_logprobs"})
    strict_parameters = False

    def __init__(self, settings: LocalProviderSettings) -> None:
        self._settings = settings
        self._ttft = settings.ttft_ms / 1000.0
        self._token_interval = 1.0 / settings.tokens_per_second if settings.tokens_per_second > 0 else 0.0
        self.tokens_generated = 0
        self.active_streams = 0
        # The text is a pure function of the call, so a repeated plain call (no tools, stop
        # sequences or logprobs) reuses its answer: as a benchmark's upstream the provider should
        # cost next to nothing, and generating the bench's 16 words cost 95k instructions a call
        # (callgrind), about what the gateway's routing costs.
        self._memo: dict[_MemoKey, tuple[tuple[Choice, ...], TokenUsage, int, int]] = {}

    @property
    def name(self) -> str:
        return self._settings.name

    async def complete(self, call: ProviderCall) -> CompletionResult:
        key = _memo_key(call)
        known = self._memo.get(key) if key is not None else None
        if known is None:
            planned = _plan(call, self._settings.default_output_tokens, _prompt_key(call))
            steps = max(c.run_to_end() for c in planned)
            known = (
                tuple(c.result() for c in planned),
                _usage(call, planned),
                steps,
                sum(c.tokens for c in planned),
            )
            if key is not None:
                if len(self._memo) >= _MEMO_ENTRIES:
                    self._memo.clear()
                self._memo[key] = known
        choices, usage, steps, tokens = known
        self.tokens_generated += tokens
        delay = self._ttft + steps * self._token_interval
        if delay > 0:
            await asyncio.sleep(delay)
        return CompletionResult(
            choices=choices, usage=usage, upstream_request_id=f"local-{call.request.request_id}"
        )

    async def stream(self, call: ProviderCall) -> AsyncGenerator[StreamChunk, None]:
        choices = _plan(call, self._settings.default_output_tokens, _prompt_key(call))
        self.active_streams += 1
        try:
            if self._ttft > 0:
                await asyncio.sleep(self._ttft)
            live = list(choices)
            first = True
            while live:
                if not first and self._token_interval > 0:
                    await asyncio.sleep(self._token_interval)
                first = False
                finished = False
                for c in live:
                    chunks = c.step()
                    self.tokens_generated += c.step_tokens
                    for chunk in chunks:
                        yield chunk
                    if c.done:
                        finished = True
                        yield FinishChunk(c.index, c.finish, c.logprobs_or_none())
                if finished:  # rebuilt only when a choice ends, not once per token
                    live = [c for c in live if not c.done]
            yield UsageChunk(_usage(call, choices))
        finally:
            self.active_streams -= 1

    async def aclose(self) -> None:
        return None

    async def list_models(self) -> tuple[str, ...]:
        """The known model ids, without I/O: there is no upstream to ask."""
        return MODELS

    async def embed(self, deployment: Deployment, inputs: Sequence[str], dimensions: int) -> EmbeddingResult:
        dims = dimensions or self._settings.embedding_dimensions
        vectors = tuple(_embedding(deployment.provider_model, text, dims) for text in inputs)
        tokens = sum(tokenizer.count_text(t) for t in inputs)
        return EmbeddingResult(vectors=vectors, usage=TokenUsage(input_tokens=tokens))

    async def count_tokens(self, deployment: Deployment, messages: Sequence[Message]) -> int:
        return tokenizer.count_messages(messages)


class _ChoiceState:
    """One choice being generated, one token per ``step``."""

    __slots__ = (
        "_block",
        "_block_index",
        "_rng",
        "done",
        "emitted",
        "finish",
        "index",
        "limit",
        "logprob_rng",
        "logprobs",
        "on_limit",
        "seed",
        "step_tokens",
        "stop",
        "text",
        "tokens",
        "tool",
    )

    def __init__(
        self, index: int, seed: int, limit: int, natural: bool, stop: tuple[str, ...], want_logprobs: bool
    ) -> None:
        self.index = index
        # Without max_tokens the default length is the answer's natural end, not a cut.
        self.on_limit = FinishReason.STOP if natural else FinishReason.LENGTH
        self.seed = seed
        self._rng: random.Random | None = None
        self._block = b""
        self._block_index = -1
        self.logprob_rng = random.Random(seed ^ 0x5EED) if want_logprobs else None
        self.logprobs: list[TokenLogprob] = []
        self.limit = limit
        self.stop = stop
        self.text = ""
        self.emitted = 0
        self.tokens = 0
        self.step_tokens = 0
        self.done = False
        self.finish = FinishReason.UNKNOWN
        self.tool: ToolCall | None = None

    def step(self) -> list[StreamChunk]:
        """Generate the next token; return the chunks it makes visible."""
        if self.tool is not None:
            return self._tool_step()
        self.step_tokens = 0
        if self.tokens >= self.limit:
            self.done, self.finish = True, self.on_limit
            return self._flush(len(self.text))
        token = self._token(self.tokens)
        self.text += token
        self.tokens += 1
        self.step_tokens = 1
        if self.logprob_rng is not None:
            self.logprobs.append(TokenLogprob(token, -round(self.logprob_rng.random() * 3.0, 4)))
        if self.stop:
            return self._check_stop()
        if self.tokens >= self.limit:
            self.done, self.finish = True, self.on_limit
        return self._flush(len(self.text))

    def run_to_end(self) -> int:
        """Generate the rest at once (unary calls); returns the steps a stream would have taken."""
        if self.tool is None and not self.stop and self.logprob_rng is None and self.tokens == 0:
            # The common case in one call instead of one step per token.
            self.text = "".join([_TOKENS[b % _TOKEN_COUNT] for b in self._bytes(self.limit)])
            self.tokens = self.limit
            self.emitted = len(self.text)
            self.done, self.finish = True, self.on_limit
            return self.limit
        steps = 0
        while not self.done:
            self.step()
            steps += 1
        return steps

    @property
    def rng(self) -> random.Random:
        """For the rarer draws (tool arguments, ids); made on first use, it costs more than the text."""
        if self._rng is None:
            self._rng = random.Random(self.seed)
        return self._rng

    def _bytes(self, count: int) -> bytes:
        """The first ``count`` bytes of the hash stream ``_token`` reads."""
        key = self.seed.to_bytes(8, "big")
        return b"".join(
            hashlib.blake2b(block.to_bytes(4, "big"), key=key).digest() for block in range((count + 63) >> 6)
        )[:count]

    def _token(self, i: int) -> str:
        # Token i is byte i of a keyed hash stream (64 tokens per block): one blake2b call
        # per 64 tokens instead of seeding a Mersenne Twister per choice. Streams and unary
        # calls read the same stream, so they produce the same text.
        block = i >> 6
        if block != self._block_index:
            self._block = hashlib.blake2b(block.to_bytes(4, "big"), key=self.seed.to_bytes(8, "big")).digest()
            self._block_index = block
        return _TOKENS[self._block[i & 63] % _TOKEN_COUNT]

    def _check_stop(self) -> list[StreamChunk]:
        # Search only where a new match can start: within the longest stop of the tail.
        window = max(len(s) for s in self.stop) + len(_TOKENS[0]) + 16
        start = max(0, len(self.text) - window)
        hits = [i for i in (self.text.find(s, start) for s in self.stop) if i >= 0]
        if hits:
            cut = min(hits)
            self.text = self.text[:cut]
            self.done, self.finish = True, FinishReason.STOP
            return self._flush(cut)
        if self.tokens >= self.limit:
            self.done, self.finish = True, self.on_limit
            return self._flush(len(self.text))
        # Hold back a tail that could still become a stop sequence, so a stream never shows it.
        held = max((k for s in self.stop for k in range(1, len(s)) if self.text.endswith(s[:k])), default=0)
        return self._flush(len(self.text) - held)

    def _flush(self, upto: int) -> list[StreamChunk]:
        if upto <= self.emitted:
            return []
        delta = self.text[self.emitted : upto]
        self.emitted = upto
        return [TextDelta(self.index, delta)]

    def _tool_step(self) -> list[StreamChunk]:
        assert self.tool is not None
        self.done, self.finish = True, FinishReason.TOOL_CALLS
        self.step_tokens = self.tokens
        args = self.tool.arguments_json
        half = len(args) // 2
        # Two argument fragments, as real providers split them across chunks.
        return [
            ToolCallDelta(self.index, 0, id=self.tool.id, name=self.tool.name, arguments_delta=args[:half]),
            ToolCallDelta(self.index, 0, arguments_delta=args[half:]),
        ]

    def logprobs_or_none(self) -> tuple[TokenLogprob, ...] | None:
        return tuple(self.logprobs) if self.logprob_rng is not None else None

    def result(self) -> Choice:
        return Choice(
            index=self.index,
            text=self.text if self.tool is None else "",
            finish_reason=self.finish,
            tool_calls=(self.tool,) if self.tool is not None else (),
            logprobs=self.logprobs_or_none(),
        )


def _prompt_key(call: ProviderCall) -> str:
    """What seeds a call's text: model, prompt, seed and temperature (not its length: a shorter
    answer is a prefix of a longer one)."""
    sampling = call.sampling
    prompt = "\x1e".join([f"{m.role.value}:{m.text}" for m in call.request.messages])
    return f"{call.deployment.provider_model}\x1f{prompt}\x1f{sampling.seed}\x1f{sampling.temperature}"


def _memo_key(call: ProviderCall) -> _MemoKey | None:
    """Everything a plain call's answer depends on; None when the call is not plain (not memoized).

    The messages themselves, not the prompt key joined from them: a tuple of frozen structs hashes
    and compares in C, and the joined string cost more than the rest of the provider's call. It
    holds more than the prompt key does (names, tool call ids), so equal keys still mean equal
    answers.
    """
    request, sampling = call.request, call.sampling
    if request.tools or sampling.stop or sampling.logprobs:
        return None
    for m in request.messages:
        if m.tool_calls:  # counted in the usage, not in the prompt key
            return None
    return (
        call.deployment.provider_model,
        request.messages,
        sampling.seed,
        sampling.temperature,
        sampling.max_tokens,
        sampling.n,
    )


def _plan(call: ProviderCall, default_tokens: int, key: str) -> list[_ChoiceState]:
    """Each choice's text state, drawn from ``key`` (the call's ``_prompt_key``)."""
    sampling = call.sampling
    limit = sampling.max_tokens if sampling.max_tokens is not None else default_tokens
    choices = []
    for index in range(sampling.n or 1):
        digest = hashlib.blake2b(f"{key}\x1f{index}".encode(), digest_size=8).digest()
        natural = sampling.max_tokens is None
        state = _ChoiceState(
            index, int.from_bytes(digest), limit, natural, sampling.stop, bool(sampling.logprobs)
        )
        state.tool = _forced_tool_call(call, state)
        choices.append(state)
    return choices


def _forced_tool_call(call: ProviderCall, state: _ChoiceState) -> ToolCall | None:
    """A tool call when the tool choice demands one; arguments fill the schema's string properties."""
    request = call.request
    mode = request.tool_choice.mode
    if not request.tools or mode not in (ToolChoiceMode.REQUIRED, ToolChoiceMode.FUNCTION):
        return None
    name = request.tool_choice.name if mode is ToolChoiceMode.FUNCTION else request.tools[0].name
    spec = next((t for t in request.tools if t.name == name), request.tools[0])
    properties = spec.parameters.get("properties", {}) if isinstance(spec.parameters, dict) else {}
    args = {prop: _VOCAB[state.rng.randrange(len(_VOCAB))] for prop in properties}
    arguments = json.dumps(args, separators=(",", ":"))
    state.tokens = tokenizer.count_text(arguments)
    return ToolCall(id=f"call_{state.rng.getrandbits(48):012x}", name=spec.name, arguments_json=arguments)


def _usage(call: ProviderCall, choices: list[_ChoiceState]) -> TokenUsage:
    request = call.request
    tool_tokens = sum(
        tokenizer.count_text(t.name)
        + tokenizer.count_text(t.description)
        + tokenizer.count_text(json.dumps(t.parameters))
        for t in request.tools
    )
    return TokenUsage(
        input_tokens=tokenizer.count_messages(request.messages) + tool_tokens,
        output_tokens=sum(c.tokens for c in choices),
    )


def _embedding(model: str, text: str, dims: int) -> tuple[float, ...]:
    digest = hashlib.blake2b(f"{model}\x1f{text}".encode(), digest_size=8).digest()
    rng = random.Random(int.from_bytes(digest))
    raw = [rng.gauss(0.0, 1.0) for _ in range(dims)]
    norm = math.sqrt(sum(v * v for v in raw)) or 1.0
    return tuple(v / norm for v in raw)
