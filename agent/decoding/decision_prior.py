"""A prior on a reply's first decision: answer in words, or call a tool -- and which one.

Another judge of the same decision (the semantic router, :mod:`agent.app.routing`) gives a
probability for each bound tool and for no call (``"(none)"``). :class:`DecisionPrior` combines
it with the model's own next-token distribution as a *product of experts*: where the reply
decides, it adds ``weight * log(prior)`` to the logits of the tokens that take each branch, so
the model's odds are multiplied by the prior's odds raised to ``weight``. Two places decide:

* **call or words**, at the reply's first token: the tokens that begin a call opener
  (``<tool_call>``, after any leading whitespace) get ``weight * (log P(some tool) - log
  P(none))``; every other token is left alone;
* **which tool**, where the first call's name starts (after ``<tool_call>\\n{"name": "``): a token
  that spells the next bytes of some tools' names gets ``weight * (log P(those tools) - log
  P(every tool still possible))``, so the names' shares follow the prior within what the model
  already wrote.

Nothing else changes: the constraint still decides what is valid, greedy decoding still takes the
best token, and a reply that has started in words or has named its tool is never biased again.
Probabilities are floored (``floor``) so that no judge vetoes a branch outright. The processor is
a pure function of its inputs (the prompt length is fixed when it is made), as the decode loop
requires of processors, so drafts and jump-forward stretches need no special care.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from agent.core.errors import InputError
from agent.decoding.tool_protocol import TOOL_CALL_OPEN

if TYPE_CHECKING:
    import torch

    from agent.decoding.token_index import TokenVocabulary

NO_CALL = "(none)"
"""The prior's key for answering in words."""
OPENER = TOOL_CALL_OPEN.encode()
NAME_HEAD = OPENER + b'\n{"name": "'
"""What a call holds before its tool's name (the grammar of :func:`agent.decoding.constraint.tool_call_regex`)."""
_AFTER_NAME = b'", "arguments": '
_WHITESPACE = b" \t\r\n"
DEFAULT_FLOOR = 1e-3
_DECIDED_BY = 64


@lru_cache(maxsize=8)
def opener_start_ids(vocabulary: TokenVocabulary) -> tuple[int, ...]:
    """Tokens that begin a call opener at the start of a reply (leading whitespace allowed)."""
    found = []
    for token_id in sorted(vocabulary.allowed_ids):
        stripped = vocabulary.token_bytes[token_id].lstrip(_WHITESPACE)
        if stripped and (OPENER.startswith(stripped) or stripped.startswith(OPENER)):
            found.append(token_id)
    return tuple(found)


@lru_cache(maxsize=8)
def _tokens_by_bytes(vocabulary: TokenVocabulary) -> dict[bytes, tuple[int, ...]]:
    return {data: tuple(ids) for data, ids in vocabulary.byte_groups().items()}


def normalised_prior(prior: Mapping[str, float], names: Sequence[str], floor: float = DEFAULT_FLOOR) -> dict[str, float]:
    """The prior over ``names`` and :data:`NO_CALL`: floored, summing to 1 (a missing name gets the floor)."""
    if not 0.0 < floor < 1.0:
        raise InputError(f"the prior's floor must be between 0 and 1, got {floor}")
    values: dict[str, float] = {}
    for name in [*names, NO_CALL]:
        value = prior.get(name, 0.0)
        if not isinstance(value, (int, float)) or math.isnan(value) or value < 0:
            raise InputError(f"tool_prior[{name!r}] must be a probability, got {value!r}")
        values[name] = max(float(value), floor)
    unknown = sorted(set(prior) - set(values))
    if unknown:
        raise InputError(f"tool_prior names tools that are not bound: {', '.join(unknown)} (bound: {', '.join(names)})")
    total = sum(values.values())
    return {name: value / total for name, value in values.items()}


