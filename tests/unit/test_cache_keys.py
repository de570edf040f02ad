"""Cache keys: equal exactly when the answer-deciding content is, whatever the spelling of the request."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from google.protobuf import json_format, struct_pb2

from omnirelay.cache.keys import cache_key, canonical
from omnirelay_client.v1 import completion_pb2, types_pb2

Request = completion_pb2.CompleteRequest
MODEL = "local-small"

# Tool parameters as a caller's JSON: the same schema with its keys in two orders.
PARAMS_A = '{"type": "object", "properties": {"query": {"type": "string"}, "limit": {"type": "integer"}}}'
PARAMS_B = '{"properties": {"limit": {"type": "integer"}, "query": {"type": "string"}}, "type": "object"}'


def params(text: str = PARAMS_A) -> struct_pb2.Struct:
    return json_format.Parse(text, struct_pb2.Struct())


def base() -> Request:
    """A request using most of what decides an answer."""
    return Request(
        model=MODEL,
        messages=[
            types_pb2.Message(role=types_pb2.ROLE_SYSTEM, content=[types_pb2.ContentPart(text="be brief")]),
            types_pb2.Message(role=types_pb2.ROLE_USER, content=[types_pb2.ContentPart(text="find harbors")]),
        ],
        tools=[types_pb2.Tool(name="search", description="search the web", parameters=params())],
        tool_choice=types_pb2.ToolChoice(mode=types_pb2.ToolChoice.MODE_AUTO),
        sampling=types_pb2.SamplingParams(temperature=0.0, max_tokens=64, stop=["\n\n"], seed=7),
    )


def key(request: Request, model: str = MODEL, tenant: str = "") -> str:
    return cache_key(request, model, tenant)


def base_dict() -> dict[str, Any]:
    return json_format.MessageToDict(base())


def test_key_names_the_model_in_clear_then_a_digest() -> None:
    model, digest = key(base()).split("|")
    assert model == MODEL
    assert len(digest) == 32
    int(digest, 16)
    assert key(base()) == key(base())


def test_fields_set_in_another_order_give_the_same_key() -> None:
    # The same request built from a dict whose keys (at every level) come in reverse order...
    def reverse(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: reverse(value[k]) for k in reversed(list(value))}
        if isinstance(value, list):
            return [reverse(v) for v in value]
        return value

    parsed = json_format.ParseDict(reverse(base_dict()), Request())
    assert parsed == base()
    assert key(parsed) == key(base())
    # ...and one whose fields were set one by one, the last first.
    built = Request()
    built.sampling.seed = 7
    built.sampling.stop.append("\n\n")
    built.sampling.max_tokens = 64
    built.sampling.temperature = 0.0
    built.tool_choice.mode = types_pb2.ToolChoice.MODE_AUTO
    built.tools.add(name="search", description="search the web").parameters.CopyFrom(params(PARAMS_B))
    first = built.messages.add(role=types_pb2.ROLE_SYSTEM)
    first.content.add(text="be brief")
    second = built.messages.add()
    second.content.add(text="find harbors")
    second.role = types_pb2.ROLE_USER
    built.model = MODEL
    assert key(built) == key(base())
    assert canonical(built) == canonical(base())


def test_tool_parameter_json_key_order_does_not_matter() -> None:
    a = base()
    b = base()
    b.tools[0].parameters.CopyFrom(params(PARAMS_B))
    assert key(a) == key(b)
    # A schema that really differs does change the key.
    c = base()
    c.tools[0].parameters.CopyFrom(params(PARAMS_A.replace('"integer"', '"number"')))
    assert key(c) != key(a)


def test_defaults_stated_explicitly_give_the_same_key_as_left_out() -> None:
    implicit = base()
    implicit.ClearField("tool_choice")
    explicit = base()
    explicit.ClearField("tool_choice")
    explicit.tool_choice.SetInParent()  # an empty ToolChoice
    explicit.sampling.n = 1
    explicit.sampling.logprobs = False
    explicit.sampling.top_logprobs = 0
    explicit.sampling.response_format.type = types_pb2.ResponseFormat.TYPE_TEXT
    assert explicit.HasField("tool_choice")
    assert key(explicit) == key(implicit)
    # Each one alone, too.
    restated: list[Callable[[Request], None]] = [
        lambda r: r.tool_choice.SetInParent(),
        lambda r: setattr(r.sampling, "n", 1),
        lambda r: setattr(r.sampling, "logprobs", False),
        lambda r: setattr(r.sampling, "top_logprobs", 0),
        lambda r: setattr(r.sampling.response_format, "type", types_pb2.ResponseFormat.TYPE_TEXT),
        lambda r: r.sampling.response_format.SetInParent(),
    ]
    for change in restated:
        one = base()
        one.ClearField("tool_choice")
        change(one)
        assert key(one) == key(implicit)


def test_an_empty_sampling_message_is_no_sampling() -> None:
    a = Request(model=MODEL, messages=base().messages)
    b = Request(model=MODEL, messages=base().messages)
    b.sampling.SetInParent()
    b.sampling.n = 1
    assert key(a) == key(b)


def test_non_default_values_of_the_defaulted_fields_change_the_key() -> None:
    keys = {key(base())}
    changes: list[Callable[[Request], None]] = [
        lambda r: setattr(r.sampling, "n", 2),
        lambda r: setattr(r.sampling, "logprobs", True),
        lambda r: setattr(r.sampling, "top_logprobs", 3),
        lambda r: setattr(r.sampling.response_format, "type", types_pb2.ResponseFormat.TYPE_JSON_OBJECT),
    ]
    for change in changes:
        changed = base()
        change(changed)
        keys.add(key(changed))
    assert len(keys) == 5


def test_alias_and_canonical_name_give_the_same_key_for_the_resolved_model() -> None:
    by_alias = base()
    by_alias.model = "fast"
    by_name = base()
    by_name.model = "local-small"
    assert key(by_alias, "local-small") == key(by_name, "local-small")


def test_routing_cache_and_attribution_options_do_not_change_the_key() -> None:
    plain = key(base(), tenant="acme")
    dressed = base()
    dressed.routing.allow_fallback = False
    dressed.routing.fallback_models.extend(["gpt-4o", "claude"])
    dressed.routing.strategy = types_pb2.RoutingOptions.STRATEGY_LOWEST_COST
    dressed.routing.sticky_key = "user-42"
    dressed.routing.strict_parameters = True
    dressed.cache.mode = types_pb2.CacheOptions.MODE_REFRESH
    dressed.cache.ttl.seconds = 30
    dressed.attribution.project = "acme"  # the tenant is passed apart; the field itself is not hashed
    dressed.attribution.user = "someone"
    dressed.attribution.tags["env"] = "test"
    assert key(dressed, tenant="acme") == plain


def test_canonical_does_not_change_the_request() -> None:
    request = base()
    request.routing.sticky_key = "k"
    request.sampling.n = 1
    before = request.SerializeToString()
    canonical(request)
    assert request.SerializeToString() == before


def _changes() -> dict[str, Callable[[Request], None]]:
    def message(r: Request) -> None:
        r.messages[1].content[0].text = "find lanterns"

    def tool_name(r: Request) -> None:
        r.tools[0].name = "lookup"

    def tool_added(r: Request) -> None:
        r.tools.add(name="fetch", parameters=params())

    def response_format(r: Request) -> None:
        r.sampling.response_format.type = types_pb2.ResponseFormat.TYPE_JSON_SCHEMA
        r.sampling.response_format.schema_name = "answer"
        r.sampling.response_format.json_schema.CopyFrom(params())

    return {
        "preset": lambda r: setattr(r, "preset", "precise"),
        "message text": message,
        "message role": lambda r: setattr(r.messages[0], "role", types_pb2.ROLE_USER),
        "tool name": tool_name,
        "tool added": tool_added,
        "tool strict": lambda r: setattr(r.tools[0], "strict", True),
        "tool choice required": lambda r: setattr(r.tool_choice, "mode", types_pb2.ToolChoice.MODE_REQUIRED),
        "tool choice none": lambda r: setattr(r.tool_choice, "mode", types_pb2.ToolChoice.MODE_NONE),
        "tool choice cleared": lambda r: r.ClearField("tool_choice"),
        "temperature": lambda r: setattr(r.sampling, "temperature", 0.5),
        "temperature unset": lambda r: r.sampling.ClearField("temperature"),
        "max_tokens": lambda r: setattr(r.sampling, "max_tokens", 65),
        "stop": lambda r: r.sampling.stop.append("END"),
        "seed": lambda r: setattr(r.sampling, "seed", 8),
        "top_p": lambda r: setattr(r.sampling, "top_p", 0.9),
        "response format json": lambda r: setattr(
            r.sampling.response_format, "type", types_pb2.ResponseFormat.TYPE_JSON_OBJECT
        ),
        "response format schema": response_format,
    }


def test_what_decides_the_answer_changes_the_key() -> None:
    original = key(base())
    keys = {"original": original}
    for name, change in _changes().items():
        changed = base()
        change(changed)
        keys[name] = key(changed)
        assert keys[name] != original, name
    keys["tenant"] = key(base(), tenant="other-tenant")
    keys["model"] = key(base(), model="gpt-4o")
    # Every change gives its own key, not just one different from the original.
    assert len(set(keys.values())) == len(keys)
    assert keys["model"].startswith("gpt-4o|")


def test_tenant_is_not_confused_with_the_model() -> None:
    # The separator keeps "a" + "bc" apart from "ab" + "c".
    digest = cache_key(base(), "bc", "a").split("|")[1]
    assert digest != cache_key(base(), "c", "ab").split("|")[1]
