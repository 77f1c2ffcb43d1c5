"""The JSON-schema regex builder: exact json.dumps formatting, both directions, property-tested."""

from __future__ import annotations

import json
import random
import re
from decimal import Decimal
from typing import Literal, Optional

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field

from agent.decoding.schema_regex import (
    NUMBER,
    UnsupportedSchemaError,
    escape_literal,
    integer_range_regex,
    json_schema_regex,
    number_range_regex,
)
from agent.decoding.token_index import TokenVocabulary, indexed_automaton
from tools.caption import CaptionImageInput
from tools.generate import GenerateImageInput
from tools.search import SearchImagesInput
from tools.speak import SpeakInput


class Point(BaseModel):
    x: int
    y: float = 0.0


class Drawing(BaseModel):
    """Nested objects, $ref/$defs, arrays with bounds, enums of mixed types, const."""

    title: str = Field(max_length=12)
    points: list[Point] = Field(min_length=1, max_length=3)
    origin: Optional[Point] = None
    tags: list[str] = Field(default_factory=list, max_length=2)
    style: Literal["solid", 3, None, True] = "solid"
    visible: bool = True
    version: Literal["v1"] = "v1"


SCHEMAS = {
    "caption_image": CaptionImageInput.model_json_schema(),
    "generate_image": GenerateImageInput.model_json_schema(),
    "search_images": SearchImagesInput.model_json_schema(),
    "speak": SpeakInput.model_json_schema(),
    "drawing": Drawing.model_json_schema(),
    "plain": {
        "type": "object",
        "properties": {
            "anything": {},
            "number": {"type": "number"},
            "integer": {"type": "integer", "exclusiveMinimum": -5, "exclusiveMaximum": 1000},
            "choice": {"type": ["string", "null"]},
            "nothing": {"type": "null"},
        },
        "required": ["number"],
    },
}


# --- a value strategy for the supported subset -------------------------------------------------

_PLAIN_NUMBER = re.compile(NUMBER)


def _resolve(schema: dict, root: dict) -> dict:
    while "$ref" in schema:
        name = schema["$ref"].split("/")[-1]
        rest = {k: v for k, v in schema.items() if k != "$ref"}
        schema = {**root["$defs"][name], **rest}
    return schema


def _decimal(low: Decimal | None, high: Decimal | None) -> st.SearchStrategy:
    low = Decimal(-999_999) if low is None else max(low, Decimal(-999_999))
    high = Decimal(999_999) if high is None else min(high, Decimal(999_999))
    micro = st.integers(int(low * 1_000_000), int(high * 1_000_000))
    places = st.sampled_from([0, 1, 2, 3, 6])
    values = st.tuples(micro, places).map(lambda mp: round(mp[0] / 1_000_000, mp[1]))
    # only texts json.dumps writes in plain notation and that round-trip (the documented subset)
    return values.filter(lambda v: low <= Decimal(str(v)) <= high and _PLAIN_NUMBER.fullmatch(json.dumps(v)))


