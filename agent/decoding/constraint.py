"""Constrained decoding: every tool call the model writes is valid for its tool's schema.

:class:`ToolCallConstraint` compiles the bound tool schemas into one regular grammar,

    CALL ("\\n" CALL)*        with  CALL = <tool_call>\\n{"name": "<tool>", "arguments": ARGS}\\n</tool_call>

where ``ARGS`` is :func:`agent.decoding.schema_regex.json_schema_regex` of that tool's parameters
(the exact ``json.dumps`` formatting of :mod:`agent.decoding.tool_protocol`), and indexes it against the
tokenizer's vocabulary with ``outlines_core`` (a DFA over bytes whose transitions are tokens).
:meth:`ToolCallConstraint.logits_processor` returns a fresh, stateful
``transformers.LogitsProcessor`` for one ``generate()`` call: :mod:`agent.decoding.call_processor`
(modes, the end of a reply, the token budget at each step, the masks).

**Vocabulary and index** live in :mod:`agent.decoding.token_index`: tokens as exact bytes, the
``outlines_core`` index, per-state distances. Indexes are cached per (vocabulary fingerprint,
grammar), constraints per (fingerprint, schemas, tool_choice).
"""

from __future__ import annotations

import json
import logging
import threading
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from agent.core.errors import InputError
from agent.decoding.call_processor import BLANK, FENCED, LINE_OPENER, OPENER, processor_class
from agent.decoding.schema_regex import escape_literal, json_schema_regex
from agent.decoding.token_index import (
    UNREACHABLE,
    Automaton,
    TokenVocabulary,
    indexed_automaton,
    token_vocabulary,
)
from agent.decoding.tool_protocol import TOOL_CALL_CLOSE, TOOL_CALL_OPEN, normalise_tool_choice

if TYPE_CHECKING:
    import numpy as np

    from agent.decoding.call_processor import ToolCallLogitsProcessor

logger = logging.getLogger(__name__)

_BUILD_LOCK = threading.Lock()
_CALL_SEPARATOR = b"\n"

# --- grammar --------------------------------------------------------------------------------


def _tool_names(schemas: list[dict]) -> list[str]:
    names = []
    for position, schema in enumerate(schemas):
        function = schema.get("function", schema) if isinstance(schema, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str) or not name:
            raise InputError(f"tool schema #{position} has no function name: {schema!r:.200}")
        names.append(name)
    return names


def tool_call_regex(
    schemas: list[dict],
    tool_choice: str = "any",
    *,
    max_string_length: int | None = None,
    repeated: bool = True,
) -> str:
    """The grammar of a constrained reply: one or more calls of the chosen tools, newline-separated.

    With ``repeated=False`` only one call (the index repeats it itself, see
    :func:`agent.decoding.token_index.indexed_automaton`, so the automaton holds one copy of each tool).
    """
    names = _tool_names(schemas)
    alternatives = []
    for name, schema in zip(names, schemas, strict=True):
        if tool_choice not in ("auto", "any", "required") and name != tool_choice:
            continue
        parameters = schema.get("function", schema).get("parameters") or {"type": "object", "properties": {}}
        arguments = json_schema_regex(parameters, max_string_length=max_string_length, where=f"tool {name!r}")
        name_literal = escape_literal(json.dumps(name, ensure_ascii=False))
        alternatives.append(f'{name_literal}, "arguments": {arguments}')
    head = escape_literal(TOOL_CALL_OPEN + '\n{"name": ')
    tail = escape_literal("}\n" + TOOL_CALL_CLOSE)
    call = f"{head}({'|'.join(alternatives)}){tail}"
    return f"{call}(\\n{call})*" if repeated else call


