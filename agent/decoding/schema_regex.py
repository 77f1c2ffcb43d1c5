"""Regular expressions that match exactly the ``json.dumps`` text of values valid for a JSON schema.

The tool protocol writes arguments as ``json.dumps(arguments, ensure_ascii=False)``, so the
constrained decoder must produce that formatting and nothing else: separators ``", "`` and
``": "``, object keys in schema order, strings escaped the way ``json.dumps`` escapes them.

:func:`json_schema_regex` builds the regex with ``outlines_core.json_schema.build_regex_from_schema``
(objects, arrays, ``enum``/``const``, ``anyOf``/``oneOf``, type lists, ``$ref``, string
lengths and formats) and fills the gaps that builder leaves for *exact* rendering; these are the
pieces kept here, each covered by the property tests in ``tests/unit/test_schema_regex.py``:

* **spacing**: outlines_core puts one whitespace pattern wherever JSON allows whitespace; it is
  given a private marker, which is then replaced by exactly ``json.dumps``'s spacing;
* **strings**: any character but ``"``, ``\\`` and control characters, plus exactly the escapes
  ``json.dumps(ensure_ascii=False)`` emits (``\\"``, ``\\\\``, ``\\b``, ``\\f``, ``\\n``,
  ``\\r``, ``\\t`` and ``\\u00XX`` with lowercase hex for other control characters); outlines_core
  also allows ``\\/``, which ``json.dumps`` never writes;
* **numbers**: only texts that survive ``json.loads`` then ``json.dumps`` unchanged: integers
  (``0``, ``-12``; never ``-0`` or leading zeros) and decimals in plain notation with at most 6
  digits before the point and at most 6 significant digits after it, no trailing zeros (``1.5``,
  ``0.25``, ``-3.0``, ``0.0001``), never exponent forms; and **numeric bounds**
  (``minimum``/``maximum``/``exclusiveMinimum``/``exclusiveMaximum``), which outlines_core ignores:
  :func:`integer_range_regex` and :func:`number_range_regex` write exact range regexes, so the
  bounds a tool declares (``Field(ge=..., le=...)``) are what the model can write; ``multipleOf``
  on an integer bounded on both sides (at most 4096 values, e.g. image sides) is listed as a
  factored set of words (:func:`factored_words_regex`);
* **free-form values** (the empty schema ``{}``): any scalar, or an array/object of scalars (the
  regex outlines_core 0.2 writes for them is not parenthesised inside objects).

Free strings are unbounded by default: the decoder's token budget, not a length cap, makes a
random model close them. Pass ``max_string_length`` to cap them anyway. ``pattern``,
``multipleOf`` on numbers, ``not``, ``if``, ``uniqueItems: true`` and a few more are refused with the
construct named (:class:`UnsupportedSchemaError`), as are schemas outlines_core cannot read.

Known limit: a regular language cannot forbid repeated keys, so a free-form object may repeat a
key; ``json.loads`` keeps the last value and re-rendering that call drops the earlier one.
Objects with ``properties`` never repeat a key.
"""

from __future__ import annotations

import json
import math
import re
from decimal import Decimal
from typing import Any

from agent.core.errors import InputError

STRING_CHAR = r'([^"\\\x00-\x1f]|\\["\\bfnrt]|\\u00(0[0-7bef]|1[0-9a-f]))'
INTEGER = r"(0|-?[1-9][0-9]*)"
_FRACTION_DIGITS = 6
_INTEGER_DIGITS = 6
_POSITIVE_DECIMAL = r"([1-9][0-9]{0,5}\.(0|[0-9]{0,5}[1-9])|0\.(0|0{0,3}[1-9]([0-9]{0,4}[1-9])?))"
NUMBER = rf"({INTEGER}|-?{_POSITIVE_DECIMAL})"
BOOLEAN = r"(true|false)"
NULL = r"null"
SCALAR = rf'({NULL}|{BOOLEAN}|{NUMBER}|"{STRING_CHAR}*")'
ANY_VALUE = rf'({SCALAR}|\[\]|\[{SCALAR}(, {SCALAR})*\]|\{{\}}|\{{"{STRING_CHAR}*": {SCALAR}(, "{STRING_CHAR}*": {SCALAR})*\}})'