def values_for(schema: dict, root: dict) -> st.SearchStrategy:
    schema = _resolve(schema, root)
    text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=20)
    if schema == {}:
        scalar = st.one_of(st.none(), st.booleans(), st.integers(-1000, 1000), text)
        return st.one_of(scalar, st.lists(scalar, max_size=3), st.dictionaries(text, scalar, max_size=2))
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "anyOf" in schema:
        return st.one_of([values_for(option, root) for option in schema["anyOf"]])
    kind = schema.get("type")
    if isinstance(kind, list):
        return st.one_of([values_for({**schema, "type": k}, root) for k in kind])
    if kind == "object":
        properties = schema.get("properties", {})
        required = set(schema.get("required", []))

        @st.composite
        def build(draw):
            out = {}
            for name, sub in properties.items():
                if name in required or draw(st.booleans()):
                    out[name] = draw(values_for(sub, root))
            return out

        return build()
    if kind == "array":
        return st.lists(
            values_for(schema.get("items", {}), root),
            min_size=schema.get("minItems", 0),
            max_size=schema.get("maxItems", 4),
        )
    if kind == "string":
        return st.text(
            st.characters(codec="utf-8", exclude_categories=["Cs"]),
            min_size=schema.get("minLength", 0),
            max_size=schema.get("maxLength", 30),
        )
    if kind == "integer":
        low = schema.get("minimum", schema.get("exclusiveMinimum", -(10**12) - 1) + 1)
        high = schema.get("maximum", schema.get("exclusiveMaximum", 10**12 + 1) - 1)
        step = schema.get("multipleOf", 1)
        return st.integers(-(-low // step), high // step).map(lambda n: n * step)
    if kind == "number":
        low, high = schema.get("minimum"), schema.get("maximum")
        as_decimal = lambda v: None if v is None else Decimal(str(v))  # noqa: E731
        return st.one_of(
            st.integers(
                -(10**9) if low is None else int(low + 0.999999), 10**9 if high is None else int(high)
            ),
            _decimal(as_decimal(low), as_decimal(high)),
        )
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    raise AssertionError(f"no strategy for {schema}")


@pytest.mark.parametrize("name", sorted(SCHEMAS))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_valid_value_dumps_to_a_matching_text(name, data):
    schema = SCHEMAS[name]
    pattern = re.compile(json_schema_regex(schema))
    value = data.draw(values_for(schema, schema))
    jsonschema.validate(value, schema)  # the strategy itself is honest
    text = json.dumps(value, ensure_ascii=False)
    assert pattern.fullmatch(text), text


# --- the other direction: random walks through the indexed automaton ---------------------------

_EOS = 256
_MULTI = [b'", "', b'": ', b"null", b"true", b"\\n", b"\xc3\xa9", b"\xe2\x82\xac", b"\xf0\x9f\x98\x80"]


def _byte_vocabulary() -> TokenVocabulary:
    pieces = [bytes([b]) for b in range(256)] + [b""] + _MULTI
    allowed = frozenset(i for i in range(len(pieces)) if i != _EOS)
    return TokenVocabulary("bytes-test", len(pieces), (_EOS,), tuple(pieces), allowed)


BYTE_VOCABULARY = _byte_vocabulary()


@pytest.mark.parametrize("name", sorted(SCHEMAS))
@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_every_text_the_automaton_accepts_round_trips(name, seed):
    schema = SCHEMAS[name]
    automaton = indexed_automaton(json_schema_regex(schema), BYTE_VOCABULARY)
    rng = random.Random(seed)
    state, out, steps = automaton.initial, b"", 0
    while True:
        tokens, next_dist = automaton.tokens[state], automaton.next_dist[state]
        if state in automaton.finals and (rng.random() < 0.3 or len(tokens) == 0):
            break
        # pick a next *state* uniformly (so structure, not the many string characters, drives the
        # walk), wandering freely at first and then only moving closer to the end
        options = sorted(
            {
                int(n)
                for n, d in zip(automaton.nexts[state], next_dist, strict=True)
                if steps < 40 or d < automaton.dist[state]
            }
        )
        target = rng.choice(options)
        pick = rng.choice([i for i, n in enumerate(automaton.nexts[state]) if n == target])
        out += BYTE_VOCABULARY.token_bytes[int(tokens[pick])]
        state = int(automaton.nexts[state][pick])
        steps += 1
    text = out.decode("utf-8")
    value = json.loads(text)
    jsonschema.validate(value, schema)
    # A free-form object may repeat a key (a documented limit of regular languages); the exact
    # round trip holds whenever keys are unique.
    if not _has_repeated_key(text):
        assert json.dumps(value, ensure_ascii=False) == text


def _has_repeated_key(text: str) -> bool:
    repeated = False

    def check(pairs):
        nonlocal repeated
        keys = [k for k, _ in pairs]
        repeated = repeated or len(keys) != len(set(keys))
        return dict(pairs)

    json.loads(text, object_pairs_hook=check)
    return repeated


def test_repeated_key_check_can_fail():
    assert _has_repeated_key('{"a": {"x": 1, "x": 2}}')
    assert not _has_repeated_key('{"a": {"x": 1, "y": 2}}')


# --- ranges, escapes and errors ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("low", "high"),
    [(None, None), (0, None), (5, None), (-5, None), (None, -7), (None, 12), (13, 13), (-57, 1234)],
)
def test_integer_ranges_are_exact(low, high):
    pattern = re.compile(integer_range_regex(low, high))
    for n in range(-1500, 1500):
        assert bool(pattern.fullmatch(str(n))) == (
            (low is None or n >= low) and (high is None or n <= high)
        ), n
    assert not pattern.fullmatch("-0") and not pattern.fullmatch("007")


@pytest.mark.parametrize(
    ("low", "high", "inside", "outside"),
    [
        (
            0.5,
            2.0,
            ["0.5", "0.75", "1", "1.0", "1.999999", "2", "2.0"],
            ["0.4", "0.499999", "2.000001", "3", "-1"],
        ),
        (0, 1, ["0", "0.0", "-0.0", "0.0001", "0.5", "1.0"], ["0.00001", "1e-05", "1.01", "-0.5"]),
        (-10, -2.5, ["-10", "-10.0", "-2.5", "-3", "-7.125"], ["-2.4", "-10.5", "0", "2.5"]),
        (12.5, 12.5, ["12.5"], ["12.4", "13", "12"]),
        (None, None, ["0", "-3", "1.5", "123456.123456", "0.0001"], ["1.50", "01", "-0", "1e5", "0.1000000"]),
    ],
)
def test_number_ranges(low, high, inside, outside):
    pattern = re.compile(number_range_regex(low, high))
    for text in inside:
        assert pattern.fullmatch(text), text
        assert json.dumps(json.loads(text)) == text
    for text in outside:
        assert not pattern.fullmatch(text), text


def test_strings_allow_exactly_the_json_dumps_escapes():
    pattern = re.compile(json_schema_regex({"type": "string"}))
    for value in [
        "plain",
        'qu"ote',
        "back\\slash",
        "tab\tnew\nline\r",
        "\x00\x1f\x7f\b\f",
        "é € 😀",
        "\u2028",
    ]:
        assert pattern.fullmatch(json.dumps(value, ensure_ascii=False)), value
    for text in ['"\\/"', '"\\u0041"', '"\\u001F"', '"raw\nnewline"', '"unterminated', '"a"b"']:
        assert not pattern.fullmatch(text), text


def test_optional_properties_keep_schema_order_and_separators():
    schema = {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}, "c": {"type": "integer"}},
        "required": ["b"],
    }
    pattern = re.compile(json_schema_regex(schema))
    good = ['{"b": 1}', '{"a": 1, "b": 2}', '{"b": 2, "c": 3}', '{"a": 1, "b": 2, "c": 3}']
    bad = [
        "{}",
        '{"a": 1}',
        '{"b": 2, "a": 1}',
        '{"b":2}',
        '{"b": 2,"c": 3}',
        '{"b": 2, "d": 3}',
        '{ "b": 2}',
    ]
    assert all(pattern.fullmatch(text) for text in good)
    assert not any(pattern.fullmatch(text) for text in bad)


