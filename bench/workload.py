"""The workload both targets serve: the requests the load generator sends and the sizes of the answers.

The echo server and the load generator share these constants so that the bare server sends
answers of the same shape and size as omnirelay's `local` provider does for these requests.
"""

from __future__ import annotations

from typing import Final

from omnirelay_client.v1 import completion_pb2, stream_pb2, types_pb2

MODEL: Final = "local-small"
PROMPT: Final = "benchmark prompt"
# The local provider generates exactly max_tokens tokens when it is set.
UNARY_MAX_TOKENS: Final = 16
STREAM_MAX_TOKENS: Final = 200
# route_started, one text_delta per token, finish, usage, done.
STREAM_EVENTS: Final = STREAM_MAX_TOKENS + 4

MODES: Final = ("unary", "stream")


def complete_request(max_tokens: int) -> completion_pb2.CompleteRequest:
    """One user message and a max_tokens bound: the smallest request that fixes the answer's size."""
    return completion_pb2.CompleteRequest(
        model=MODEL,
        messages=[types_pb2.Message(role=types_pb2.ROLE_USER, content=[types_pb2.ContentPart(text=PROMPT)])],
        sampling=types_pb2.SamplingParams(max_tokens=max_tokens),
    )


def unary_request() -> completion_pb2.CompleteRequest:
    return complete_request(UNARY_MAX_TOKENS)


def stream_request() -> stream_pb2.StreamCompleteRequest:
    return stream_pb2.StreamCompleteRequest(request=complete_request(STREAM_MAX_TOKENS))
