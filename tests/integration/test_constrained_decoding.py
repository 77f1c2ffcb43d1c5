"""Constrained decoding on the tiny random LLaVA checkpoints of both template families.

A random-weight model sampled at temperature 1.0 is the harshest writer of tool calls there is:
whatever it emits under the constraint must parse, validate against the tool's schema, and be
exactly the text the tool protocol renders.
"""

from __future__ import annotations

import json
from typing import Literal, Optional

import jsonschema
import pytest
from pydantic import BaseModel, Field

from agent.core.errors import InputError
from agent.decoding.constraint import ToolCallConstraint, json_output_constraint
from agent.decoding.tool_protocol import format_tool_calls, parse_tool_calls, to_template_turns
from agent.llava.messages import tool_schemas

pytestmark = pytest.mark.integration

ROWS = 25  # sequences per generate() call; two seeds make the 50 generations of each property
SEEDS = (0, 1)


def _product_tools() -> list:
    """The four product tools (constructing them loads no model)."""
    from tools.caption import CaptionImageTool
    from tools.generate import GenerateImageTool
    from tools.search import SearchImagesTool
    from tools.speak import SpeakTool

    return [CaptionImageTool(), GenerateImageTool(), SearchImagesTool(), SpeakTool()]


SCHEMAS = tool_schemas(_product_tools())
PARAMETERS = {s["function"]["name"]: s["function"]["parameters"] for s in SCHEMAS}