def test_an_enum_of_bounded_numbers_allows_only_its_values():
    """Bounds next to an ``enum``/``const`` narrow nothing: the listed values are the only ones."""
    pattern = re.compile(json_schema_regex({"type": "integer", "enum": [1, 2, 4], "minimum": 1, "maximum": 4}))
    assert [n for n in range(-3, 10) if pattern.fullmatch(str(n))] == [1, 2, 4]
    const = re.compile(json_schema_regex({"type": "number", "const": 0.5, "minimum": 0, "maximum": 1}))
    assert const.fullmatch("0.5")
    assert not any(const.fullmatch(text) for text in ["0", "0.25", "1", "1.0"])


def test_the_string_cap_bounds_free_strings_and_keeps_tighter_limits():
    schema = {
        "type": "object",
        "properties": {"free": {"type": "string"}, "short": {"type": "string", "maxLength": 3}},
        "required": ["free", "short"],
    }
    capped = re.compile(json_schema_regex(schema, max_string_length=5))
    assert capped.fullmatch('{"free": "abcde", "short": "abc"}')
    assert not capped.fullmatch('{"free": "abcdef", "short": "abc"}')  # the cap
    assert not capped.fullmatch('{"free": "a", "short": "abcd"}')  # the schema's own, tighter limit
    assert re.fullmatch(json_schema_regex(schema), '{"free": "%s", "short": ""}' % ("x" * 500))


