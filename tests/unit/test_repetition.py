"""Reply-only repetition control: the prompt and tool calls are never penalised."""

from __future__ import annotations

import pytest
import torch

from agent.llava.repetition import banned_tokens, repetition_guard


@pytest.mark.parametrize(
    ("tokens", "size", "banned"),
    [
        ([1, 2, 3, 1, 2], 3, {3}),  # "1 2" was followed by 3 before
        ([1, 2, 3, 1, 2], 4, set()),
        ([5, 6, 5, 7, 5], 2, {6, 7}),
        ([1, 2], 3, set()),
        ([4, 4, 9], 1, {4, 9}),
        ([1, 2, 3], 0, set()),
    ],
)
def test_banned_tokens(tokens, size, banned):
    assert banned_tokens(tokens, size) == banned


def test_both_controls_off_gives_no_processor():
    assert repetition_guard(5, 1.0, 0) is None


def test_penalty_applies_to_reply_tokens_only():
    guard = repetition_guard(prompt_length=3, penalty=2.0)
    input_ids = torch.tensor([[7, 8, 9, 1, 2]])  # prompt 7 8 9, reply 1 2
    scores = torch.full((1, 10), 4.0)
    scores[0, 2] = -4.0
    out = guard(input_ids, scores.clone())
    assert out[0, 1] == 2.0 and out[0, 2] == -8.0  # used in the reply: pushed down
    assert out[0, 7] == 4.0 and out[0, 9] == 4.0  # only in the prompt: untouched (copying stays possible)


def test_ngram_ban_within_the_reply():
    guard = repetition_guard(prompt_length=2, ngram_size=2)
    input_ids = torch.tensor([[3, 4, 5, 6, 5]])  # reply 5 6 5: after 5 came 6
    out = guard(input_ids, torch.zeros((1, 8)))
    assert out[0, 6] == -float("inf") and torch.isfinite(out[0, [0, 1, 2, 3, 4, 5, 7]]).all()
    prompt_only = torch.tensor([[5, 6, 5]])  # the same pattern inside the prompt bans nothing
    assert torch.isfinite(repetition_guard(3, ngram_size=2)(prompt_only, torch.zeros((1, 8)))).all()


def test_tool_calls_are_exempt():
    mode = {"value": "tool_call"}
    guard = repetition_guard(1, penalty=3.0, ngram_size=2, active=lambda: mode["value"] != "tool_call")
    input_ids = torch.tensor([[0, 5, 6, 5]])
    scores = torch.ones((1, 8))
    assert torch.equal(guard(input_ids, scores.clone()), scores)
    mode["value"] = "text"
    assert not torch.equal(guard(input_ids, scores.clone()), scores)
