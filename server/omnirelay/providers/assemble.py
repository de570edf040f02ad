"""Fold a stream of chunks into the complete answer.

Tool-call arguments arrive as JSON fragments spread over many chunks; here
they are joined per (choice, call index) into one complete JSON document.
Used to answer a unary call from a stream, and by tests to check a replayed
stream against the unary answer.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from omnirelay.domain import (
    Choice,
    CompletionResult,
    FinishChunk,
    FinishReason,
    StreamChunk,
    TextDelta,
    TokenLogprob,
    TokenUsage,
    ToolCall,
    ToolCallDelta,
    UsageChunk,
)


@dataclass
class _Call:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


@dataclass
class _Choice:
    text: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    refusal: list[str] = field(default_factory=list)
    calls: dict[int, _Call] = field(default_factory=dict)
    finish: FinishReason = FinishReason.UNKNOWN
    logprobs: tuple[TokenLogprob, ...] | None = None


class Assembler:
    """Feed chunks in order; ``result`` gives the answer so far."""

    def __init__(self) -> None:
        self._choices: dict[int, _Choice] = {}
        self.usage = TokenUsage()
        self.upstream_request_id = ""

    def _choice(self, index: int) -> _Choice:
        choice = self._choices.get(index)
        if choice is None:
            choice = self._choices[index] = _Choice()
        return choice

    def add(self, chunk: StreamChunk) -> None:
        if isinstance(chunk, TextDelta):
            choice = self._choice(chunk.choice_index)
            if chunk.text:
                choice.text.append(chunk.text)
            if chunk.reasoning:
                choice.reasoning.append(chunk.reasoning)
            if chunk.refusal:
                choice.refusal.append(chunk.refusal)
        elif isinstance(chunk, ToolCallDelta):
            call = self._choice(chunk.choice_index).calls.setdefault(chunk.index, _Call())
            call.id = call.id or chunk.id
            call.name = call.name or chunk.name
            if chunk.arguments_delta:
                call.arguments.append(chunk.arguments_delta)
        elif isinstance(chunk, FinishChunk):
            choice = self._choice(chunk.choice_index)
            choice.finish = chunk.reason
            choice.logprobs = chunk.logprobs
        elif isinstance(chunk, UsageChunk):
            self.usage = chunk.usage

    def extend(self, chunks: Iterable[StreamChunk]) -> Assembler:
        for chunk in chunks:
            self.add(chunk)
        return self

    def result(self) -> CompletionResult:
        choices = tuple(
            Choice(
                index=index,
                text="".join(c.text),
                finish_reason=c.finish,
                tool_calls=tuple(
                    ToolCall(call.id, call.name, "".join(call.arguments) or "{}")
                    for _, call in sorted(c.calls.items())
                ),
                reasoning="".join(c.reasoning),
                refusal="".join(c.refusal),
                logprobs=c.logprobs,
            )
            for index, c in sorted(self._choices.items())
        )
        return CompletionResult(choices, self.usage, self.upstream_request_id)
