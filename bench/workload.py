"""The workload both targets serve: the requests the load generator sends and the sizes of the answers.

The echo server and the load generator share these constants so that the bare server sends
answers of the same shape and size as omnirelay's `local` provider does for these requests.

The simulator scenario asks the same of omnirelay's OpenAI adapter in front of the provider
simulator (`omnirelay sim`) and of the simulator called directly: the same prompt, and answers of
the same number of tokens, which ride in the simulator's model name (`sim-model+tokens=16`).
"""

from __future__ import annotations

import json
from typing import Any, Final

from omnirelay_client.v1 import completion_pb2, stream_pb2, types_pb2

MODEL: Final = "local-small"
PROMPT: Final = "benchmark prompt"
# The local provider generates exactly max_tokens tokens when it is set.
UNARY_MAX_TOKENS: Final = 16
STREAM_MAX_TOKENS: Final = 200
# route_started, one text_delta per token, finish, usage, done.
STREAM_EVENTS: Final = STREAM_MAX_TOKENS + 4

MODES: Final = ("unary", "stream")

# The provider name omnirelay is configured with for the simulator, and its API key (the simulator
# accepts any; the adapter sends one as it would to OpenAI).
SIM_PROVIDER: Final = "sim"
SIM_API_KEY: Final = "sk-bench"


# The streams scenario: streams held open by a slow upstream, 20 tokens each. The local provider
# paced at 2 tokens per second (set in omnirelay's environment) keeps a stream open ~10 s; the
# simulator's model pauses 200 ms between tokens (~4 s).
HOLD_MAX_TOKENS: Final = 20
HOLD_LOCAL_TOKENS_PER_SECOND: Final = 2
HOLD_SIM_MODEL: Final = f"{SIM_PROVIDER}/sim-model+itl=200+tokens={HOLD_MAX_TOKENS}"


def max_tokens(mode: str) -> int:
    return UNARY_MAX_TOKENS if mode == "unary" else STREAM_MAX_TOKENS


def sim_model(mode: str) -> str:
    """The simulator's model for a mode: it answers exactly the tokens the workload asks for."""
    return f"sim-model+tokens={max_tokens(mode)}"


def gateway_sim_model(mode: str) -> str:
    """The same model through omnirelay, in the direct `provider/model` form."""
    return f"{SIM_PROVIDER}/{sim_model(mode)}"


def complete_request(max_tokens: int, model: str = MODEL) -> completion_pb2.CompleteRequest:
    """One user message and a max_tokens bound: the smallest request that fixes the answer's size."""
    return completion_pb2.CompleteRequest(
        model=model,
        messages=[types_pb2.Message(role=types_pb2.ROLE_USER, content=[types_pb2.ContentPart(text=PROMPT)])],
        sampling=types_pb2.SamplingParams(max_tokens=max_tokens),
    )


def unary_request(model: str = MODEL) -> completion_pb2.CompleteRequest:
    return complete_request(UNARY_MAX_TOKENS, model)


def cached_unary_request(model: str = MODEL) -> completion_pb2.CompleteRequest:
    """The unary request made deterministic (temperature 0), which omnirelay caches by default.

    Every call after the first is then answered from the cache. The answer has as many tokens as
    the uncached request's, and about its size (the report's "Answer sizes" shows both).
    """
    request = unary_request(model)
    request.sampling.temperature = 0.0
    return request


def stream_request(model: str = MODEL) -> stream_pb2.StreamCompleteRequest:
    return stream_pb2.StreamCompleteRequest(request=complete_request(STREAM_MAX_TOKENS, model))


def openai_body(mode: str) -> bytes:
    """The Chat Completions request omnirelay's OpenAI adapter sends for the workload's request.

    Encoded once: the direct client, like the gRPC one, reuses one request for every call.
    """
    body: dict[str, Any] = {
        "model": sim_model(mode),
        "messages": [{"role": "user", "content": PROMPT}],
        "max_completion_tokens": max_tokens(mode),
    }
    if mode == "stream":
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    return json.dumps(body, separators=(",", ":")).encode()
