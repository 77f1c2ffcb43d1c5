"""Jump-forward decoding: the stretches of a constrained reply that the grammar alone decides.

Inside a tool call most bytes are forced: ``{"name": "``, the rest of a tool name once its prefix
is unique, ``", "arguments": {"``, the keys, the closing braces and ``</tool_call>``. Decoding
them one token per forward pass wastes a pass per token. SGLang's jump-forward decoding
appends such a stretch in one pass; this module finds the stretches and spells them.

* :func:`forced_bytes` -- from a state of the token automaton, the longest byte string every
  valid continuation starts with (the walk stops where two bytes are possible, at a final
  state, where EOS may end the reply, or after :data:`MAX_FORCED_BYTES`). Cached per state.
* :func:`forced_tokens` -- those bytes as tokens: the tokenizer's own spelling when it is a valid
  path of the automaton (what the model was trained on), else the longest-token walk. The last
  token is held back: the model then writes the end of the stretch itself and may merge it with
  what follows (``", "`` + ``cat`` can become ``", "`` + ``cat`` or ``",`` + `` "cat``), so the
  spelling at the seam stays the model's. A stretch of one token is appended only when it is the
  only token the state allows. The budget is kept: a stretch is appended only if the call can
  still be finished in the tokens left after it.

The text is the same bytes either way (the grammar allows nothing else there), so every call is
still exactly what the tool protocol renders. The *tokens* of a stretch are the tokenizer's
spelling rather than the ones the model would have picked one at a time; a model that would have
spelled it differently sees a differently tokenised (canonical) context for what it writes next.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import TYPE_CHECKING

from agent.decoding.token_index import Automaton, TokenVocabulary, longest_move

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

MAX_FORCED_BYTES = 256

Spell = Callable[[bytes], "list[int] | None"]
"""Turns bytes into the tokenizer's token ids (None when it cannot)."""


@lru_cache(maxsize=8)
def _first_bytes(vocabulary: TokenVocabulary) -> np.ndarray:
    """The first byte of every token (-1 for tokens with no bytes)."""
    import numpy as np

    first = np.full(vocabulary.size, -1, dtype=np.int16)
    for token_id, data in enumerate(vocabulary.token_bytes):
        if data:
            first[token_id] = data[0]
    return first


def forced_bytes(automaton: Automaton, state: int, vocabulary: TokenVocabulary) -> tuple[bytes, int]:
    """The bytes every continuation from ``state`` starts with, and the state after them."""
    cached = automaton.forced.get(state)
    if cached is not None:
        return cached
    first = _first_bytes(vocabulary)
    single = vocabulary.single_byte_tokens
    data = bytearray()
    current = state
    while len(data) < MAX_FORCED_BYTES and current not in automaton.finals:
        tokens = automaton.tokens.get(current)
        if tokens is None or tokens.size == 0:
            break
        starts = first[tokens]
        byte = int(starts[0])
        if byte < 0 or bool((starts != byte).any()):
            break
        token_id = single.get(byte)
        successor = automaton.transitions.get(current, {}).get(token_id) if token_id is not None else None
        if successor is None:
            break
        data.append(byte)
        current = successor
    result = (bytes(data), current)
    automaton.forced[state] = result  # benign race: every thread computes the same value
    return result


def walk_tokens(automaton: Automaton, state: int, tokens: list[int]) -> int | None:
    """The state after ``tokens`` from ``state``, or None when one of them is not allowed."""
    for token_id in tokens:
        state = automaton.transitions.get(state, {}).get(token_id)
        if state is None:
            return None
    return state


def _longest_token_spelling(
    automaton: Automaton, state: int, data: bytes, vocabulary: TokenVocabulary
) -> list[int] | None:
    tokens: list[int] = []
    position = 0
    while position < len(data):
        moves = automaton.transitions.get(state, {})
        best = longest_move(moves, data, position, vocabulary)
        if best is None:
            return None
        tokens.append(best)
        state = moves[best]
        position += len(vocabulary.token_bytes[best])
    return tokens


def _utf8_prefix(data: bytes) -> bytes:
    """The longest prefix of ``data`` that is whole UTF-8 characters."""
    for cut in range(len(data), max(-1, len(data) - 4), -1):
        try:
            data[:cut].decode("utf-8")
            return data[:cut]
        except UnicodeDecodeError:
            continue
    return b""


def forced_tokens(
    automaton: Automaton,
    state: int,
    vocabulary: TokenVocabulary,
    remaining: int,
    spell: Spell | None = None,
) -> list[int]:
    """Tokens to append now without asking the model (empty when nothing is forced).

    ``remaining`` is the number of tokens the reply may still use (this one included).
    """
    tokens_here = automaton.tokens.get(state)
    if state in automaton.finals or tokens_here is None or tokens_here.size == 0:
        return []
    only_one = tokens_here.size == 1  # a single token is allowed: it is forced whatever the spelling
    data, _ = forced_bytes(automaton, state, vocabulary)
    data = _utf8_prefix(data)
    tokens = spell(data) if spell is not None and data else None
    if tokens is not None and (
        b"".join(vocabulary.token_bytes[t] if t < vocabulary.size else b"\x00" for t in tokens) != data
        or walk_tokens(automaton, state, tokens) is None
    ):
        tokens = None
    if tokens is None and data:
        tokens = _longest_token_spelling(automaton, state, data, vocabulary)
    if tokens and len(tokens) >= 2:
        tokens = tokens[:-1]  # the model writes the seam itself
    elif only_one:
        tokens = [int(tokens_here[0])]
    else:
        return []
    after = walk_tokens(automaton, state, tokens)
    if after is None or automaton.dist.get(after, 1 << 30) > remaining - len(tokens):
        return []
    return tokens


__all__ = ["MAX_FORCED_BYTES", "forced_bytes", "forced_tokens", "walk_tokens"]
