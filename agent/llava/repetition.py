"""Keep small models from looping: repetition control over the reply only, never over tool calls.

Greedy or near-greedy decoding makes small models repeat themselves (measured with the
SmolLM2-135M LLaVA: a plain question answered with one sentence repeated until
``max_new_tokens``). transformers' own ``repetition_penalty`` and ``no_repeat_ngram_size`` look at
the *whole* sequence, prompt included: they would stop the model from copying a path or a
sentence from the user's message into a tool call, or from using the words of its own system
prompt. :class:`ReplyRepetitionGuard` applies both to the tokens of the reply only, and stands
aside while the reply is a tool call (the grammar of :mod:`agent.decoding.constraint` decides those
tokens, and arguments often must repeat words).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def repetition_guard(prompt_length: int, penalty: float = 1.0, ngram_size: int = 0,
                     active: Callable[[], bool] | None = None) -> Any:
    """A ``transformers.LogitsProcessor`` for one generation, or None when both controls are off."""
    if penalty == 1.0 and ngram_size <= 0:
        return None
    from transformers import LogitsProcessor

    class ReplyRepetitionGuard(LogitsProcessor):
        """``penalty`` divides the positive logits (multiplies the negative ones) of tokens the reply
        used already; ``ngram_size`` forbids a token that would repeat an n-gram of the reply."""

        def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
            import torch

            if active is not None and not active():
                return scores
            reply = input_ids[:, prompt_length:]
            if reply.shape[1] == 0:
                return scores
            if penalty != 1.0:
                used = torch.gather(scores, 1, reply)
                used = torch.where(used < 0, used * penalty, used / penalty)
                scores = scores.scatter(1, reply, used)
            if ngram_size > 0 and reply.shape[1] >= ngram_size:
                for row in range(reply.shape[0]):
                    for token in banned_tokens(reply[row].tolist(), ngram_size):
                        scores[row, token] = -float("inf")
            return scores

    return ReplyRepetitionGuard()


def banned_tokens(tokens: list[int], ngram_size: int) -> set[int]:
    """Tokens that would complete an n-gram already in ``tokens`` (the reply so far)."""
    if ngram_size <= 0 or len(tokens) < ngram_size:
        return set()
    if ngram_size == 1:
        return set(tokens)
    prefix = tuple(tokens[len(tokens) - ngram_size + 1 :])
    banned = set()
    for start in range(len(tokens) - ngram_size + 1):
        if tuple(tokens[start : start + ngram_size - 1]) == prefix:
            banned.add(tokens[start + ngram_size - 1])
    return banned
