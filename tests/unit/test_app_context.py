"""The context policy: older images become text references; long threads drop whole old turns."""

from __future__ import annotations

import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

from agent.app.context import (
    IMAGE_TOKENS,
    NOTE_HEADER,
    apply_image_policy,
    collect_captions,
    estimate_tokens,
    fit_to_context,
    rough_text_tokens,
)


def image_turn(text: str, path: str) -> HumanMessage:
    return HumanMessage(
        content=[
            {"type": "text", "text": f"{text}\n[attached image: {path}]"},
            {"type": "image", "base64": "iVBORw0KGgo=", "mime_type": "image/png", "extras": {"path": path}},
        ]
    )


def image_blocks(messages) -> list[str]:
    return [b["extras"]["path"] for m in messages if isinstance(m.content, list) for b in m.content
            if isinstance(b, dict) and b.get("type") == "image"]


def texts(messages) -> str:
    return "\n".join(m.text for m in messages)


THREAD = [
    image_turn("first", "/data/a.png"),
    AIMessage("", tool_calls=[{"name": "caption_image", "args": {"image": "/data/a.png"}, "id": "c1"}]),
    ToolMessage("Caption of /data/a.png: a red square", tool_call_id="c1", name="caption_image",
                artifact={"image": "/data/a.png", "caption": "a red square"}),
    AIMessage("It is a red square."),
    image_turn("second", "/data/b.png"),
    AIMessage("A blue circle."),
    image_turn("third", "/data/c.png"),
]


@pytest.mark.parametrize("max_images, kept", [(1, ["/data/c.png"]), (2, ["/data/b.png", "/data/c.png"]),
                                              (5, ["/data/a.png", "/data/b.png", "/data/c.png"]), (0, [])])
def test_newest_images_are_kept_as_pixels(max_images, kept):
    out = apply_image_policy(THREAD, max_images)
    assert image_blocks(out) == kept
    assert len(out) == len(THREAD)
    assert image_blocks(THREAD) == ["/data/a.png", "/data/b.png", "/data/c.png"], "the input is not changed"


def test_older_images_become_references_with_their_caption():
    out = texts(apply_image_policy(THREAD, 1))
    assert "[earlier image: /data/a.png — caption: a red square]" in out
    assert "[earlier image: /data/b.png]" in out
    assert "[earlier image: /data/c.png" not in out


def test_no_policy_keeps_everything():
    assert apply_image_policy(THREAD, None) == THREAD


def test_captions_come_from_successful_caption_calls_only():
    failed = [
        AIMessage("", tool_calls=[{"name": "caption_image", "args": {"image": "x.png"}, "id": "e1"}]),
        ToolMessage("Error running caption_image", tool_call_id="e1", name="caption_image", status="error"),
    ]
    assert collect_captions(THREAD + failed) == {"/data/a.png": "a red square"}


def test_estimate_counts_images_and_text():
    assert estimate_tokens(image_turn("x", "/a.png")) > IMAGE_TOKENS
    assert estimate_tokens(HumanMessage("a" * 300)) > estimate_tokens(HumanMessage("a" * 30))


def test_fitting_keeps_everything_when_it_fits():
    messages, note = fit_to_context(THREAD, 100_000)
    assert messages == THREAD and note is None


def test_fitting_drops_whole_old_turns_and_notes_them():
    long_thread = []
    for index in range(10):
        long_thread += [
            HumanMessage(f"question {index} " + "x" * 300),
            AIMessage("", tool_calls=[{"name": "add", "args": {"a": index}, "id": f"t{index}"}]),
            ToolMessage("ok", tool_call_id=f"t{index}"),
            AIMessage("answer " + "y" * 300),
        ]
    messages, note = fit_to_context(long_thread, 800)
    assert isinstance(messages[0], HumanMessage), "a kept part starts at a user turn"
    assert sum(estimate_tokens(m) for m in messages) + estimate_tokens(HumanMessage(note)) <= 800, "the note fits too"
    assert len(messages) % 4 == 0 and messages == long_thread[-len(messages):]
    assert note is not None and note.startswith(NOTE_HEADER)
    assert f"question {9 - len(messages) // 4}" in note, "the newest left-out question is named"
    messages, note = fit_to_context([HumanMessage(f"question {i} " + "x" * 3000) for i in range(10)], 6000)
    assert 1 < len(messages) < 10 and "question 0" in note, "with room, every left-out question is named"


def test_the_note_stays_small_when_the_left_out_questions_are_long_in_tokens():
    thread = [m for i in range(12) for m in (HumanMessage(f"{i} " + "请描述这张图片" * 40), AIMessage("好"))]
    thread.append(HumanMessage("最后"))
    messages, note = fit_to_context(thread, 1000)
    assert estimate_tokens(HumanMessage(note)) <= 128 and note.startswith(NOTE_HEADER)
    assert sum(estimate_tokens(m) for m in messages) + estimate_tokens(HumanMessage(note)) <= 1000


def test_text_without_a_tokenizer_is_counted_generously():
    assert rough_text_tokens("draw a lighthouse at dusk") == 9
    assert rough_text_tokens("请描述这张图片") == 15, "two tokens a character outside ASCII"


def test_the_latest_turn_is_kept_even_when_too_long():
    messages, note = fit_to_context([HumanMessage("old"), AIMessage("a"), HumanMessage("z" * 9000)], 100)
    assert [m.text[:1] for m in messages] == ["z"] and "old" in note