def _opener_moves(automaton: Automaton, vocabulary: TokenVocabulary) -> list[dict[int, int]]:
    """For each place free text can stand in: token -> state after it, for tokens that open a call.

    A call opens only with ``<tool_call>`` at the start of a line (column 0; at the very start of
    the reply after any whitespace) outside a fenced code block -- see
    :func:`agent.decoding.tool_protocol.call_opener_positions`. Only tokens that complete such an opener
    appear; the state is -1 when the rest of the token is not a valid start of a call.
    """
    after_opener = automaton.walk(automaton.initial, OPENER, vocabulary)
    if after_opener is None:
        raise InputError(
            "this tokenizer cannot spell <tool_call>; tool calling needs a byte-complete vocabulary"
        )
    moves: list[dict[int, int]] = [{} for _ in range(FENCED + 1)]
    for token_id in vocabulary.allowed_ids:
        data = vocabulary.token_bytes[token_id]
        after_newline = data.find(LINE_OPENER)
        for place in range(FENCED):
            if place == BLANK:
                stripped = data.lstrip(b" \t\r\n")
                rest = stripped[len(OPENER) :] if stripped.startswith(OPENER) else None
            elif place < len(OPENER):
                rest = data[len(OPENER) - place :] if data.startswith(OPENER[place:]) else None
            else:
                rest = None
            if rest is None and after_newline >= 0:
                rest = data[after_newline + len(LINE_OPENER) :]
            if rest is None:
                continue
            state = automaton.walk(after_opener, rest, vocabulary)
            moves[place][token_id] = -1 if state is None else state
    return moves


# --- the constraint (its per-reply processor: agent.decoding.call_processor) ---------------------


def _constraint_choice(tool_choice: Any, names: list[str]) -> str:
    """``"auto"``, ``"any"`` or a tool name: :func:`normalise_tool_choice`, with None meaning auto."""
    choice = normalise_tool_choice(tool_choice, names) or "auto"
    if choice == "none":
        raise InputError("tool_choice 'none' needs no constraint; generate without a tool-call constraint")
    return choice


class ToolCallConstraint:
    """Bound tool schemas plus a ``tool_choice``, indexed against one tokenizer (build once, reuse)."""

    def __init__(
        self,
        vocabulary: TokenVocabulary,
        automaton: Automaton,
        tool_choice: str,
        tool_names: list[str],
        *,
        free_start: bool,
        calls: bool = True,
    ) -> None:
        import numpy as np

        self.vocabulary = vocabulary
        self.automaton = automaton
        self.tool_choice = tool_choice
        self.tool_names = tool_names
        self.free_start = free_start
        self.calls = calls  # tool calls (a repeated call ends the reply), not one structured-output value
        self.opener_moves: list[tuple[np.ndarray, np.ndarray, dict[int, int]]] = []
        if free_start:
            for moves in _opener_moves(automaton, vocabulary):
                ids = np.fromiter(moves.keys(), dtype=np.int64, count=len(moves))
                cost = np.fromiter(
                    (automaton.dist[s] if s >= 0 else UNREACHABLE for s in moves.values()),
                    dtype=np.int64,
                    count=len(moves),
                )
                self.opener_moves.append((ids, cost, moves))

    @classmethod
    def build(
        cls,
        tokenizer: Any,
        schemas: list[dict],
        tool_choice: Any = "auto",
        *,
        eos_token_ids: int | list[int] | None = None,
        max_string_length: int | None = None,
    ) -> ToolCallConstraint:
        """Build (or fetch from the cache) the constraint for these tools and this ``tool_choice``.

        ``tool_choice``: ``"auto"`` (text or calls), ``"any"``/``"required"`` (one or more calls) or
        a tool name (calls of that tool only). ``tokenizer`` may be a processor holding one.
        ``eos_token_ids`` defaults to the tokenizer's EOS; pass the generation config's list when
        the model stops on several tokens.
        """
        if not schemas:
            raise InputError("no tools are bound; bind at least one tool before constraining tool calls")
        if not all(isinstance(s, dict) and s.get("type") == "function" and "function" in s for s in schemas):
            raise InputError(
                "tool schemas must be OpenAI-format dicts ({'type': 'function', 'function': {...}}); convert "
                "LangChain tools, pydantic models or functions with agent.llava.messages.tool_schemas first"
            )
        names = _tool_names(schemas)
        choice = _constraint_choice(tool_choice, names)
        vocabulary = token_vocabulary(tokenizer, eos_token_ids)
        key = json.dumps(schemas, sort_keys=False, ensure_ascii=False, default=str)
        with _BUILD_LOCK:  # one build per key even when several threads bind the same tools at once
            return _cached_constraint(vocabulary, key, choice, max_string_length)

    @property
    def min_call_tokens(self) -> int:
        """Tokens needed to write the shortest complete call."""
        return self.automaton.dist[self.automaton.initial]

    @property
    def required_new_tokens(self) -> int:
        """The smallest ``max_new_tokens`` that lets a constrained reply finish (1 for ``"auto"``: text)."""
        return 1 if self.free_start else self.min_call_tokens

    def logits_processor(self, max_new_tokens: int) -> ToolCallLogitsProcessor:
        """A fresh, stateful processor for one ``generate()`` call of at most ``max_new_tokens`` tokens."""
        if not isinstance(max_new_tokens, int) or max_new_tokens <= 0:
            raise InputError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        return processor_class()(self, max_new_tokens)


