"""A call starts only with <tool_call> at the start of a line, outside fenced blocks: quoting stays text."""

from __future__ import annotations

import pytest

from agent.decoding.tool_protocol import call_opener_positions, format_tool_call, parse_tool_calls

CALL = format_tool_call("caption_image", {"image": "cat.png", "detail": "short"})


@pytest.mark.parametrize(
    "text",
    [
        CALL,
        "  \n " + CALL,
        "Let me look.\n" + CALL,
        "Two at once.\n" + CALL + "\n" + CALL,
        "The file `<tool_call>.png` was found.\n" + CALL,
        "```\n<tool_call>\n```\n" + CALL,
    ],
)
def test_calls_at_a_line_start_are_parsed(text):
    content, calls = parse_tool_calls(text)
    assert calls and all(c["name"] == "caption_image" for c in calls)
    assert "{" not in content


@pytest.mark.parametrize(
    "text",
    [
        "The file <tool_call>.png was found.",
        "A quoted tag `<tool_call>` in a sentence.",
        "Indented:\n    " + CALL,
        "```\n" + CALL + "\n```",
        "~~~\n" + CALL + "\n~~~\nend",
        'The name is "x <tool_call>\ny".',
    ],
)
def test_quoted_or_mid_line_tags_are_text(text):
    content, calls = parse_tool_calls(text)  # never raises on a quoted tag, even an unclosed one
    assert calls == [] and content == text.strip()


def test_positions_skip_fenced_blocks_and_mid_line_tags():
    text = "a <tool_call> b\n```\n<tool_call>\n```\n<tool_call>"
    assert call_opener_positions(text) == [len(text) - len("<tool_call>")]
