"""Held-out scores of the pair fine-tunings: retrieval recall@k (CLIP) and caption overlap (BLIP).

Pure functions over plain Python and NumPy values, tested on their own.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any


def recall_at_k(
    similarity: Any, query_captions: Sequence[str], candidate_captions: Sequence[str], ks: Sequence[int] = (1, 5)
) -> dict[str, float]:
    """Text-to-image recall@k: the share of queries with a matching candidate among their ``k`` most similar.

    ``similarity[i, j]`` scores query caption ``i`` against candidate image ``j``. A candidate
    matches when its own caption is the query's text: several held-out images may share one
    caption, and retrieving any of them is right.
    """
    import numpy as np

    scores = np.asarray(similarity, dtype=np.float64)
    if scores.shape != (len(query_captions), len(candidate_captions)):
        raise ValueError(f"similarity has shape {scores.shape}, expected ({len(query_captions)}, {len(candidate_captions)})")
    order = np.argsort(-scores, axis=1, kind="stable")
    candidates = np.asarray(candidate_captions, dtype=object)
    result = {}
    for k in ks:
        hits = [query in set(candidates[order[i, :k]]) for i, query in enumerate(query_captions)]
        result[f"recall@{k}"] = float(np.mean(hits)) if hits else 0.0
    return result


def chance_recall_at_1(captions: Sequence[str]) -> float:
    """Expected recall@1 of a random ranking over these held-out pairs (the share of same-caption candidates)."""
    counts = Counter(captions)
    return sum(counts[c] for c in captions) / (len(captions) ** 2) if captions else 0.0


def normalise_caption(text: str) -> str:
    """Lower case, single spaces, no trailing full stop: how captions are compared."""
    return " ".join(text.lower().split()).rstrip(" .")


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Share of predictions equal to their reference after :func:`normalise_caption`."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not references:
        return 0.0
    same = sum(normalise_caption(p) == normalise_caption(r) for p, r in zip(predictions, references, strict=True))
    return same / len(references)


def bleu(predictions: Sequence[str], references: Sequence[str], max_n: int = 4) -> float:
    """Corpus BLEU (0-1) with add-one smoothing of the n-gram precisions and the brevity penalty.

    One reference per prediction; words are :func:`normalise_caption`'s. Smoothing keeps short
    captions (fewer than ``max_n`` words) from scoring 0 when they are right.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    matched = [0] * max_n
    total = [0] * max_n
    hypothesis_length = reference_length = 0
    for prediction, reference in zip(predictions, references, strict=True):
        hyp, ref = normalise_caption(prediction).split(), normalise_caption(reference).split()
        hypothesis_length += len(hyp)
        reference_length += len(ref)
        for n in range(1, max_n + 1):
            hyp_grams = Counter(tuple(hyp[i : i + n]) for i in range(len(hyp) - n + 1))
            ref_grams = Counter(tuple(ref[i : i + n]) for i in range(len(ref) - n + 1))
            matched[n - 1] += sum(min(count, ref_grams[gram]) for gram, count in hyp_grams.items())
            total[n - 1] += max(len(hyp) - n + 1, 0)
    if hypothesis_length == 0:
        return 0.0
    log_precision = sum(math.log((matched[i] + 1) / (total[i] + 1)) for i in range(max_n)) / max_n
    brevity = 1.0 if hypothesis_length > reference_length else math.exp(1 - reference_length / hypothesis_length)
    return brevity * math.exp(log_precision)
