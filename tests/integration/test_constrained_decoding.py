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

from agent.constrained import ToolCallConstraint, structured_json_constraint
from agent.errors import InputError
from agent.tool_protocol import format_tool_calls, parse_tool_calls, to_template_turns, tool_schemas

pytestmark = pytest.mark.integration

ROWS = 25  # sequences per generate() call; two seeds make the 50 generations of each property
SEEDS = (0, 1)


class caption_image(BaseModel):  # noqa: N801 - named like the product tool
    """Describe an image file."""

    image: str = Field(description="path of the image")
    detail: Literal["short", "detailed"] = "short"


class generate_image(BaseModel):  # noqa: N801
    """Make an image from a text prompt."""

    prompt: str
    negative_prompt: Optional[str] = None
    width: int = Field(512, ge=64, le=2048)
    height: int = Field(512, ge=64, le=2048)
    steps: int = Field(4, ge=1, le=100)
    seed: Optional[int] = None


class search_images(BaseModel):  # noqa: N801
    """Find indexed images matching a query."""

    query: str
    k: int = Field(4, ge=1, le=50)


class speak(BaseModel):  # noqa: N801
    """Read text aloud."""

    text: str
    voice: Optional[str] = None
    speed: float = Field(1.0, ge=0.5, le=2.0)


SCHEMAS = tool_schemas([caption_image, generate_image, search_images, speak])
PARAMETERS = {s["function"]["name"]: s["function"]["parameters"] for s in SCHEMAS}


@pytest.fixture(scope="module", params=["qwen2", "llama"])
def loaded(request, tiny_llava_paths):
    """(processor, model, prompt inputs) for one family, the prompt rendered by its own template."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    torch.set_num_threads(1)  # tiny model: threads only add scheduling noise on a shared machine
    path = tiny_llava_paths[request.param]
    processor = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    turns = to_template_turns([{"role": "user", "content": "Describe cat.png, then say it aloud."}], SCHEMAS)
    prompt = processor.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=prompt, return_tensors="pt")
    return processor, model, inputs


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
    constraint = structured_json_constraint(loaded[0].tokenizer, schema)
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