_METADATA = {
    "title", "description", "default", "examples", "format", "$schema", "$id", "$comment",
    "deprecated", "readOnly", "writeOnly", "contentMediaType", "contentEncoding",
}  # fmt: skip
_MAX_MULTIPLES = 4096
_REGEX_SPECIAL = set("\\.+*?()|[]{}^$#&-~")


class UnsupportedSchemaError(InputError):
    """A JSON schema uses a construct the regex builder cannot express."""


def escape_literal(text: str) -> str:
    """Escape ``text`` so that it matches itself in both Python ``re`` and Rust ``regex``."""
    out = []
    for char in text:
        if char in _REGEX_SPECIAL:
            out.append("\\" + char)
        elif char == "\n":
            out.append(r"\n")
        elif char == "\t":
            out.append(r"\t")
        elif char == "\r":
            out.append(r"\r")
        elif ord(char) < 0x20 or char == "\x7f":
            out.append(f"\\x{ord(char):02x}")
        else:
            out.append(char)
    return "".join(out)


def _alternatives(parts: list[str]) -> str:
    unique = list(dict.fromkeys(parts))
    return unique[0] if len(unique) == 1 else "(" + "|".join(unique) + ")"


def factored_words_regex(words: list[str]) -> str:
    """A regex matching exactly ``words``, factored so its automaton stays small.

    The words go into a trie whose nodes with equal remaining languages share one regex, and at
    each node the characters leading to the same remainder become one character class: the
    multiples of 8 from 64 to 2048, 250 words, make about a third as many automaton states as
    their plain alternation (the index is built state by state over the whole vocabulary).
    """
    trie: dict = {}
    for word in words:
        node = trie
        for char in word:
            node = node.setdefault(char, {})
        node[None] = {}

    def remainder(node: dict) -> str:
        by_rest: dict[str, list[str]] = {}
        for char, child in node.items():
            if char is not None:
                by_rest.setdefault(remainder(child), []).append(char)
        parts = []
        for rest, chars in by_rest.items():
            head = escape_literal(chars[0]) if len(chars) == 1 else "[" + "".join(escape_literal(c) for c in chars) + "]"
            parts.append(head + rest)
        if not parts:
            return ""
        body = parts[0] if len(parts) == 1 and None not in node else "(" + "|".join(parts) + ")"
        return body + "?" if None in node else body

    return remainder(trie)


# --- integer ranges -------------------------------------------------------------------------


def _digit_range(low: str, high: str) -> str:
    """Regex for the digit strings of equal length between ``low`` and ``high`` (inclusive)."""
    if not low:
        return ""
    if low[0] == high[0]:
        return escape_literal(low[0]) + _digit_range(low[1:], high[1:])
    rest = len(low) - 1
    parts = []
    low_tail_is_min = all(c == "0" for c in low[1:])
    high_tail_is_max = all(c == "9" for c in high[1:])
    first = int(low[0]) + (0 if low_tail_is_min else 1)
    last = int(high[0]) - (0 if high_tail_is_max else 1)
    if not low_tail_is_min:
        parts.append(low[0] + _digit_range(low[1:], "9" * rest))
    if first <= last:
        head = str(first) if first == last else f"[{first}-{last}]"
        parts.append(head + ("[0-9]" + (f"{{{rest}}}" if rest > 1 else "") if rest else ""))
    if not high_tail_is_max:
        parts.append(high[0] + _digit_range("0" * rest, high[1:]))
    return _alternatives(parts)


def _natural_range(low: int, high: int | None) -> str:
    """Regex for the decimal texts of the integers ``low <= n <= high`` (``high=None``: unbounded), low >= 0."""
    parts = []
    if high is not None and high < low:
        raise ValueError("empty range")
    if low == 0:
        parts.append("0")
        low = 1
        if high == 0:
            return "0"
    low_text = str(low)
    top_length = len(str(high)) if high is not None else len(low_text)
    for length in range(len(low_text), top_length + 1):
        start = low_text if length == len(low_text) else "1" + "0" * (length - 1)
        end = str(high) if high is not None and length == len(str(high)) else "9" * length
        parts.append(_digit_range(start, end))
    if high is None:
        parts.append(f"[1-9][0-9]{{{len(low_text)},}}")
    return _alternatives(parts)