@pytest.mark.parametrize(("low", "high", "step"), [(64, 2048, 8), (-20, 20, 5), (1, 9, 10), (3, 3, 3)])
def test_multiples_in_a_range_are_exactly_the_integers_matched(low, high, step):
    schema = {"type": "integer", "minimum": low, "maximum": high, "multipleOf": step}
    if not range(-(-low // step) * step, high + 1, step):
        with pytest.raises(UnsupportedSchemaError, match="no such integer"):
            json_schema_regex(schema)
        return
    pattern = re.compile(json_schema_regex(schema))
    for n in range(low - 3 * step - 10, high + 3 * step + 10):
        assert bool(pattern.fullmatch(str(n))) == (low <= n <= high and n % step == 0), n
    assert not pattern.fullmatch(f"{low}.0") and not pattern.fullmatch(f"0{abs(high)}")


def test_multiples_make_a_small_automaton():
    """Image sides (250 values) cost a third of the states of their plain alternation."""
    from agent.decoding.schema_regex import factored_words_regex

    words = [str(v) for v in range(64, 2049, 8)]
    factored = indexed_automaton(factored_words_regex(words), BYTE_VOCABULARY)
    plain = indexed_automaton("(" + "|".join(words) + ")", BYTE_VOCABULARY)
    assert len(factored.dist) * 2 < len(plain.dist)
    pattern = re.compile(factored_words_regex(["a.b", "a", "ab", "b-c"]))
    assert [w for w in ["a.b", "a", "ab", "b-c", "axb", "b", ""] if pattern.fullmatch(w)] == ["a.b", "a", "ab", "b-c"]


def test_escape_literal_round_trips_specials():
    text = 'a.b*c+d?e(f)g[h]i{j}k|l^m$n\\o#p&q-r~s\n\t"'
    assert re.fullmatch(escape_literal(text), text)


@pytest.mark.parametrize(
    ("schema", "construct"),
    [
        ({"type": "string", "pattern": "^a+$"}, "'pattern'"),
        ({"type": "integer", "multipleOf": 3}, "multipleOf without both a minimum and a maximum"),
        ({"type": "integer", "multipleOf": 3, "minimum": 0, "maximum": 30000}, "10001 values, over 4096"),
        ({"type": "number", "multipleOf": 0.5, "minimum": 0, "maximum": 3}, "multipleOf on a number"),
        ({"not": {"type": "null"}}, "'not'"),
        ({"type": "array", "items": {"type": "integer"}, "uniqueItems": True}, "uniqueItems"),
        ({"$ref": "http://example.com/schema"}, "Invalid reference path"),
        ({"allOf": [{"type": "integer"}, {"minimum": 1}]}, "Unsupported JSON Schema structure"),
        ({"type": "date"}, "Unsupported type: date"),
        ({"type": "object", "required": ["x"]}, "required properties without a schema"),
    ],
)
def test_unsupported_constructs_are_named(schema, construct):
    """Constructs the regex cannot express exactly are refused with the construct named."""
    with pytest.raises(UnsupportedSchemaError, match=re.escape(construct)) as info:
        json_schema_regex(schema, where="tool 'demo'")
    assert "tool 'demo'" in str(info.value)


def _all_short_number_texts(max_length: int = 5) -> list[str]:
    texts, frontier = [], [""]
    for _ in range(max_length):
        frontier = [t + c for t in frontier for c in "0123456789.-"]
        texts.extend(frontier)
    return texts


SHORT_NUMBER_TEXTS = _all_short_number_texts()


@pytest.mark.parametrize(("low", "high"), [(None, None), (0.5, 2.0), (-10, -2.5), (0, None), (None, 0.25)])
def test_every_short_number_text_matched_round_trips_and_is_in_range(low, high):
    pattern = re.compile(number_range_regex(low, high))
    matched = [t for t in SHORT_NUMBER_TEXTS if pattern.fullmatch(t)]
    assert matched
    for text in matched:
        value = json.loads(text)
        assert json.dumps(value) == text, text
        assert (low is None or value >= low) and (high is None or value <= high), text


def test_recursive_references_are_expanded_to_a_bounded_depth():
    schema = {"$ref": "#/$defs/Node", "$defs": {"Node": {"properties": {"next": {"$ref": "#/$defs/Node"}}}}}
    pattern = re.compile(json_schema_regex(schema))
    assert pattern.fullmatch('{"next": {"next": {}}}')
    assert not pattern.fullmatch('{"next": {"next": {"next": {"next": {"next": {}}}}}}')
    assert not pattern.fullmatch('{"next":{}}')  # json.dumps spacing only


def test_maps_of_schemas_are_not_taken_for_free_form_values():
    """``properties: {}`` is an empty map of properties, not an empty (free-form) schema."""
    assert re.fullmatch(json_schema_regex({"type": "object", "properties": {}}), "{}")
    assert not re.fullmatch(json_schema_regex({"type": "object", "properties": {}}), '{"a": 1}')
    schema = {"type": "object", "properties": {"x": {"$ref": "#/$defs/Empty"}}, "$defs": {"Empty": {}}}
    assert re.fullmatch(json_schema_regex(schema), '{"x": [1, "a"]}')