@lru_cache(maxsize=32)
def _cached_constraint(
    vocabulary: TokenVocabulary, schemas_json: str, tool_choice: str, max_string_length: int | None
) -> ToolCallConstraint:
    import time

    schemas = json.loads(schemas_json)
    started = time.perf_counter()
    regex = tool_call_regex(schemas, tool_choice, max_string_length=max_string_length, repeated=False)
    automaton = indexed_automaton(regex, vocabulary, _CALL_SEPARATOR)
    constraint = ToolCallConstraint(
        vocabulary, automaton, tool_choice, _tool_names(schemas), free_start=tool_choice == "auto"
    )
    logger.debug(
        "tool-call constraint for %s (tool_choice=%s): %d states, built in %.2fs",
        ", ".join(constraint.tool_names),
        tool_choice,
        len(automaton.dist),
        time.perf_counter() - started,
    )
    return constraint


def json_output_constraint(
    tokenizer: Any,
    schema: dict,
    *,
    eos_token_ids: int | list[int] | None = None,
    max_string_length: int | None = None,
) -> ToolCallConstraint:
    """A constraint whose whole reply is ``json.dumps`` of one value valid for ``schema`` (then EOS).

    Structured output (``with_structured_output(method="json_schema")``) decodes through it; its
    processor is in the constrained mode from the first token. Cached per (vocabulary, schema).
    """
    if not isinstance(schema, dict):
        raise InputError(f"the output schema must be a JSON schema dict, got {type(schema).__name__}")
    vocabulary = token_vocabulary(tokenizer, eos_token_ids)
    key = json.dumps(schema, sort_keys=False, ensure_ascii=False, default=str)
    with _BUILD_LOCK:
        return _cached_json_constraint(vocabulary, key, max_string_length)


@lru_cache(maxsize=16)
def _cached_json_constraint(
    vocabulary: TokenVocabulary, schema_json: str, max_string_length: int | None
) -> ToolCallConstraint:
    schema = json.loads(schema_json)
    regex = json_schema_regex(schema, max_string_length=max_string_length, where="the output schema")
    automaton = indexed_automaton(regex, vocabulary)
    title = schema.get("title", "output")
    return ToolCallConstraint(vocabulary, automaton, "any", [str(title)], free_start=False, calls=False)


def __getattr__(name: str) -> Any:
    if name == "ToolCallLogitsProcessor":
        return processor_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "TokenVocabulary",
    "ToolCallConstraint",
    "ToolCallLogitsProcessor",
    "json_output_constraint",
    "json_schema_regex",
    "token_vocabulary",
    "tool_call_regex",
]