def integer_range_regex(minimum: int | None, maximum: int | None) -> str:
    """Regex for the ``json.dumps`` texts of the integers in ``[minimum, maximum]`` (None: unbounded)."""
    if minimum is None and maximum is None:
        return INTEGER
    if minimum is not None and maximum is not None and maximum < minimum:
        raise UnsupportedSchemaError(f"integer range [{minimum}, {maximum}] is empty")
    parts = []
    # negative side: -n for n in [max(1, -maximum), -minimum]
    if minimum is None or minimum < 0:
        neg_low = 1 if maximum is None or maximum >= 0 else -maximum
        neg_high = None if minimum is None else -minimum
        parts.append("-" + _natural_range(neg_low, neg_high))
    if maximum is None or maximum >= 0:
        parts.append(_natural_range(max(0, minimum if minimum is not None else 0), maximum))
    return _alternatives(parts)


# --- decimal ranges -------------------------------------------------------------------------

_FRACTION = r"(0|[0-9]{0,5}[1-9])"
_SMALLEST_PLAIN = "000100"  # json.dumps writes values below 0.0001 in exponent form


def _digit_class(digits: list[int]) -> str:
    """``[a-b]`` for a run of consecutive digits, ``[13]`` otherwise, a bare digit for one."""
    if len(digits) == 1:
        return str(digits[0])
    if digits == list(range(digits[0], digits[-1] + 1)):
        return f"[{digits[0]}-{digits[-1]}]"
    return "[" + "".join(map(str, digits)) + "]"


def _fraction_between(low: str, high: str) -> str | None:
    """Fraction texts (``0`` or 1-6 digits without a trailing zero) whose value lies in [0.low, 0.high].

    ``low`` and ``high`` are 6-digit strings. Returns None when no text qualifies.
    """

    def suffix(i: int, tight_low: bool, tight_high: bool) -> str | None:
        first = int(low[i]) if tight_low else 0
        last = int(high[i]) if tight_high else 9
        if first > last:
            return None
        if not tight_low and not tight_high:
            return "[1-9]" if i == _FRACTION_DIGITS - 1 else f"[0-9]{{0,{_FRACTION_DIGITS - 1 - i}}}[1-9]"
        # digits with the same continuation share one character class, so the automaton keeps one
        # copy of that continuation instead of one per digit
        groups: dict[tuple[bool, bool, bool], list[int]] = {}
        for digit in range(first, last + 1):
            next_low = tight_low and digit == first
            next_high = tight_high and digit == last
            can_stop = digit != 0 and (not next_low or set(low[i + 1 :]) <= {"0"})
            groups.setdefault((next_low, next_high, can_stop), []).append(digit)
        options = []
        for (next_low, next_high, can_stop), digits in groups.items():
            head = _digit_class(digits)
            rest = suffix(i + 1, next_low, next_high) if i + 1 < _FRACTION_DIGITS else None
            if can_stop and rest:
                options.append(f"{head}({rest})?")
            elif rest:
                options.append(f"{head}{rest}")
            elif can_stop:
                options.append(head)
        return _alternatives(options) if options else None

    parts = ["0"] if low == "0" * _FRACTION_DIGITS else []
    body = suffix(0, True, True)
    if body:
        parts.append(body)
    return _alternatives(parts) if parts else None


def _decimal_parts(value: Decimal) -> tuple[int, str]:
    """Split a non-negative decimal into its integer part and 6 fraction digits."""
    whole, _, fraction = f"{value:f}".partition(".")
    return int(whole), (fraction + "0" * _FRACTION_DIGITS)[:_FRACTION_DIGITS]