@pytest.fixture(scope="module", params=["qwen2", "llama"])
def loaded(request, tiny_llava_paths):
    """(processor, model, prompt inputs) for one family, the prompt rendered by its own template."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: threads only add scheduling noise on a shared machine
    path = tiny_llava_paths[request.param]
    processor = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    turns = to_template_turns([{"role": "user", "content": "Describe cat.png, then say it aloud."}], SCHEMAS)
    prompt = processor.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=prompt, return_tensors="pt")
    yield processor, model, inputs
    torch.set_num_threads(threads)


def _generate(loaded, processors, max_new_tokens, seed, rows=ROWS):
    import torch

    processor, model, inputs = loaded
    torch.manual_seed(seed)
    with torch.no_grad():
        output = model.generate(
            **inputs,
            logits_processor=processors,
            do_sample=True,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            max_new_tokens=max_new_tokens,
            num_return_sequences=rows,
        )
    new = output[:, inputs["input_ids"].shape[1] :]
    return [
        processor.tokenizer.decode(row, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        for row in new
    ]


def _assert_valid_calls(text: str, allowed: set[str]) -> list[dict]:
    content, calls = parse_tool_calls(text)
    assert calls, f"no call in {text!r}"
    for call in calls:
        assert call["name"] in allowed
        jsonschema.validate(call["args"], PARAMETERS[call["name"]])
    rendered = format_tool_calls(calls)
    assert text.endswith(rendered)  # the calls end the reply, byte for byte as the protocol renders them
    assert text[: len(text) - len(rendered)].strip() == content  # any text before them is the content
    return calls


def test_any_every_sampled_reply_is_valid_calls(loaded):
    processor = loaded[0]
    constraint = ToolCallConstraint.build(processor.tokenizer, SCHEMAS, "any")
    names_seen = set()
    replies = []
    for seed in SEEDS:
        processor_for_call = constraint.logits_processor(64)
        replies += _generate(loaded, [processor_for_call], 64, seed)
        assert processor_for_call.modes == ["tool_call"] * ROWS
    assert len(replies) >= 50
    for text in replies:
        calls = _assert_valid_calls(text, set(PARAMETERS))
        assert format_tool_calls(calls) == text  # nothing but calls, re-rendered byte for byte
        names_seen.update(call["name"] for call in calls)
    assert len(names_seen) >= 2  # the model really chooses among the tools


def test_named_tool_choice_only_calls_that_tool(loaded):
    constraint = ToolCallConstraint.build(loaded[0].tokenizer, SCHEMAS, "speak")
    for text in _generate(loaded, [constraint.logits_processor(48)], 48, seed=3, rows=10):
        calls = _assert_valid_calls(text, {"speak"})
        assert format_tool_calls(calls) == text


class _Steer:
    """Forces a token prefix on the first rows (runs before the constraint, which still has the last word)."""

    def __init__(self, prefix_ids: list[int], rows: int) -> None:
        self.prefix_ids, self.rows, self.start = prefix_ids, rows, None

    def __call__(self, input_ids, scores):
        if self.start is None:
            self.start = input_ids.shape[1]
        step = input_ids.shape[1] - self.start
        if step < len(self.prefix_ids):
            scores[: self.rows, self.prefix_ids[step]] += 1e4
        return scores


_SPEAK = {"name": "speak", "args": {"text": "dinner is ready"}}
_CAPTION = {"name": "caption_image", "args": {"image": "cat.png", "detail": "short"}}


def _call_ids(tokenizer, call: dict, first: bool) -> list[int]:
    """The tokens of one call (after a newline unless first), ending at its </tool_call>."""
    return tokenizer.encode(("" if first else "\n") + format_tool_calls([call]), add_special_tokens=False)


def _steered_ids(tokenizer, calls: list[dict]) -> list[int]:
    """The tokens of these calls one after another."""
    return [token for index, call in enumerate(calls) for token in _call_ids(tokenizer, call, index == 0)]


@pytest.mark.parametrize(
    ("steered", "written"),
    [
        ([_SPEAK, _SPEAK, _SPEAK], [_SPEAK, _SPEAK]),  # the repeat ends the reply
        ([_SPEAK, _CAPTION, _SPEAK, _SPEAK], [_SPEAK, _CAPTION, _SPEAK]),  # a repeat after another call too
    ],
)
def test_a_call_repeated_byte_for_byte_ends_the_reply(loaded, steered, written):
    """A model pushed to write the same call again and again stops after the first repeat (EOS only)."""
    processor = loaded[0]
    constraint = ToolCallConstraint.build(processor.tokenizer, SCHEMAS, "any")
    ids = _steered_ids(processor.tokenizer, steered)
    for choice_constraint in (constraint, ToolCallConstraint.build(processor.tokenizer, SCHEMAS, "auto")):
        (text,) = _generate(
            loaded, [_Steer(ids, 1), choice_constraint.logits_processor(200)], 200, seed=0, rows=1
        )
        assert text == format_tool_calls(written)


def test_different_calls_may_follow_each_other(loaded):
    processor = loaded[0]
    constraint = ToolCallConstraint.build(processor.tokenizer, SCHEMAS, "any")
    ids = _steered_ids(processor.tokenizer, [_SPEAK, _CAPTION, dict(_SPEAK, args={"text": "dinner is late"})])
    eos = constraint.vocabulary.eos_token_ids
    (text,) = _generate(
        loaded, [_Steer(ids + [eos[0]], 1), constraint.logits_processor(200)], 200, seed=0, rows=1
    )
    assert len(parse_tool_calls(text)[1]) == 3


def test_the_decode_loop_api_forces_the_end_after_a_repeated_call(loaded):
    """The decode loop's side: forced_run jumps to EOS, allowed_ids and apply leave only EOS."""
    import torch

    tokenizer = loaded[0].tokenizer
    constraint = ToolCallConstraint.build(tokenizer, SCHEMAS, "any")
    eos = sorted(constraint.vocabulary.eos_token_ids)
    processor = constraint.logits_processor(300)
    processor.begin()
    for index, call in enumerate([_SPEAK, _CAPTION]):  # two different calls: another may follow
        processor.accept(_call_ids(tokenizer, call, first=index == 0))
        assert processor.forced_run(200) == []
        assert len(processor.allowed_ids(200, len(tokenizer))) > len(eos)
    processor.accept(_call_ids(tokenizer, _SPEAK, first=False))
    assert processor.forced_run(200) == eos[:1]
    assert processor.allowed_ids(200, len(tokenizer)).tolist() == eos
    scores = processor.apply(torch.zeros((1, len(tokenizer))), 200)
    assert torch.isfinite(scores[0]).nonzero().flatten().tolist() == eos


def test_auto_replies_are_text_or_valid_calls(loaded):
    """Free text stays free; a reply that opens <tool_call> (at its start or after text) is finished validly."""
    processor = loaded[0]
    constraint = ToolCallConstraint.build(processor.tokenizer, SCHEMAS, "auto")
    steered = 8
    prefixes = {0: "<tool_call>", 1: "Sure.\n<tool_call>"}
    texts, called = [], 0
    for seed in SEEDS:
        prefix_ids = processor.tokenizer.encode(prefixes[seed], add_special_tokens=False)
        constrained = constraint.logits_processor(72)
        replies = _generate(loaded, [_Steer(prefix_ids, steered), constrained], 72, seed)
        for row, text in enumerate(replies):
            content, calls = parse_tool_calls(text)  # never raises
            if calls:
                called += 1
                _assert_valid_calls(text, set(PARAMETERS))
                assert constrained.modes[row] == "tool_call"
            else:
                assert constrained.modes[row] in ("text", "undecided")
                assert content == text.strip()
        assert all(constrained.modes[row] == "tool_call" for row in range(steered))
        texts += replies
    assert len(texts) >= 50
    assert called >= 2 * steered
    assert any(not parse_tool_calls(t)[1] and t.strip() for t in texts)  # free text happened too


