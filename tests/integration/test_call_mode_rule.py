"""Constrained decoding switches to call mode only at a line start outside fenced blocks.

The processor is driven with the token ids of a written reply (both tiny template families):
quoting ``<tool_call>`` mid-line, in backticks or in a fenced block leaves the reply free text
and masks none of its tokens; a call at a line start is constrained as before.
"""

from __future__ import annotations

import pytest

from agent.decoding.constraint import ToolCallConstraint
from agent.decoding.tool_protocol import format_tool_call, parse_tool_calls
from agent.llava.messages import tool_schemas

pytestmark = pytest.mark.integration


def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


SCHEMAS = tool_schemas([add])
CALL = format_tool_call("add", {"a": 1, "b": 2})


@pytest.fixture(scope="module", params=["qwen2", "llama"])
def tokenizer(request, tiny_llava_paths):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llava_paths[request.param])


def drive(tokenizer, text: str, budget: int = 200) -> tuple[str, list[str]]:
    """Feed ``text``'s tokens through an "auto" processor; returns its mode and any token it masked."""
    import torch

    constraint = ToolCallConstraint.build(tokenizer, SCHEMAS, "auto")
    processor = constraint.logits_processor(budget)
    ids = torch.zeros((1, 3), dtype=torch.long)
    masked = []
    for token in tokenizer.encode(text, add_special_tokens=False):
        scores = processor(ids, torch.zeros((1, len(tokenizer))))
        if scores[0, token] == -float("inf"):
            masked.append(tokenizer.decode([token]))
        ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    processor(ids, torch.zeros((1, len(tokenizer))))
    return processor.mode, masked


@pytest.mark.parametrize(
    "text",
    [
        "The file `<tool_call>.png` is in the album.",
        "I found x <tool_call> y.png for you.",
        "An example:\n```\n<tool_call>\n{\"name\": \"add\"}\n```\nThat is how a call looks.",
        "Indented:\n  <tool_call> stays text.",
    ],
)
def test_quoting_the_tag_is_possible_and_stays_text(tokenizer, text):
    mode, masked = drive(tokenizer, text)
    assert mode == "text" and masked == []
    assert parse_tool_calls(text) == (text.strip(), [])


@pytest.mark.parametrize("prefix", ["", "Let me add these.\n", "See `<tool_call>` here.\n", "```\nx\n```\n"])
def test_a_call_at_a_line_start_is_a_call(tokenizer, prefix):
    mode, masked = drive(tokenizer, prefix + CALL)
    assert mode == "tool_call" and masked == []
    content, calls = parse_tool_calls(prefix + CALL)
    assert [c["args"] for c in calls] == [{"a": 1, "b": 2}] and content == prefix.strip()
