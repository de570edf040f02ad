"""Prompts and completions as text, for content logging and content tracing (both off by default)."""

from __future__ import annotations

from omnirelay_client.v1 import completion_pb2, types_pb2


def prompt_messages(request: completion_pb2.CompleteRequest) -> list[tuple[str, str]]:
    """(role, text) per message; images and tool calls are left out."""
    out = []
    for m in request.messages:
        role = types_pb2.Role.Name(m.role).removeprefix("ROLE_").lower()
        text = "".join(p.text for p in m.content if p.WhichOneof("part") == "text")
        out.append((role, text))
    return out


def response_text(response: completion_pb2.CompleteResponse) -> str:
    """The first choice's text (a unary answer)."""
    if not response.choices:
        return ""
    return "".join(p.text for p in response.choices[0].message.content if p.WhichOneof("part") == "text")


def finish_reasons(response: completion_pb2.CompleteResponse) -> tuple[str, ...]:
    return tuple(
        types_pb2.FinishReason.Name(c.finish_reason).removeprefix("FINISH_REASON_").lower()
        for c in response.choices
    )