def test_small_budget_still_finishes_every_call(loaded):
    processor = loaded[0]
    constraint = ToolCallConstraint.build(processor.tokenizer, SCHEMAS, "any")
    needed = constraint.required_new_tokens
    assert 10 < needed <= 48
    too_small = constraint.logits_processor(needed - 1)
    assert too_small.required_new_tokens == needed and not too_small.fits_budget
    for budget in sorted({needed, max(needed, 24)}):
        proc = constraint.logits_processor(budget)
        assert proc.fits_budget
        for text in _generate(loaded, [proc], budget, seed=budget, rows=10):
            calls = _assert_valid_calls(text, set(PARAMETERS))
            assert format_tool_calls(calls) == text


def test_auto_with_tiny_budget_never_opens_a_call_it_cannot_finish(loaded):
    processor = loaded[0]
    constraint = ToolCallConstraint.build(processor.tokenizer, SCHEMAS, "auto")
    prefix_ids = processor.tokenizer.encode("<tool_call>", add_special_tokens=False)
    budget = constraint.min_call_tokens - 1
    proc = constraint.logits_processor(budget)
    for text in _generate(loaded, [_Steer(prefix_ids, 10), proc], budget, seed=5, rows=10):
        content, calls = parse_tool_calls(text)
        assert calls == [] and "<tool_call>" not in text


def test_structured_json_output_validates(loaded):
    class Answer(BaseModel):
        colour: Literal["red", "green", "blue"]
        count: int = Field(ge=0, le=9)
        note: Optional[str] = None

    schema = Answer.model_json_schema()
    constraint = json_output_constraint(loaded[0].tokenizer, schema)
    for text in _generate(loaded, [constraint.logits_processor(40)], 40, seed=7, rows=10):
        value = json.loads(text)
        jsonschema.validate(value, schema)
        assert json.dumps(value, ensure_ascii=False) == text


def test_constraints_are_cached_and_tool_choice_is_checked(loaded):
    tokenizer = loaded[0].tokenizer
    first = ToolCallConstraint.build(tokenizer, SCHEMAS, "any")
    assert (
        ToolCallConstraint.build(loaded[0], SCHEMAS, "required") is first
    )  # a processor holding it works too
    assert ToolCallConstraint.build(tokenizer, SCHEMAS, "auto").automaton is first.automaton
    with pytest.raises(InputError, match="caption_image, generate_image, search_images, speak"):
        ToolCallConstraint.build(tokenizer, SCHEMAS, "paint")
    with pytest.raises(InputError, match="no tools"):
        ToolCallConstraint.build(tokenizer, [], "any")
    with pytest.raises(InputError, match="max_new_tokens"):
        first.logits_processor(0)
    special = {t for t, token in tokenizer.added_tokens_decoder.items() if token.special} - {
        tokenizer.eos_token_id
    }
    for tokens in first.automaton.tokens.values():
        assert not special & set(tokens.tolist())


# --- vocabularies: the bytes each token stands for ---------------------------------------------


