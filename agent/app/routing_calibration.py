"""Calibrating semantic routing: the threshold, margin and no-tool threshold of :class:`SemanticRouter`.

The router is fitted on half of every tool's example requests and half of every lexicon, and
scored on requests synthesised from the other halves (:func:`calibrate`), so the settings are
chosen on phrasings and slot values it never saw -- never on the held-out benchmark set.
``python bench/bench_routing.py`` runs it for the built-in tools.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agent.app.routing import NO_TOOL, SemanticRouter, features, training_requests

if TYPE_CHECKING:  # pragma: no cover
    from langchain_core.tools import BaseTool

    from memory.embedders import TextEmbedder

_SLOT_LEXICONS = ("image", "video", "subject", "style", "query", "sentence", "fact", "topic", "count")
_QUESTION_LEXICONS = ("plain", "traps", "unsupported", "clarify", "attachment_chat")


@dataclass
class Calibration:
    """The chosen threshold and margin, and how they scored on the calibration requests."""

    threshold: float
    margin: float
    routed_right: int
    routed_wrong: int
    unrouted: int
    requests: int
    grid: list[tuple[float, float, int, int]] = field(default_factory=list)
    no_tool_threshold: float = 1.0
    answered_in_words: int = 0
    """Calibration requests that need no tool and clear the no-tool threshold (none that needs one does)."""

    def summary(self) -> str:
        return (f"threshold {self.threshold:.2f}, margin {self.margin:.2f}: {self.routed_right} of {self.requests} "
                f"requests routed right, {self.routed_wrong} routed wrong, {self.unrouted} left to the model; "
                f"no-tool threshold {self.no_tool_threshold:.2f}: {self.answered_in_words} no-tool requests answered "
                "in words without asking the model, no tool request")


def split_lexicons(lexicons: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Two lexicons with no slot value and no no-tool question in common (every other entry)."""
    first, second = dict(lexicons), dict(lexicons)
    for key in (*_SLOT_LEXICONS, *_QUESTION_LEXICONS):
        if isinstance(lexicons.get(key), list) and len(lexicons[key]) > 1:
            first[key], second[key] = lexicons[key][0::2], lexicons[key][1::2]
    return first, second


def split_examples(tools: Sequence[BaseTool]) -> tuple[list[BaseTool], list[BaseTool]]:
    """Two copies of the tools with no example request in common (every other one of each tool's)."""
    from tools.examples import tool_examples

    first, second = [], []
    for tool in tools:
        examples = tool_examples(tool)
        if len(examples) < 2:
            first.append(tool)
            second.append(tool)
            continue
        for half, chosen in ((first, examples[0::2]), (second, examples[1::2])):
            half.append(tool.model_copy(update={"metadata": {**(tool.metadata or {}), "examples": list(chosen)}}))
    return first, second


def calibrate(tools: Sequence[BaseTool], embedder: TextEmbedder, *, requests: int = 450, seed: int = 7,
              wrong_cost: float = 4.0) -> Calibration:
    """Choose threshold and margin on requests the fitted router has never seen.

    The router is fitted on half of every tool's example requests and half of every lexicon; the
    calibration requests are synthesised (another seed) from the other halves, so no phrasing, slot
    value or question is shared -- as with requests users write. A wrong route
    costs ``wrong_cost`` right ones: in ``hybrid`` mode an unrouted request is still decided by
    the model, a wrongly routed one is not.
    """
    from agent.app.tool_data import default_lexicons

    fitted_on, held_back = split_lexicons(default_lexicons())
    fit_tools, held_tools = split_examples(tools)
    router = SemanticRouter(fit_tools, embedder, lexicons=fitted_on)
    texts, labels, _ = training_requests(held_tools, held_back, requests, seed)
    scored = list(zip(router.probabilities_for(features(embedder, texts)), labels, strict=True))
    best: Calibration | None = None
    grid = []
    for threshold in [round(0.20 + 0.025 * i, 3) for i in range(31)]:
        for margin in [round(0.05 * i, 2) for i in range(0, 15)]:
            right = wrong = 0
            for scores, label in scored:
                tool, _, _ = router.decide(scores, threshold, margin)
                if tool is not None:
                    right += tool == label
                    wrong += tool != label
            grid.append((threshold, margin, right, wrong))
            # ties go to the stricter setting (the grid grows stricter as it goes)
            if best is None or right - wrong_cost * wrong >= best.routed_right - wrong_cost * best.routed_wrong:
                best = Calibration(threshold, margin, right, wrong, len(scored) - right - wrong, len(scored))
    assert best is not None
    best.grid = grid
    # the lowest no-tool threshold at which no calibration request that needs a tool would be answered in words
    needs_tool = [scores[NO_TOOL] for scores, label in scored if label != NO_TOOL]
    for candidate in [round(0.20 + 0.05 * i, 2) for i in range(17)]:
        if all(p < candidate for p in needs_tool):
            best.no_tool_threshold = candidate
            break
    best.answered_in_words = sum(1 for scores, label in scored
                                 if label == NO_TOOL and scores[NO_TOOL] >= best.no_tool_threshold
                                 and router.decide(scores, best.threshold, best.margin)[0] is None)
    return best


__all__ = ["Calibration", "calibrate", "split_examples", "split_lexicons"]
