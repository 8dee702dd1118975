"""Hypothesis strategies for handoff request bodies, hostile ones included.

Bodies are built as JSON text so they can hold what Python's json.dumps will not
produce from objects: lone surrogates (escaped, valid JSON), NaN/Infinity, numbers
past float range and nesting deeper than the parser's limit.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from hypothesis import strategies as st

FIELD_NAMES = ("topic", "key", "value", "value_b64", "headers", "timestamp_ms")
_DEEP = "__deep__"

# Any code point, surrogates included, and the classic troublemakers.
hostile_text = st.one_of(
    st.text(st.characters(exclude_categories=()), max_size=12),
    st.sampled_from(["\ud800", "a\udfff", "x\n", ".", "..", "", "a" * 250, "x-relay-id",
                     "X-Relay-Foo", "\x00", "é", "😀"]),
)
numbers = st.one_of(
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([2**63 - 1, 2**63, -1, 0]),
)
json_values = st.recursive(
    st.none() | st.booleans() | numbers | hostile_text | st.just(_DEEP),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(hostile_text, inner, max_size=3),
    max_leaves=12,
)


def topics(valid: list[str]) -> st.SearchStrategy[Any]:
    return st.one_of(st.sampled_from(valid), hostile_text, st.integers(), st.none())


def items(valid_topics: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {},
        optional={
            "topic": topics(valid_topics),
            "key": st.none() | hostile_text | st.integers(),
            "value": json_values,
            "value_b64": st.one_of(st.binary(max_size=20).map(lambda b: base64.b64encode(b)
                                                              .decode()),
                                   hostile_text, st.integers()),
            "headers": st.one_of(
                st.dictionaries(hostile_text, hostile_text | numbers | st.none(), max_size=3),
                st.lists(hostile_text, max_size=2)),
            "timestamp_ms": st.one_of(numbers, st.booleans(), st.none()),
            "colour": st.just("red"),
        },
    )


def plausible_items(valid_topics: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Records shaped right, hostile inside: most are accepted, so they reach the producer."""
    value = st.one_of(
        st.fixed_dictionaries({"value": json_values}),
        st.fixed_dictionaries({"value_b64": st.binary(max_size=30).map(
            lambda b: base64.b64encode(b).decode())}),
    )
    optional = st.fixed_dictionaries(
        {},
        optional={
            "topic": st.sampled_from(valid_topics),
            "key": st.none() | hostile_text,
            "headers": st.dictionaries(hostile_text, hostile_text, max_size=3),
            "timestamp_ms": st.integers(min_value=0, max_value=2**63),
        },
    )
    return st.tuples(value, optional).map(lambda parts: {**parts[0], **parts[1]})


@st.composite
def bodies(draw: st.DrawFn, valid_topics: list[str]) -> bytes:
    """A JSON {"records": [...]} body; some values nested deeper than the parser allows."""
    records = draw(st.lists(plausible_items(valid_topics) | items(valid_topics), min_size=1,
                            max_size=4))
    text = json.dumps({"records": records}, allow_nan=True)  # escapes surrogates: valid JSON
    depth = draw(st.sampled_from([1, 5, 200, 3000]))
    return text.replace(json.dumps(_DEEP), "[" * depth + "]" * depth).encode()
