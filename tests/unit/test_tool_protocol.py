"""The tool protocol: schema conversion, call formatting, parsing and turn rewriting."""

from __future__ import annotations

import json
import re
from typing import Literal, Optional

import pytest
from langchain_core.tools import tool
from pydantic import BaseModel, Field

from agent.core.errors import InputError
from agent.decoding.tool_protocol import (
    TOOL_CALL_CLOSE,
    TOOL_CALL_OPEN,
    ToolCallParseError,
    format_tool_call,
    format_tool_calls,
    format_tool_response,
    parse_tool_calls,
    to_template_turns,
    tools_system_prompt,
)
from agent.llava.messages import tool_schemas


@tool
def caption_image(image: str, detail: Literal["short", "detailed"] = "short") -> str:
    """Describe an image file."""
    return f"{image}:{detail}"


class SearchImages(BaseModel):
    """Find indexed images matching a text query."""

    query: str = Field(description="what to look for")
    k: int = Field(4, description="how many results")


def speak(text: str, voice: Optional[str] = None, speed: float = 1.0) -> str:
    """Read text aloud.

    Args:
        text: what to say
        voice: espeak voice name
        speed: speaking rate
    """
    return text


CAPTION_DICT = {
    "type": "function",
    "function": {
        "name": "caption_dict",
        "description": "a dict tool",
        "parameters": {"type": "object", "properties": {"image": {"type": "string"}}, "required": ["image"]},
    },
}


def test_tool_schemas_accepts_every_tool_kind():
    schemas = tool_schemas([caption_image, SearchImages, speak, CAPTION_DICT])
    names = [schema["function"]["name"] for schema in schemas]
    assert names == ["caption_image", "SearchImages", "speak", "caption_dict"]
    for schema in schemas:
        assert schema["type"] == "function"
        assert set(schema["function"]) >= {"name", "description", "parameters"}
        assert schema["function"]["parameters"]["type"] == "object"
    assert schemas[0]["function"]["parameters"]["properties"]["detail"]["enum"] == ["short", "detailed"]
    assert schemas[1]["function"]["parameters"]["required"] == ["query"]


def test_tool_schemas_rejects_duplicates_and_garbage():
    with pytest.raises(InputError, match="two tools are named 'caption_image'"):
        tool_schemas([caption_image, caption_image])
    with pytest.raises(InputError, match="tool #0"):
        tool_schemas([42])


def test_tools_system_prompt_lists_one_schema_per_line():
    schemas = tool_schemas([caption_image, speak])
    prompt = tools_system_prompt(schemas)
    block = re.search(r"<tools>\n(.*)\n</tools>", prompt, re.S)
    assert block is not None
    assert [json.loads(line) for line in block.group(1).split("\n")] == schemas
    assert TOOL_CALL_OPEN in prompt and TOOL_CALL_CLOSE in prompt


@pytest.mark.parametrize(
    "arguments",
    [{}, {"image": "cat.png", "detail": "short"}, {"text": 'héllo "wörld"\n', "speed": 1.5, "voice": None}],
)
def test_format_tool_call_is_exact_json_dumps(arguments):
    text = format_tool_call("tool_x", arguments)
    expected = json.dumps({"name": "tool_x", "arguments": arguments}, ensure_ascii=False)
    assert text == f"<tool_call>\n{expected}\n</tool_call>"
    content, calls = parse_tool_calls(text)
    assert content == ""
    assert [(c["name"], c["args"]) for c in calls] == [("tool_x", arguments)]
    assert re.fullmatch(r"call_[0-9a-f]{32}", calls[0]["id"])


def test_format_tool_calls_accepts_hf_flat_and_langchain_forms():
    hf = {"type": "function", "function": {"name": "a", "arguments": {"x": 1}}}
    openai = {"type": "function", "function": {"name": "b", "arguments": '{"y": "z"}'}}
    langchain = {"name": "c", "args": {}, "id": "call_1"}
    text = format_tool_calls([hf, openai, langchain])
    assert text == "\n".join(
        [format_tool_call("a", {"x": 1}), format_tool_call("b", {"y": "z"}), format_tool_call("c", {})]
    )
    with pytest.raises(InputError, match="arguments"):
        format_tool_calls([{"name": "a", "arguments": "[1, 2]"}])
    with pytest.raises(InputError, match="no function name"):
        format_tool_calls([{"function": {"arguments": {}}}])