class DecisionPrior:
    """``transformers``-style logits processor applying a prior to the reply's first decision.

    Args:
        vocabulary: the tokenizer's byte vocabulary (:func:`agent.decoding.token_index.token_vocabulary`).
        names: the bound tools' names.
        prior: probability of each tool and of :data:`NO_CALL` (normalised here; missing: the floor).
        prompt_length: tokens of the prompt (the reply starts after them).
        weight: the prior's exponent (0: no effect; 1: an equal expert).
        decide_call: bias the call-or-words choice (False when the constraint already forces a call).
    """

    def __init__(self, vocabulary: TokenVocabulary, names: Sequence[str], prior: Mapping[str, float],
                 prompt_length: int, *, weight: float = 1.0, floor: float = DEFAULT_FLOOR,
                 decide_call: bool = True) -> None:
        if weight < 0:
            raise InputError(f"the prior's weight must be at least 0, got {weight}")
        self.vocabulary = vocabulary
        self.prior = normalised_prior(prior, names, floor)
        self.prompt_length = prompt_length
        self.weight = weight
        self.decide_call = decide_call
        tools = sum(p for name, p in self.prior.items() if name != NO_CALL)
        self.call_bias = weight * (math.log(tools) - math.log(self.prior[NO_CALL]))
        self._names = {name.encode(): p for name, p in self.prior.items() if name != NO_CALL}

    def biases(self, generated: Sequence[int]) -> dict[int, float]:
        """Token id -> logit bias at the step after ``generated`` (the reply's tokens so far)."""
        if len(generated) > _DECIDED_BY:
            return {}  # long past the first decision (a reply's first call names its tool within a few tokens)
        data = b"".join(self.vocabulary.token_bytes[t] for t in generated)
        if not data.strip(_WHITESPACE):  # the reply has not started: call or words?
            return dict.fromkeys(opener_start_ids(self.vocabulary), self.call_bias) if self.decide_call else {}
        reply = data.lstrip(_WHITESPACE)
        if not reply.startswith(NAME_HEAD):
            return {}  # in words, or the call's opener is still being written
        typed = reply[len(NAME_HEAD):]
        possible = {name + _AFTER_NAME: p for name, p in self._names.items() if name.startswith(typed)}
        if len(possible) < 2:
            return {}  # the name is written (or decided): nothing left to weigh
        total = math.log(sum(possible.values()))
        by_bytes = _tokens_by_bytes(self.vocabulary)
        biases: dict[int, float] = {}
        seen: set[bytes] = set()
        for spelled in possible:
            rest = spelled[len(typed):]
            for end in range(1, len(rest) + 1):
                piece = rest[:end]
                if piece in seen:
                    continue
                seen.add(piece)
                ids = by_bytes.get(piece)
                if not ids:
                    continue
                share = sum(p for other, p in possible.items() if other[len(typed):].startswith(piece))
                for token_id in ids:
                    biases[token_id] = self.weight * (math.log(share) - total)
        return biases

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for row in range(scores.shape[0]):
            biases = self.biases(input_ids[row, self.prompt_length:].tolist())
            if biases:
                ids = list(biases)
                add = scores.new_tensor([biases[i] for i in ids])
                scores[row, ids] += add
        return scores


def decision_prior(vocabulary: TokenVocabulary, names: Sequence[str], prior: Any, prompt_length: int,
                   tool_choice: str | None) -> DecisionPrior | None:
    """The processor for a call's ``tool_prior`` option (None when there is nothing to decide).

    ``prior`` is a mapping of probabilities, or ``{"probabilities": {...}, "weight": w, "floor": f}``.
    """
    if not prior:
        return None
    if not isinstance(prior, Mapping):
        raise InputError(f"tool_prior must map tool names (and {NO_CALL!r}) to probabilities, got {type(prior).__name__}")
    settings = dict(prior) if "probabilities" in prior else {"probabilities": prior}
    probabilities = settings.pop("probabilities")
    if not isinstance(probabilities, Mapping):
        raise InputError("tool_prior['probabilities'] must map tool names to probabilities")
    unknown = sorted(set(settings) - {"weight", "floor"})
    if unknown:
        raise InputError(f"tool_prior takes probabilities, weight and floor, not {', '.join(unknown)}")
    if tool_choice not in (None, "auto", "any"):
        return None  # one tool is forced: nothing to decide
    weight = float(settings.get("weight", 1.0))
    if weight == 0:
        return None
    return DecisionPrior(vocabulary, names, probabilities, prompt_length, weight=weight,
                         floor=float(settings.get("floor", DEFAULT_FLOOR)), decide_call=tool_choice in (None, "auto"))


__all__ = ["NAME_HEAD", "NO_CALL", "DecisionPrior", "decision_prior", "normalised_prior", "opener_start_ids"]
