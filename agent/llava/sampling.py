"""How the decode loop chooses each token: processors, the constraint, few-row logits, sampling, drafts.

``generate``'s order is kept: the generation config's repetition penalty and the caller's logits
processors (given the prompt and every token so far), then the constraint's mask, then
temperature, top-k, top-p and a draw from the softmax (the argmax at temperature 0). Where the
constraint allows few tokens only their rows of the head are computed (:func:`_scores`). A token
drafted by prompt lookup is kept or replaced by :func:`_judge` so that every token still comes
out with the model's probability (:meth:`Sampler.judge`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from agent.llava.output_head import RESCORED

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch

    from agent.llava.decode_setup import DecodeStats
    from agent.llava.output_head import OutputHead

FEW_ROWS = 8192
"""At most this many allowed tokens: compute only their rows of the head."""


class Sampler:
    """Pick a token from a row of (already masked) logits the way ``generate`` does."""

    def __init__(self, temperature: float, top_p: float, top_k: int | None) -> None:
        self.greedy = temperature <= 0
        self.temperature = temperature
        self.top_p = top_p
        self.top_k = top_k or 0

    def pick(self, logits: torch.Tensor) -> int:
        """Index into the last dimension of a (1, n) float32 tensor."""
        import torch

        if self.greedy:
            return int(torch.argmax(logits, dim=-1)[0])
        return int(torch.multinomial(self.probabilities(logits), num_samples=1)[0, 0])

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """The (1, n) distribution :meth:`pick` draws from when sampling."""
        import torch

        scores = logits / self.temperature if self.temperature != 1.0 else logits
        if self.top_k:
            k = min(self.top_k, scores.shape[-1])
            threshold = torch.topk(scores, k)[0][..., -1, None]
            scores = scores.masked_fill(scores < threshold, -float("inf"))
        if self.top_p < 1.0:
            ordered, indices = torch.sort(scores, descending=False)
            cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
            remove = cumulative <= (1 - self.top_p)
            remove[..., -1:] = False
            scores = scores.masked_fill(remove.scatter(1, indices, remove), -float("inf"))
        return torch.softmax(scores, dim=-1)

    def judge(self, logits: torch.Tensor, draft: int) -> int | None:
        """Keep a drafted token (None) or name the token to write instead.

        Exact for a draft that proposes one token with certainty (speculative sampling): greedy
        keeps it when it is the argmax; sampling keeps it with probability ``p(draft)`` and
        otherwise draws from ``p`` without it, so every token comes out with probability ``p``.
        """
        import torch

        if self.greedy:
            best = int(torch.argmax(logits, dim=-1)[0])
            return None if best == draft else best
        probabilities = self.probabilities(logits)[0]
        kept = float(probabilities[draft])
        if kept > 0.0 and float(torch.rand(())) < kept:
            return None
        probabilities[draft] = 0.0
        return int(torch.multinomial(probabilities / probabilities.sum(), num_samples=1)[0])


def _processed(
    logits: torch.Tensor, processor: Any, processors: Sequence[Any], history: _History | None, remaining: int
) -> torch.Tensor:
    """A (1, vocabulary) row of logits through the logits processors and the constraint (as ``_pick``)."""
    if processors:
        assert history is not None
        for step in processors:
            logits = step(history.view(), logits)
    if processor is not None:
        processor.apply(logits, remaining)
    return logits


def config_processors(generation_config: Any) -> list[Any]:
    """The logits processors ``generate`` builds from the generation config that this loop runs too."""
    penalty = getattr(generation_config, "repetition_penalty", None)
    if penalty is None or float(penalty) == 1.0:
        return []
    from transformers import RepetitionPenaltyLogitsProcessor

    return [RepetitionPenaltyLogitsProcessor(penalty=float(penalty))]


class _History:
    """The prompt and the tokens so far as one (1, n) tensor, for logits processors."""

    def __init__(self, prompt: Any, max_new_tokens: int, device: Any) -> None:
        import torch

        self.ids = torch.empty((1, len(prompt) + max_new_tokens), dtype=torch.long, device=device)
        self.ids[0, : len(prompt)] = torch.from_numpy(prompt).to(device)
        self.length = len(prompt)

    def extend(self, new: list[int]) -> None:
        import torch

        end = min(self.length + len(new), self.ids.shape[1])
        self.ids[0, self.length : end] = torch.tensor(new[: end - self.length], dtype=torch.long)
        self.length = end

    def view(self) -> torch.Tensor:
        return self.ids[:, : self.length]


def _scores(
    hidden: torch.Tensor,
    head: OutputHead,
    processor: Any,
    remaining: int,
    stats: DecodeStats,
    few_rows: bool,
    processors: Sequence[Any] = (),
    history: _History | None = None,
) -> tuple[np.ndarray | None, torch.Tensor | None]:
    """What the next token is drawn from: ``(ids, logits)``.

    When the constraint allows few tokens, ``ids`` are those (sorted) and ``logits`` their rows
    only (None when a single token is allowed); otherwise ``ids`` is None and ``logits`` covers
    the whole vocabulary, through the processors and the constraint's mask.
    """
    import torch

    allowed = (
        processor.allowed_ids(remaining, head.vocab_size) if processor is not None and few_rows else None
    )
    if allowed is not None and 0 < allowed.size <= FEW_ROWS:
        stats.few_row_steps += 1
        if allowed.size == 1:
            return allowed, None
        ids = torch.from_numpy(allowed).to(hidden.device)
        rows = head.rows(hidden, ids)
        if processors:  # the allowed rows in a row of -inf (what the mask leaves), through the processors
            assert history is not None
            full = torch.full((1, head.vocab_size), -float("inf"), dtype=rows.dtype, device=rows.device)
            full[:, ids] = rows
            for step in processors:
                full = step(history.view(), full)
            rows = full[:, ids]
        return allowed, rows
    logits = head.screen(hidden)
    if head.quantized:
        # the copy's best tokens *after* the processors and the mask are rescored, so a constraint
        # or a penalty that rules out the copy's overall favourites still gets exact logits
        probe = _processed(logits.clone(), processor, processors, history, remaining) if (
            processor is not None or processors) else logits
        head.rescore(hidden, logits, probe.topk(min(RESCORED, head.vocab_size), dim=-1).indices[0])
    return None, _processed(logits, processor, processors, history, remaining)


def _pick(hidden: torch.Tensor, head: OutputHead, processor: Any, sampler: Sampler, *args: Any) -> int:
    """The next token (arguments after ``sampler`` as :func:`_scores` takes them)."""
    ids, logits = _scores(hidden, head, processor, *args)
    if logits is None:
        return int(ids[0])
    index = sampler.pick(logits)
    return int(ids[index]) if ids is not None else index


def _judge(hidden: torch.Tensor, head: OutputHead, processor: Any, sampler: Sampler, token: int, *args: Any) -> int | None:
    """Keep the drafted ``token`` (None) or the token to write instead (see :meth:`Sampler.judge`)."""
    import numpy as np

    ids, logits = _scores(hidden, head, processor, *args)
    if ids is None:
        return sampler.judge(logits, token)
    where = np.flatnonzero(ids == token)
    if logits is None:  # one token allowed
        return None if where.size else int(ids[0])
    if not where.size:  # the draft is not allowed here: a plain pick
        return int(ids[sampler.pick(logits)])
    instead = sampler.judge(logits, int(where[0]))
    return None if instead is None else int(ids[instead])