def _plain_decimals(low: Decimal, high: Decimal | None) -> list[str]:
    """Regex parts for decimal texts with a point (no sign) whose value lies in [low, high], low >= 0."""
    cap = Decimal(10**_INTEGER_DIGITS) - Decimal(1).scaleb(-_FRACTION_DIGITS)
    high = cap if high is None or high > cap else high
    if high < low:
        return []
    low_int, low_frac = _decimal_parts(low)
    high_int, high_frac = _decimal_parts(high)
    parts = []
    for whole in sorted({low_int, high_int}):
        frac_low = low_frac if whole == low_int else "0" * _FRACTION_DIGITS
        frac_high = high_frac if whole == high_int else "9" * _FRACTION_DIGITS
        fractions = []
        if whole == 0:  # 0.0, or at least 0.0001
            if frac_low == "0" * _FRACTION_DIGITS:
                fractions.append("0")
            frac_low = max(frac_low, _SMALLEST_PLAIN)
            if frac_low <= frac_high:
                fractions.append(_fraction_between(frac_low, frac_high) or "")
        else:
            fractions.append(_fraction_between(frac_low, frac_high) or "")
        fractions = [f for f in fractions if f]
        if fractions:
            parts.append(f"{whole}\\.{_alternatives(fractions)}")
    if low_int + 1 <= high_int - 1:
        parts.append(f"{_natural_range(low_int + 1, high_int - 1)}\\.{_FRACTION}")
    return parts


def _inward(value: float | int, rounding: str) -> Decimal:
    return Decimal(str(value)).quantize(Decimal(1).scaleb(-_FRACTION_DIGITS), rounding=rounding)


def number_range_regex(minimum: float | None, maximum: float | None) -> str:
    """Regex for NUMBER-style texts whose value lies in [minimum, maximum] (None: unbounded).

    Integers in range and plain decimals (at most 6 digits before and after the point) in range
    are produced; bounds with more decimals are rounded inwards.
    """
    from decimal import ROUND_CEILING, ROUND_FLOOR

    if minimum is None and maximum is None:
        return NUMBER
    low = None if minimum is None else _inward(minimum, ROUND_CEILING)
    high = None if maximum is None else _inward(maximum, ROUND_FLOOR)
    if low is not None and high is not None and high < low:
        raise UnsupportedSchemaError(f"number range [{minimum}, {maximum}] is empty")
    int_low = None if low is None else math.ceil(low)
    int_high = None if high is None else math.floor(high)
    parts = []
    if int_low is None or int_high is None or int_low <= int_high:
        parts.append(integer_range_regex(int_low, int_high))
    zero = Decimal(0)
    if high is None or high >= 0:
        parts.extend(_plain_decimals(max(zero, low if low is not None else zero), high))
    if low is None or low <= 0:
        negative_low = zero if high is None or high >= 0 else -high
        parts.extend("-" + p for p in _plain_decimals(negative_low, None if low is None else -low))
    if not parts:
        raise UnsupportedSchemaError(
            f"number range [{minimum}, {maximum}] holds no value this decoder can write"
        )
    return _alternatives(parts)


# --- from a schema to a regex, through outlines_core --------------------------------------------

_WHITESPACE = "\ue000"
"""Given to outlines_core as the whitespace pattern: a private-use character marking each place JSON
allows whitespace, so that exactly ``json.dumps``'s spacing can be put there afterwards."""
_NUMBER_SLOT = "llavaagentnumberslot{}x"
# The primitives outlines_core writes (0.2.x), replaced by the exact ones above.
_OUTLINES_STRING_CHAR = r'([^"\\\x00-\x1F\x7F-\x9F]|\\["\\/bfnrt])'
_OUTLINES_INTEGER = r"(-)?(0|[1-9][0-9]*)"
_OUTLINES_NUMBER = r"((-)?(0|[1-9][0-9]*))(\.[0-9]+)?([eE][+-][0-9]+)?"
_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
# Constructs that restrict values but that the regex cannot express exactly. ``pattern`` is one:
# outlines_core inserts it between the quotes as is, so a pattern allowing '"' or '\\' would let
# the model write strings json.dumps escapes differently.
_UNSUPPORTED = (
    "pattern", "not", "if", "then", "else", "patternProperties", "dependentRequired", "dependentSchemas",
    "contains", "propertyNames", "unevaluatedProperties", "unevaluatedItems", "prefixItems",
)  # fmt: skip
_AFTER_COMMA = re.compile(_WHITESPACE + r"?,((?:\)(?:[?*+]|\{\d*,?\d*\})?)*)" + _WHITESPACE)
_AROUND_COLON = re.compile(_WHITESPACE + "?:" + _WHITESPACE)