def test_parse_keeps_text_and_several_calls_in_order():
    calls_text = format_tool_calls([{"name": "a", "arguments": {"n": 1}}, {"name": "b", "arguments": {}}])
    content, calls = parse_tool_calls("Let me check.\n" + calls_text)
    assert content == "Let me check."
    assert [c["name"] for c in calls] == ["a", "b"]
    assert len({c["id"] for c in calls}) == 2


@pytest.mark.parametrize(
    "text",
    ["Just an answer.", "", "a stray </tool_call> closer is text", "tool_call without brackets"],
)
def test_parse_plain_text_has_no_calls(text):
    content, calls = parse_tool_calls(text)
    assert calls == []
    assert content == text.strip()


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('<tool_call>\n{"name": "a", "arguments": {}}', "unclosed"),
        ("<tool_call>\n{not json}\n</tool_call>", "not valid JSON"),
        ('<tool_call>\n["a"]\n</tool_call>', 'string "name"'),
        ('<tool_call>\n{"arguments": {}}\n</tool_call>', 'string "name"'),
        ('<tool_call>\n{"name": "a", "arguments": [1]}\n</tool_call>', '"arguments"'),
    ],
)
def test_parse_malformed_block_raises_quoting_the_text(text, fragment):
    with pytest.raises(ToolCallParseError, match=re.escape(fragment)) as info:
        parse_tool_calls(text)
    assert repr(text) in str(info.value)
    assert info.value.llm_output == text


def test_format_tool_response():
    assert format_tool_response("42") == "<tool_response>\n42\n</tool_response>"


def test_to_template_turns_rewrites_tools_calls_and_results():
    image = {"type": "image", "image": object()}
    schemas = tool_schemas([caption_image])
    turns = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "What is this?"}, image]},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"type": "function", "function": {"name": "caption_image", "arguments": {"image": "a"}}}
            ],
        },
        {"role": "tool", "content": "a cat", "name": "caption_image"},
        {"role": "tool", "content": [{"type": "text", "text": "second"}]},
        {"role": "assistant", "content": "A cat."},
    ]
    original = json.dumps(turns, default=id)
    out = to_template_turns(turns, schemas)
    assert json.dumps(turns, default=id) == original  # input untouched
    assert [t["role"] for t in out] == ["system", "user", "assistant", "user", "assistant"]
    assert out[0]["content"] == [{"type": "text", "text": "Be brief.\n\n" + tools_system_prompt(schemas)}]
    assert out[1]["content"][1] is image
    assert out[2]["content"] == [{"type": "text", "text": format_tool_call("caption_image", {"image": "a"})}]
    assert out[3]["content"] == [
        {"type": "text", "text": format_tool_response("a cat") + "\n" + format_tool_response("second")}
    ]
    assert out[4]["content"] == [{"type": "text", "text": "A cat."}]


def test_to_template_turns_creates_system_turn_and_keeps_text_before_calls():
    schemas = tool_schemas([speak])
    turns = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Sure.", "tool_calls": [{"name": "speak", "args": {"text": "hi"}}]},
        {"role": "tool", "content": "done"},
    ]
    out = to_template_turns(turns, schemas)
    assert out[0] == {"role": "system", "content": [{"type": "text", "text": tools_system_prompt(schemas)}]}
    assert out[2]["content"][0]["text"] == "Sure.\n" + format_tool_call("speak", {"text": "hi"})
    assert out[3]["role"] == "user"
    assert to_template_turns(turns[:1], None) == [
        {"role": "user", "content": [{"type": "text", "text": "hi"}]}
    ]


@pytest.mark.parametrize(
    ("turns", "fragment"),
    [
        ([{"role": "robot", "content": "x"}], "role 'robot'"),
        ([{"role": "user", "content": 3}], "content must be"),
        ([{"role": "user", "content": [{"text": "no type"}]}], "block 0"),
        ([{"role": "user", "content": "x", "tool_calls": [{"name": "a"}]}], "only assistant"),
        (
            [{"role": "assistant", "content": "", "tool_calls": [{"name": "a", "arguments": 5}]}],
            "JSON object",
        ),
        (["not a dict"], "turn 0"),
    ],
)
def test_to_template_turns_rejects_bad_turns(turns, fragment):
    with pytest.raises(InputError, match=re.escape(fragment)):
        to_template_turns(turns, None)
