"""The token-level automaton behind constrained decoding.

Two pieces, both cached:

* :func:`token_vocabulary` turns a Hugging Face tokenizer into the exact bytes each token
  decodes to -- byte-level BPE ("Ġ"-style) through the GPT-2 byte alphabet, SentencePiece ("▁"
  and ``<0x0A>`` byte fallback) by its rules, non-special added tokens by their content. Special
  tokens other than EOS are left out, so a grammar can never use them.
* :func:`indexed_automaton` indexes a regex against that vocabulary with ``outlines_core`` (a DFA
  over bytes whose transitions are tokens) and adds, per state, the transition arrays and the
  exact minimum number of tokens that still reaches a final state: a breadth-first search
  backwards from the final states over the distinct (state -> next state) edges of the real token
  transitions (a graph of a few hundred to a few thousand nodes).
"""

from __future__ import annotations

import hashlib
import json
import threading
import weakref
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from agent.core.errors import InputError

if TYPE_CHECKING:
    import numpy as np
    import torch

UNREACHABLE = 1 << 30

# --- vocabulary -----------------------------------------------------------------------------


def _gpt2_unicode_to_byte() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode: the printable character standing for each byte."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


def _decoder_types(tokenizer: Any) -> set[str]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or backend.decoder is None:
        return set()
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "type" in node:
                found.add(node["type"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads(backend.decoder.__getstate__()))
    return found


@dataclass(frozen=True, eq=False)
class TokenVocabulary:
    """The tokenizer's tokens as the exact bytes they produce, ready for ``outlines_core``."""

    fingerprint: str
    size: int
    eos_token_ids: tuple[int, ...]
    token_bytes: tuple[bytes, ...]  # by id; b"" for special and unknown ids
    allowed_ids: frozenset[int]  # ids the grammar may use (no special tokens)

    def byte_groups(self) -> dict[bytes, list[int]]:
        groups: dict[bytes, list[int]] = {}
        for token_id in sorted(self.allowed_ids):
            groups.setdefault(self.token_bytes[token_id], []).append(token_id)
        return groups

    @property
    def single_byte_tokens(self) -> dict[int, int]:
        return _single_byte_tokens(self)


@lru_cache(maxsize=8)
def _single_byte_tokens(vocabulary: TokenVocabulary) -> dict[int, int]:
    table: dict[int, int] = {}
    for token_id in sorted(vocabulary.allowed_ids):
        data = vocabulary.token_bytes[token_id]
        if len(data) == 1:
            table.setdefault(data[0], token_id)
    return table


def _convert_vocabulary(tokenizer: Any, eos_token_ids: tuple[int, ...], fingerprint: str) -> TokenVocabulary:
    vocab: dict[str, int] = tokenizer.get_vocab()
    size = max(len(tokenizer), max(vocab.values(), default=-1) + 1)
    special_ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    special_ids |= {token_id for token_id, token in added.items() if getattr(token, "special", False)}
    decoders = _decoder_types(tokenizer)
    byte_level = "ByteLevel" in decoders
    sentencepiece = not byte_level and (
        bool(decoders & {"Metaspace", "ByteFallback", "Replace"}) or hasattr(tokenizer, "sp_model")
    )
    unicode_to_byte = _gpt2_unicode_to_byte() if byte_level else {}
    token_bytes: list[bytes] = [b""] * size
    allowed: set[int] = set()
    for token, token_id in vocab.items():
        if token_id in special_ids or token_id >= size:
            continue
        if token_id in added:
            data = added[token_id].content.encode()
        elif byte_level:
            try:
                data = bytes(unicode_to_byte[c] for c in token)
            except KeyError:
                data = token.encode()
        elif sentencepiece and len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
            data = bytes([int(token[3:5], 16)])
        elif sentencepiece:
            data = token.replace("\u2581", " ").encode()
        else:  # other decoders (WordPiece...): ask the tokenizer, token by token
            data = tokenizer.convert_tokens_to_string([token]).encode()
        if data:
            token_bytes[token_id] = data
            allowed.add(token_id)
    for eos in eos_token_ids:
        allowed.discard(eos)
    return TokenVocabulary(fingerprint, size, eos_token_ids, tuple(token_bytes), frozenset(allowed))


_FINGERPRINTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_VOCABULARIES: dict[str, TokenVocabulary] = {}
_LOCK = threading.RLock()


def _eos_ids(tokenizer: Any, eos_token_ids: Any) -> tuple[int, ...]:
    if eos_token_ids is None:
        eos_token_ids = tokenizer.eos_token_id
    if isinstance(eos_token_ids, int):
        eos_token_ids = [eos_token_ids]
    ids = tuple(sorted({int(i) for i in eos_token_ids or []}))
    if not ids:
        raise InputError(
            "the tokenizer has no eos_token_id; pass eos_token_ids to build the tool-call constraint"
        )
    return ids


def token_vocabulary(tokenizer: Any, eos_token_ids: int | list[int] | None = None) -> TokenVocabulary:
    """The (cached) byte vocabulary of a Hugging Face tokenizer (or of a processor's tokenizer)."""
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    eos = _eos_ids(tokenizer, eos_token_ids)
    with _LOCK:
        try:
            base = _FINGERPRINTS.get(tokenizer)
        except TypeError:
            base = None
        if base is None:
            digest = hashlib.sha256(type(tokenizer).__name__.encode())
            for token, token_id in sorted(tokenizer.get_vocab().items(), key=lambda item: item[1]):
                digest.update(f"{token_id}\x00{token}\x01".encode("utf-8", "surrogatepass"))
            digest.update(repr(sorted(getattr(tokenizer, "all_special_ids", []) or [])).encode())
            base = digest.hexdigest()[:24]
            try:
                _FINGERPRINTS[tokenizer] = base
            except TypeError:
                pass
        fingerprint = f"{base}:{','.join(map(str, eos))}"
        if fingerprint not in _VOCABULARIES:
            _VOCABULARIES[fingerprint] = _convert_vocabulary(tokenizer, eos, fingerprint)
        return _VOCABULARIES[fingerprint]


# --- the indexed automaton ------------------------------------------------------------------


@dataclass
class Automaton:
    """The token-level DFA of a grammar, with per-state transition arrays and distances to the end."""

    initial: int
    finals: frozenset[int]
    tokens: dict[int, np.ndarray]  # state -> allowed token ids (EOS excluded)
    nexts: dict[int, np.ndarray]  # state -> next state per allowed token
    next_dist: dict[int, np.ndarray]  # state -> minimum tokens to finish after each allowed token
    dist: dict[int, int]
    max_next_dist: dict[int, int]
    transitions: dict[int, dict[int, int]]
    biases: OrderedDict = field(default_factory=OrderedDict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    forced: dict[int, tuple[bytes, int]] = field(default_factory=dict)  # see agent.decoding.jump_forward

    def next_state(self, state: int, token_id: int) -> int | None:
        return self.transitions.get(state, {}).get(token_id)

    def walk(self, state: int, data: bytes, vocabulary: TokenVocabulary) -> int | None:
        """The state after the bytes ``data`` (spelled with single-byte tokens, else longest tokens)."""
        return _walk(self.transitions, state, data, vocabulary)

    def bias(self, state: int, logits: torch.Tensor, eos_token_ids: tuple[int, ...]) -> torch.Tensor:
        """The additive mask of ``state`` (0 for allowed tokens, -inf otherwise), cached per shape/dtype/device."""

        vocab_size = logits.shape[-1]
        key = (state, vocab_size, logits.dtype, str(logits.device))
        with self.lock:
            cached = self.biases.get(key)
            if cached is not None:
                self.biases.move_to_end(key)
                return cached
        ids = self.tokens[state]
        allowed = ids[ids < vocab_size].tolist()
        if state in self.finals:
            allowed += [i for i in eos_token_ids if i < vocab_size]
        cached = bias_from_allowed(allowed, logits)
        with self.lock:
            self.biases[key] = cached
            # keep about 256 MB of cached masks at most (a 151k-token mask is 0.6 MB in float32)
            limit = max(64, (256 << 20) // max(1, vocab_size * logits.element_size()))
            while len(self.biases) > limit:
                self.biases.popitem(last=False)
        return cached


def _walk(
    transitions: dict[int, dict[int, int]], state: int | None, data: bytes, vocabulary: TokenVocabulary
) -> int | None:
    single = vocabulary.single_byte_tokens
    position = 0
    while position < len(data) and state is not None:
        moves = transitions.get(state, {})
        token_id = single.get(data[position])
        if token_id is not None and token_id in moves:
            state = moves[token_id]
            position += 1
            continue
        best = longest_move(moves, data, position, vocabulary)
        if best is None:
            return None
        state = moves[best]
        position += len(vocabulary.token_bytes[best])
    return state


def longest_move(moves: dict[int, int], data: bytes, position: int, vocabulary: TokenVocabulary) -> int | None:
    """The token among ``moves`` whose bytes match ``data`` at ``position`` for the longest stretch, if any."""
    best = None
    for candidate in moves:
        piece = vocabulary.token_bytes[candidate]
        if data.startswith(piece, position) and (best is None or len(piece) > len(vocabulary.token_bytes[best])):
            best = candidate
    return best


def bias_from_allowed(allowed: list[int], logits: torch.Tensor) -> torch.Tensor:
    import torch

    bias = torch.full((logits.shape[-1],), -float("inf"), dtype=logits.dtype)
    if allowed:
        bias[torch.tensor(allowed, dtype=torch.long)] = 0
    return bias.to(logits.device)


@lru_cache(maxsize=8)
def _outlines_vocabulary(vocabulary: TokenVocabulary) -> Any:
    """The ``outlines_core.Vocabulary`` of a vocabulary, built once and shared by all its indexes."""
    from outlines_core import Vocabulary

    return Vocabulary(vocabulary.eos_token_ids[0], vocabulary.byte_groups())


def _build_automaton(regex: str, vocabulary: TokenVocabulary, repeat_separator: bytes | None) -> Automaton:
    import numpy as np
    from outlines_core import Index

    index = Index(regex, _outlines_vocabulary(vocabulary))
    raw = index.get_transitions()
    finals = frozenset(index.get_final_states())
    eos_set = set(vocabulary.eos_token_ids)
    transitions = {
        state: {t: n for t, n in moves.items() if t not in eos_set} for state, moves in raw.items()
    }
    del raw
    initial = index.get_initial_state()
    if repeat_separator:
        # (regex (separator regex)*) without indexing a second copy of the regex: from each final
        # state, a token that starts with the separator continues as if the regex started again
        again: dict[int, int] = {}
        for token_id in vocabulary.allowed_ids:
            data = vocabulary.token_bytes[token_id]
            if data.startswith(repeat_separator):
                state = _walk(transitions, initial, data[len(repeat_separator) :], vocabulary)
                if state is not None:
                    again[token_id] = state
        for state in finals:
            transitions.setdefault(state, {}).update(again)
    states = set(transitions) | {n for moves in transitions.values() for n in moves.values()} | set(finals)
    predecessors: dict[int, set[int]] = {state: set() for state in states}
    for state, moves in transitions.items():
        for successor in set(moves.values()):
            predecessors[successor].add(state)
    dist = {state: UNREACHABLE for state in states}
    queue = deque()
    for state in finals:
        dist[state] = 0
        queue.append(state)
    while queue:
        state = queue.popleft()
        for previous in predecessors[state]:
            if dist[previous] == UNREACHABLE:
                dist[previous] = dist[state] + 1
                queue.append(previous)
    tokens, nexts, next_dist, max_next_dist = {}, {}, {}, {}
    for state in states:
        moves = transitions.get(state, {})
        tokens[state] = np.fromiter(moves.keys(), dtype=np.int64, count=len(moves))
        nexts[state] = np.fromiter(moves.values(), dtype=np.int64, count=len(moves))
        next_dist[state] = np.fromiter((dist[n] for n in moves.values()), dtype=np.int64, count=len(moves))
        max_next_dist[state] = int(next_dist[state].max()) if len(moves) else 0
    if dist.get(initial, UNREACHABLE) == UNREACHABLE:
        raise InputError(
            "the tool-call grammar cannot be written with this tokenizer's vocabulary (no token path "
            "reaches the end); check that the tokenizer can spell JSON"
        )
    return Automaton(initial, finals, tokens, nexts, next_dist, dist, max_next_dist, transitions)


@lru_cache(maxsize=16)
def indexed_automaton(
    regex: str, vocabulary: TokenVocabulary, repeat_separator: bytes | None = None
) -> Automaton:
    """The (cached) token automaton of ``regex``, or of ``regex (repeat_separator regex)*`` when given."""
    return _build_automaton(regex, vocabulary, repeat_separator)


__all__ = [
    "UNREACHABLE",
    "Automaton",
    "TokenVocabulary",
    "bias_from_allowed",
    "indexed_automaton",
    "token_vocabulary",
]