def _sentencepiece_style_tokenizer():
    """A Llama-style tokenizer: "▁" for spaces, <0xXX> byte fallback, Metaspace/ByteFallback decoders."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})
    merges = []
    for char in [chr(c) for c in range(33, 127)] + ["▁", "é"]:
        vocab.setdefault(char, len(vocab))
    words = [
        "▁the",
        "▁tool",
        "_call",
        "<tool",
        '{"',
        '":',
        '▁"',
        '",',
        "name",
        "arguments",
        "▁cat",
        "ing",
        "}}",
        "\u2581{",
    ]
    for word in words:
        for end in range(2, len(word) + 1):
            if word[:end] not in vocab:
                vocab[word[:end]] = len(vocab)
                merges.append((word[: end - 1], word[end - 1]))
    raw = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True))
    raw.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    raw.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def _assert_bytes_match_decoding(tokenizer, anchor: str, seed: int) -> None:
    import random

    from agent.decoding.token_index import token_vocabulary

    vocabulary = token_vocabulary(tokenizer)
    anchor_id = tokenizer.convert_tokens_to_ids(anchor)
    ids = sorted(vocabulary.allowed_ids)
    rng = random.Random(seed)
    checked = 0
    for _ in range(400):
        sequence = rng.sample(ids, 4)
        data = b"".join(vocabulary.token_bytes[i] for i in sequence)
        try:
            expected = data.decode("utf-8")
        except UnicodeDecodeError:
            continue
        decoded = tokenizer.decode([anchor_id, *sequence], clean_up_tokenization_spaces=False)
        assert decoded == anchor + expected, sequence
        checked += 1
    assert checked > 50


def test_byte_level_vocabulary_is_exact(loaded):
    tokenizer = loaded[0].tokenizer
    _assert_bytes_match_decoding(tokenizer, "a", seed=0)


def test_sentencepiece_vocabulary_is_exact():
    from agent.decoding.token_index import token_vocabulary

    tokenizer = _sentencepiece_style_tokenizer()
    vocabulary = token_vocabulary(tokenizer)
    assert vocabulary.token_bytes[tokenizer.convert_tokens_to_ids("<0x0A>")] == b"\n"
    assert vocabulary.token_bytes[tokenizer.convert_tokens_to_ids("▁the")] == b" the"
    assert tokenizer.convert_tokens_to_ids("<s>") not in vocabulary.allowed_ids
    assert vocabulary.eos_token_ids == (tokenizer.convert_tokens_to_ids("</s>"),)
    _assert_bytes_match_decoding(tokenizer, "a", seed=1)


def _sample_with_random_logits(constraint, tokenizer, budget: int, seed: int) -> str:
    """Drive a processor like generate() does, with random logits instead of a model."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    processor = constraint.logits_processor(budget)
    ids = torch.zeros((1, 3), dtype=torch.long)
    generated: list[int] = []
    for _ in range(budget):
        scores = processor(ids, torch.randn((1, len(tokenizer)), generator=generator) * 3)
        token = int(torch.multinomial(torch.softmax(scores, -1), 1, generator=generator))
        if token in constraint.vocabulary.eos_token_ids:
            break
        generated.append(token)
        ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return tokenizer.decode(generated, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def test_sentencepiece_tokenizer_calls_are_valid():
    tokenizer = _sentencepiece_style_tokenizer()
    constraint = ToolCallConstraint.build(tokenizer, SCHEMAS, "any")
    for seed in range(12):
        text = _sample_with_random_logits(constraint, tokenizer, constraint.required_new_tokens + 30, seed)
        calls = _assert_valid_calls(text, set(PARAMETERS))
        assert format_tool_calls(calls) == text


def _sample_auto_with_random_logits(constraint, tokenizer, budget: int, seed: int, prefix_ids: list[int]):
    """Like _sample_with_random_logits in "auto" mode, the first tokens pushed towards ``prefix_ids``."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    processor = constraint.logits_processor(budget)
    ids = torch.zeros((1, 3), dtype=torch.long)
    generated: list[int] = []
    for step in range(budget):
        scores = torch.randn((1, len(tokenizer)), generator=generator) * 3
        if step < len(prefix_ids):
            scores[0, prefix_ids[step]] += 1e4
        scores = processor(ids, scores)
        token = int(torch.multinomial(torch.softmax(scores, -1), 1, generator=generator))
        if token in constraint.vocabulary.eos_token_ids:
            break
        generated.append(token)
        ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    text = tokenizer.decode(generated, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    return text, processor.mode


@pytest.mark.parametrize("tokenizer_kind", ["sentencepiece", "added_tool_tokens"])
def test_auto_mode_on_other_vocabularies(tokenizer_kind, tiny_llava_qwen2):
    """SentencePiece vocabularies, and vocabularies where <tool_call> is one added token (Qwen2.5-style)."""
    from transformers import AutoTokenizer

    if tokenizer_kind == "sentencepiece":
        tokenizer = _sentencepiece_style_tokenizer()
    else:
        tokenizer = AutoTokenizer.from_pretrained(tiny_llava_qwen2)
        tokenizer.add_tokens(["<tool_call>", "</tool_call>"])
    constraint = ToolCallConstraint.build(tokenizer, SCHEMAS, "auto")
    opener = tokenizer.encode("Ok\n<tool_call>", add_special_tokens=False)
    if tokenizer_kind == "added_tool_tokens":
        assert tokenizer.convert_tokens_to_ids("<tool_call>") in opener
    called = 0
    for seed in range(16):
        prefix = opener if seed % 2 == 0 else []
        text, mode = _sample_auto_with_random_logits(
            constraint, tokenizer, constraint.min_call_tokens + 25, seed, prefix
        )
        content, calls = parse_tool_calls(text)
        if calls:
            called += 1
            assert mode == "tool_call"
            _assert_valid_calls(text, set(PARAMETERS))
            assert content == "Ok"
        else:
            assert mode != "tool_call" and not text.lstrip().startswith("<tool_call>")
    assert called == 8
