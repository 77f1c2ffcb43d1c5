"""Prompt-lookup drafts (byte matching, spelling) and the exact keep-or-replace rule for a drafted token."""

from __future__ import annotations

import pytest
import torch

from agent.core.errors import InputError
from agent.decoding.prompt_lookup import MAX_DRAFT_TOKENS, PromptLookup, _whole_characters
from agent.llava.decode_setup import DecodeSettings
from agent.llava.sampling import Sampler

# a toy tokenizer: one token per byte, plus a few word tokens and a special token with no bytes
WORDS = [b" dinner", b" is", b" ready", b"dinner", b'"']
TABLE = [bytes((b,)) for b in range(256)] + WORDS + [b""]
SPECIAL = len(TABLE) - 1
IDS = {data: index for index, data in enumerate(TABLE) if data}


def spell(data: bytes) -> list[int]:
    """Longest token first, like a BPE that learnt the word tokens."""
    out, position = [], 0
    while position < len(data):
        for length in range(len(data) - position, 0, -1):
            piece = data[position : position + length]
            if piece in IDS:
                out.append(IDS[piece])
                position += length
                break
    return out


def ids(text: bytes) -> list[int]:
    return spell(text)


def test_a_copied_span_is_drafted_from_the_request_after_its_first_bytes():
    prompt = [SPECIAL, *ids(b"user: read this aloud: dinner is ready now\n"), SPECIAL]
    lookup = PromptLookup(TABLE, prompt, spell)
    lookup.extend(ids(b'{"text": "'))
    assert lookup.draft() == []  # nothing of the span written yet
    lookup.extend([IDS[b"dinner"]])  # spelt without the leading space the request has
    draft = lookup.draft()
    assert draft[:3] == [IDS[b" is"], IDS[b" ready"], IDS[b" "]]
    assert len(draft) <= MAX_DRAFT_TOKENS and lookup.draft(limit=2) == draft[:2]


def test_the_longest_and_latest_match_wins():
    prompt = ids(b"cat.png then cats.jpg then cat.gif")
    lookup = PromptLookup(TABLE, prompt, spell)
    lookup.extend(ids(b"cat"))
    assert bytes(b"".join(TABLE[i] for i in lookup.draft())).startswith(b".gif")  # latest "cat"
    lookup = PromptLookup(TABLE, prompt, spell)
    lookup.extend(ids(b"cats"))
    assert b"".join(TABLE[i] for i in lookup.draft()).startswith(b".jpg")  # the longer match


def test_no_draft_for_short_or_unseen_suffixes_and_no_prompt_only_matches():
    lookup = PromptLookup(TABLE, ids(b"hello world"), spell)
    assert lookup.draft() == []  # the reply is empty: the prompt's own end is never a match
    lookup.extend(ids(b"wo"))
    assert lookup.draft() == []  # two bytes: too short
    lookup.extend(ids(b"x"))
    assert lookup.draft() == []  # "wox" appears nowhere
    with pytest.raises(ValueError, match="min_match"):
        PromptLookup(TABLE, [], spell, min_match=0)


def test_a_match_that_runs_into_the_reply_drafts_a_repetition():
    lookup = PromptLookup(TABLE, ids(b"x"), spell)
    lookup.extend(ids(b"abcdabc"))  # "abc" occurred earlier in the reply itself
    assert b"".join(TABLE[i] for i in lookup.draft()) == b"dabc"  # up to the end of what is written
    lookup = PromptLookup(TABLE, ids(b"abcd" + b"e" * 200), spell, max_tokens=200)
    lookup.extend(ids(b"abc"))
    drafted = b"".join(TABLE[i] for i in lookup.draft())
    assert drafted == b"d" + b"e" * 94  # 96 bytes read, the last token held back: it may be a cut word


def test_cut_utf8_characters_are_trimmed():
    text = "é🙂".encode()
    assert _whole_characters(text[1:]) == "🙂".encode()
    assert _whole_characters(text[:-1]) == "é".encode()
    assert _whole_characters(text) == text


def test_prompt_lookup_setting_is_checked():
    with pytest.raises(InputError, match="prompt_lookup"):
        DecodeSettings(prompt_lookup="sometimes")


def _judged(sampler: Sampler, logits: torch.Tensor, draft: int, draws: int) -> torch.Tensor:
    counts = torch.zeros(logits.shape[-1])
    for _ in range(draws):
        instead = sampler.judge(logits.clone(), draft)
        counts[draft if instead is None else instead] += 1
    return counts / draws


@pytest.mark.parametrize("draft", [0, 1, 3])
def test_judging_a_draft_samples_exactly_the_models_distribution(draft):
    """Keep-or-replace gives every token its probability, whatever the draft (speculative sampling)."""
    torch.manual_seed(0)
    logits = torch.tensor([[2.0, 0.5, -1.0, 1.0, -float("inf")]])
    sampler = Sampler(0.8, 0.95, None)
    expected = sampler.probabilities(logits.clone())[0]
    observed = _judged(sampler, logits, draft, 20000)
    assert observed[4] == 0  # a masked token never comes out
    assert torch.allclose(observed, expected, atol=0.012), (observed, expected)


def test_judging_greedily_keeps_only_the_argmax():
    logits = torch.tensor([[0.1, 2.0, 1.9]])
    sampler = Sampler(0.0, 1.0, None)
    assert sampler.judge(logits, 1) is None
    assert sampler.judge(logits, 2) == 1