def _fail(where: str, construct: str, path: str) -> UnsupportedSchemaError:
    return UnsupportedSchemaError(
        f"{where}: the JSON schema construct {construct} at {path or '/'} is not supported by "
        "constrained decoding; simplify the tool's argument types (see agent.decoding.schema_regex)"
    )


def _bounds(schema: dict) -> tuple[Any, Any, Any, Any]:
    low, high = schema.get("minimum"), schema.get("maximum")
    ex_low, ex_high = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    if isinstance(ex_low, bool) or isinstance(ex_high, bool):  # draft-4 booleans
        ex_low = low if ex_low else None
        ex_high = high if ex_high else None
        low = None if ex_low is not None else low
        high = None if ex_high is not None else high
    return low, high, ex_low, ex_high


def _multiples(step: Any, low: int | None, high: int | None) -> str:
    """The integers in ``[low, high]`` divisible by ``step``, listed (a bounded set, e.g. image sides)."""
    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        raise UnsupportedSchemaError(f"multipleOf {step!r} (only a positive integer on an integer)")
    if low is None or high is None:
        raise UnsupportedSchemaError("multipleOf without both a minimum and a maximum")
    values = range(-(-low // step) * step, high + 1, step)
    if not values:
        raise UnsupportedSchemaError(f"multipleOf {step} in [{low}, {high}] (no such integer)")
    if len(values) > _MAX_MULTIPLES:
        raise UnsupportedSchemaError(f"multipleOf {step} in [{low}, {high}] ({len(values)} values, over {_MAX_MULTIPLES})")
    return factored_words_regex([json.dumps(value) for value in values])


def _range_regex(schema: dict, kind: str) -> str:
    low, high, ex_low, ex_high = _bounds(schema)
    if kind == "integer":
        lows = [math.ceil(low)] if low is not None else []
        lows += [math.floor(ex_low) + 1] if ex_low is not None else []
        highs = [math.floor(high)] if high is not None else []
        highs += [math.ceil(ex_high) - 1] if ex_high is not None else []
        if "multipleOf" in schema:
            return _multiples(schema["multipleOf"], max(lows, default=None), min(highs, default=None))
        return integer_range_regex(max(lows, default=None), min(highs, default=None))
    if "multipleOf" in schema:
        raise UnsupportedSchemaError("multipleOf on a number")
    step = Decimal(1).scaleb(-_FRACTION_DIGITS)
    lows_d = [Decimal(str(low))] if low is not None else []
    lows_d += [Decimal(str(ex_low)) + step] if ex_low is not None else []
    highs_d = [Decimal(str(high))] if high is not None else []
    highs_d += [Decimal(str(ex_high)) - step] if ex_high is not None else []
    return number_range_regex(max(lows_d, default=None), min(highs_d, default=None))


def _prepare(node: Any, slots: list[str], max_string_length: int | None, where: str, path: str) -> Any:
    """A copy of the schema in which outlines_core's gaps are filled.

    Bounded numbers become placeholders (outlines_core ignores numeric bounds) filled in later
    with exact range regexes, and so do free-form values (the empty schema, whose regex
    outlines_core 0.2 leaves unparenthesised inside objects); ``max_string_length`` becomes
    ``maxLength``; constructs that would restrict values but that neither builder expresses are
    refused by name.
    """
    if isinstance(node, list):
        return [_prepare(item, slots, max_string_length, where, f"{path}/{i}") for i, item in enumerate(node)]
    if node is True or (isinstance(node, dict) and not set(node) - _METADATA):
        slots.append(ANY_VALUE)
        return {"const": _NUMBER_SLOT.format(len(slots) - 1)}
    if not isinstance(node, dict):
        return node
    for key in _UNSUPPORTED:
        if key in node:
            raise _fail(where, repr(key), path)
    if node.get("uniqueItems") is True:
        raise _fail(where, "'uniqueItems'", path)
    missing = set(node.get("required", ())) - set(node.get("properties", {}))
    if missing:  # outlines_core would allow any object here, without them
        raise _fail(where, f"required properties without a schema ({', '.join(sorted(missing))})", path)
    kind = node.get("type")
    if isinstance(kind, list) and any(k in node for k in _BOUNDS):
        rest = {k: v for k, v in node.items() if k != "type"}
        node = {"anyOf": [{**rest, "type": k} for k in kind]}
    elif kind in ("integer", "number") and any(k in node for k in (*_BOUNDS, "multipleOf")) and not {"enum", "const"} & set(node):
        try:
            slots.append(_range_regex(node, kind))
        except UnsupportedSchemaError as exc:
            raise _fail(where, str(exc), path) from None
        return {"const": _NUMBER_SLOT.format(len(slots) - 1)}
    elif kind == "string" and max_string_length is not None and "maxLength" not in node:
        node = {**node, "maxLength": max_string_length}
    prepared: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("enum", "const", "default", "examples"):
            prepared[key] = value  # values, not schemas
        elif key in ("properties", "$defs", "definitions") and isinstance(value, dict):
            prepared[key] = {  # maps of name -> schema
                name: _prepare(sub, slots, max_string_length, where, f"{path}/{key}/{name}")
                for name, sub in value.items()
            }
        else:
            prepared[key] = _prepare(value, slots, max_string_length, where, f"{path}/{key}")
    return prepared


def json_schema_regex(schema: dict, *, max_string_length: int | None = None, where: str = "schema") -> str:
    """A regex matching exactly ``json.dumps(v, ensure_ascii=False)`` for the values ``v`` it allows.

    ``where`` names the schema in error messages (e.g. ``"tool 'speak'"``). Raises
    :class:`UnsupportedSchemaError` for constructs it cannot express.
    """
    from outlines_core.json_schema import build_regex_from_schema

    if not isinstance(schema, dict):
        raise UnsupportedSchemaError(f"{where}: a JSON schema must be a dict, got {type(schema).__name__}")
    text = json.dumps(schema, ensure_ascii=False)
    if _WHITESPACE in text or "llavaagentnumberslot" in text:
        raise _fail(where, "a reserved character or name", "")
    slots: list[str] = []
    prepared = _prepare(schema, slots, max_string_length, where, "")
    try:
        regex = build_regex_from_schema(json.dumps(prepared, ensure_ascii=False), _WHITESPACE)
    except Exception as exc:  # outlines_core raises ValueError or its own error types
        raise UnsupportedSchemaError(
            f"{where}: constrained decoding cannot express this JSON schema ({exc}); simplify the tool's "
            "argument types (see agent.decoding.schema_regex)"
        ) from None
    # json.dumps spacing: ", " and ": ", nothing after "{" / "[" or before "}" / "]".
    regex = _AROUND_COLON.sub(": ", regex)
    regex = _AFTER_COMMA.sub(lambda match: ", " + match.group(1), regex)
    regex = regex.replace(_WHITESPACE, "")
    # exact primitives: the number first (it contains the integer), then the integer and string characters
    regex = regex.replace(_OUTLINES_NUMBER, NUMBER).replace(_OUTLINES_INTEGER, INTEGER)
    regex = regex.replace(_OUTLINES_STRING_CHAR, STRING_CHAR)
    for index, slot in enumerate(slots):
        regex = regex.replace(f'"{_NUMBER_SLOT.format(index)}"', f"({slot})")
    return regex


__all__ = [
    "UnsupportedSchemaError",
    "escape_literal",
    "integer_range_regex",
    "json_schema_regex",
    "number_range_regex",
]
