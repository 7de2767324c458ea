"""Hypothesis strategies for chat completion bodies: well-shaped ones, and well-shaped ones with one field, at any
depth, replaced by any JSON value (a list for a role, an object for a name, a number for a tool call's arguments,
2^64 for max_tokens), so every field the gateway reads is tried with every type."""

import copy

from hypothesis import strategies as st

json_scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text()
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
edge_text = st.text(
    alphabet=st.characters(codec="utf-8", categories=["L", "M", "N", "P", "S", "Z", "Cf", "Co"]), max_size=200
) | st.sampled_from(["", "\u202e\u2066", "\ufeff", "𝕳𝖊𝖑𝖑𝖔", "a" * 5000, "\x00", "🦜" * 50, "globex"])
numbers = st.integers(-(2**63), 2**64) | st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from([0, -1])
short_text = st.text(max_size=20)
roles = st.sampled_from(["user", "user", "system", "assistant", "tool", "developer", "function"])


def _object(required: dict, optional: dict | None = None):
    return st.fixed_dictionaries(required, optional=optional or {})


text_part = _object({"type": st.just("text"), "text": edge_text}, {"cache_control": st.just({"type": "ephemeral"})})
content_part = text_part | st.sampled_from(
    [
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png", "detail": "low"}},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "file", "file": {"file_id": "file-abc"}},
        {"type": "refusal", "refusal": "No."},
    ]
)
tool_call = _object(
    {
        "id": short_text,
        "type": st.just("function"),
        "function": _object({"name": short_text, "arguments": st.sampled_from(["{}", '{"a": 1}', "not json"])}),
    }
)
message = _object(
    {"role": roles, "content": edge_text | st.lists(content_part, max_size=3)},
    {
        "name": short_text,
        "tool_calls": st.lists(tool_call, min_size=1, max_size=2),
        "tool_call_id": short_text,
    },
)
function_definition = _object(
    {"name": short_text},
    {"description": short_text, "parameters": st.just({"type": "object"}), "strict": st.booleans()},
)
OPTIONAL_FIELDS = {
    "max_tokens": st.integers(1, 4096),
    "max_completion_tokens": st.integers(1, 4096),
    "temperature": st.floats(0, 2),
    "top_p": st.floats(0, 1),
    "presence_penalty": st.floats(-2, 2),
    "frequency_penalty": st.floats(-2, 2),
    "n": st.integers(1, 3),
    "best_of": st.integers(1, 3),
    "seed": st.integers(-(2**63), 2**63 - 1),
    "stream": st.booleans(),
    "stream_options": _object({"include_usage": st.booleans()}),
    "metadata": st.dictionaries(st.sampled_from(["task_type", "user_tier", "x"]), short_text, max_size=3),
    "tools": st.lists(_object({"type": st.just("function"), "function": function_definition}), max_size=2),
    "tool_choice": st.sampled_from(["auto", "none", "required"])
    | _object({"type": st.just("function"), "function": _object({"name": short_text})}),
    "parallel_tool_calls": st.booleans(),
    "functions": st.lists(function_definition, max_size=2),
    "function_call": st.sampled_from(["auto", "none"]) | _object({"name": short_text}),
    "stop": short_text | st.lists(short_text, max_size=4),
    "logprobs": st.booleans(),
    "top_logprobs": st.integers(0, 20),
    "logit_bias": st.dictionaries(st.sampled_from(["50256", "1"]), st.integers(-100, 100), max_size=2),
    "response_format": st.sampled_from(
        [
            {"type": "text"},
            {"type": "json_object"},
            {"type": "json_schema", "json_schema": {"name": "answer", "schema": {"type": "object"}}},
        ]
    ),
    "prediction": _object({"type": st.just("content"), "content": short_text | st.lists(text_part, max_size=2)}),
    "modalities": st.just(["text"]),
    "service_tier": st.sampled_from(["auto", "default", "flex"]),
    "reasoning_effort": st.sampled_from(["low", "medium", "high"]),
    "store": st.booleans(),
    "user": edge_text,
    "x-unknown-field": json_values,
}


def well_shaped_bodies(model: str):
    """Right in type and mostly in range; some still break a rule (a tool message without tool_call_id, an image in
    a system message, stream_options without stream)."""
    return st.fixed_dictionaries(
        {"model": st.just(model), "messages": st.lists(message, min_size=1, max_size=4)}, optional=OPTIONAL_FIELDS
    )


def paths_in(value, prefix: tuple = ()) -> list[tuple]:
    """The path of every field and item of a JSON document, depth first."""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    paths = []
    for key, child in items:
        paths.append((*prefix, key))
        paths.extend(paths_in(child, (*prefix, key)))
    return paths


def replaced(body: dict, path: tuple, wrong) -> dict:
    body = copy.deepcopy(body)
    container = body
    for key in path[:-1]:
        container = container[key]
    container[path[-1]] = wrong
    return body


def _with_one_field_replaced(body: dict):
    wrong = json_values | numbers | edge_text
    return st.tuples(st.sampled_from(paths_in(body)), wrong).map(lambda choice: replaced(body, *choice))


def right_or_one_field_wrong(documents):
    """A third of the documents as they are, the others with one field or item, at any depth, replaced by any
    JSON value."""
    broken = documents.flatmap(_with_one_field_replaced)
    return documents | broken | broken


def chat_bodies(model: str):
    return right_or_one_field_wrong(well_shaped_bodies(model))
