"""LangChain messages -> HF-style chat turns."""

from __future__ import annotations

import base64
import io

import pytest
from langchain_core.messages import (
    AIMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from PIL import Image

from agent.core.errors import ImageError, InputError
from agent.llava.messages import messages_to_turns


def _png_b64(color="red") -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (12, 8), color).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _images(turn):
    return [b for b in turn["content"] if b["type"] == "image"]


def test_roles_and_text():
    turns = messages_to_turns(
        [
            SystemMessage("be brief"),
            HumanMessage("hi"),
            AIMessage("hello"),
            ChatMessage(role="user", content="x"),
        ]
    )
    assert [t["role"] for t in turns] == ["system", "user", "assistant", "user"]
    assert turns[0]["content"] == [{"type": "text", "text": "be brief"}]
    assert all(isinstance(t["content"], list) for t in turns)


@pytest.mark.parametrize(
    "block",
    [
        {"type": "image", "base64": _png_b64(), "mime_type": "image/png"},
        {"type": "image", "source_type": "base64", "data": _png_b64(), "mime_type": "image/png"},
        {"type": "image", "url": "data:image/png;base64," + _png_b64()},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + _png_b64()}},
        {"type": "image_url", "image_url": "data:image/png;base64," + _png_b64()},
        {"type": "image", "image": Image.new("RGB", (12, 8))},
    ],
    ids=["std-base64", "v0-base64", "std-data-url", "openai-data-url", "openai-str", "pil"],
)
def test_image_block_forms(block):
    turns = messages_to_turns([HumanMessage(content=[{"type": "text", "text": "what is it?"}, block])])
    (image_block,) = _images(turns[0])
    assert isinstance(image_block["image"], Image.Image)
    assert image_block["image"].size == (12, 8)
    assert turns[0]["content"][0] == {"type": "text", "text": "what is it?"}


def test_local_path_blocks_keep_the_file_name(tmp_path):
    path = tmp_path / "cat.png"
    path.write_bytes(base64.b64decode(_png_b64()))
    turns = messages_to_turns(
        [
            HumanMessage(
                content=[
                    {"type": "image_url", "image_url": {"url": str(path)}},
                    {"type": "image", "url": path.as_uri()},
                ]
            )
        ]
    )
    assert [b["name"] for b in _images(turns[0])] == ["cat.png", "cat.png"]


def test_remote_url_needs_opt_in():
    message = HumanMessage(content=["look", {"type": "image", "url": "https://example.com/x.png"}])
    with pytest.raises(ImageError, match="message 0, block 1: .*allow_remote_images"):
        messages_to_turns([message])


def test_bad_image_names_message_and_block():
    messages = [
        HumanMessage("first"),
        AIMessage("ok"),
        HumanMessage(content=["a", "b", {"type": "image", "base64": base64.b64encode(b"junk!").decode()}]),
    ]
    with pytest.raises(ImageError, match="message 2, block 2"):
        messages_to_turns(messages)


def test_file_id_images_are_refused():
    with pytest.raises(InputError, match="message 0, block 0: .*file id"):
        messages_to_turns([HumanMessage(content=[{"type": "image", "file_id": "file-123"}])])


def test_unknown_block_type_is_refused():
    with pytest.raises(InputError, match="message 0, block 1: block type 'audio'"):
        messages_to_turns([HumanMessage(content=["hi", {"type": "audio", "base64": "AAAA"}])])


def test_tool_calls_and_tool_messages():
    messages = [
        HumanMessage("caption it"),
        AIMessage("", tool_calls=[{"name": "caption_image", "args": {"image": "cat.png"}, "id": "call_1"}]),
        ToolMessage("A cat.", tool_call_id="call_1", name="caption_image"),
        ToolMessage("boom", tool_call_id="call_2", status="error"),
    ]
    turns = messages_to_turns(messages)
    assert turns[1]["role"] == "assistant"
    assert turns[1]["tool_calls"] == [
        {
            "type": "function",
            "id": "call_1",
            "function": {"name": "caption_image", "arguments": {"image": "cat.png"}},
        }
    ]
    assert turns[2] == {
        "role": "tool",
        "content": [{"type": "text", "text": "A cat."}],
        "name": "caption_image",
        "tool_call_id": "call_1",
    }
    assert "Error" in "".join(b["text"] for b in turns[3]["content"])


def test_reasoning_and_tool_call_blocks_are_skipped():
    message = AIMessage(
        content=[{"type": "reasoning", "reasoning": "hmm"}, {"type": "text", "text": "done"}],
    )
    assert messages_to_turns([message])[0]["content"] == [{"type": "text", "text": "done"}]


def test_unsupported_message_types():
    with pytest.raises(InputError, match="message 0 .*FunctionMessage"):
        messages_to_turns([FunctionMessage(content="x", name="f")])
    with pytest.raises(InputError, match="role 'wizard'"):
        messages_to_turns([ChatMessage(role="wizard", content="x")])
    with pytest.raises(InputError, match="message 0 is a str"):
        messages_to_turns(["hello"])


@pytest.mark.parametrize("size", [(12, 8), (40, 30), (200, 150)])
def test_base64_blocks_of_any_length_decode(size):
    """Base64 of 256 to 4095 characters once reached the file system as a path and failed there."""
    buffer = io.BytesIO()
    Image.effect_noise(size, 64).convert("RGB").save(buffer, "PNG")
    payload = base64.b64encode(buffer.getvalue()).decode()
    for block in (
        {"type": "image", "base64": payload, "mime_type": "image/png"},
        {"type": "image", "source_type": "base64", "data": payload, "mime_type": "image/png"},
    ):
        (turn,) = messages_to_turns([HumanMessage(content=[block])])
        (image,) = _images(turn)
        assert image["image"].size == size
