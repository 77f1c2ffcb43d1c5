"""Argument grounding: copied arguments are snapped to the user's words; composed ones are left alone."""

from __future__ import annotations

import pytest
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.tools import tool

from agent.app.grounding import copied_arguments, ground_value, text_spans
from agent.app.multimodal_agent import MultimodalAgent
from agent.core.config import load_config
from tests.scripted_chat_model import ScriptedChatModel, tool_call
from tools.examples import ToolExample

heard: list[dict] = []


@tool
def say(text: str, voice: str = "default") -> str:
    """Say a sentence aloud."""
    heard.append({"text": text, "voice": voice})
    return f"said {text!r}"


@tool
def paint(prompt: str) -> str:
    """Paint a picture."""
    heard.append({"prompt": prompt})
    return "painted"


@tool
def plain(text: str) -> str:
    """A tool without examples."""
    heard.append({"plain": text})
    return "ok"


say.metadata = {"examples": [ToolExample("Read this aloud: {sentence}", {"text": "{sentence}"}),
                             ToolExample("Say '{sentence}' in {voice}", {"text": "{sentence}", "voice": "{voice}"})]}
paint.metadata = {"examples": [ToolExample("Draw {subject}, {style}", {"prompt": "{subject}, {style}"}),
                               ToolExample("Paint {subject}", {"prompt": "{subject}"})]}


def test_copied_arguments_are_read_from_the_examples():
    assert copied_arguments(say) == {"text", "voice"}
    assert copied_arguments(paint) == frozenset()  # composed in one example: never touched
    assert copied_arguments(plain) == frozenset()  # no examples: never touched


@pytest.mark.parametrize("value, message, expected", [
    ("dinard is ready", "read this aloud: dinner is ready", "dinner is ready"),
    ("my favourite colour is teh", "rememeber my favourite colour is teal", "my favourite colour is teal"),
    ("Chapter one: the storm", 'could you read "Chapter one: the storm" aloud?', "Chapter one: the storm"),
    ("chapter one the storm", 'read "Chapter one: the storm" aloud', "Chapter one: the storm"),
    ("screenshot-2024-03-01.png", "describe ~/Desktop/screenshot-2024-03-01.png please",
     "~/Desktop/screenshot-2024-03-01.png"),
    ("images/lake.webp", "describe images/holiday/lake.webp for my blog.", "images/holiday/lake.webp"),
    ("asset/hero-banner.png", "Write alt text for assets/hero-banner.png", "assets/hero-banner.png"),
    ("/scans/receipt_0412.jpeg", "what does ./scans/receipt_0412.jpeg look like?", "./scans/receipt_0412.jpeg"),
    ("/shared/team.png", "what is in ../shared/team.png?", "../shared/team.png"),
    ("at pics/whiteboard.jpg", "Summarise the image at pics/whiteboard.jpg", "pics/whiteboard.jpg"),
    (r"C:\Users\ana\Pictures\cat.png", r"what is in C:\Users\ana\Pictures\cat.jpg?", r"C:\Users\ana\Pictures\cat.jpg"),
    ("My Photos/cat.png", 'describe "My Photos/cat.png"', "My Photos/cat.png"),
    ("I like green tea", "Please remember that I like green tea.", "I like green tea"),
    ("I like green tea.", "Please remember that I like green tea.", "I like green tea."),
    ("/data/attachments/ab12-kitchn.png", "describe it\n[attached image: /data/attachments/ab12-kitchen.png]",
     "/data/attachments/ab12-kitchen.png"),
])
def test_near_copies_are_snapped_to_the_users_words(value, message, expected):
    assert ground_value(value, message) == expected


@pytest.mark.parametrize("value, message", [
    ("dinner is ready", "read this aloud: dinner is ready"),  # already right
    ("Dinner is ready", "read this aloud: dinner is ready"),  # case is the model's to choose
    ("Why did the chicken cross the road? To get to the other side.", "tell me a joke out loud"),  # composed
    ("The user prefers metric units", "please remember I prefer metric units"),  # a paraphrase
    ("sliding", 'Please say "see you tomorrow" aloud'),  # nothing close: a wrong value stays wrong
    ("kitchen.png", "describe it\n[attached image: /data/attachments/ab12-kitchen.png]"),  # too far apart
    ("photos/dog.png", "is photos/cat.png sharper than photos/rat.png?"),  # ambiguous: two paths as near
    ("", "read this aloud: dinner is ready"),
])
def test_anything_else_is_left_as_written(value, message):
    assert ground_value(value, message) == value


def test_a_value_taken_from_earlier_in_the_conversation_is_left_alone():
    earlier = "search_images found: photos/dog.png (score 0.31)"
    assert ground_value("photos/dog.png", "now compare photos/cat.png with that one", earlier) == "photos/dog.png"
    assert ground_value("photos/dog.png", "now compare photos/cat.png with that one") == "photos/cat.png"


def test_spans_are_word_aligned_and_bounded():
    spans = text_spans('say "good night, moon" twice', 2)
    assert "good night" in spans and "night, moon" in spans and "good night, moon" in spans
    assert not any(span.startswith('"') or span.endswith(",") for span in spans)
    assert text_spans("word " * 401, 3) == []  # long messages are not searched


def agent_with(tmp_path, replies, **agent_settings):
    config = load_config({"data_dir": str(tmp_path / "data"),
                          "agent": {"long_term_memory": False, "routing": "model", **agent_settings},
                          "tools": {"enabled": []}}, environ={})
    return MultimodalAgent(ScriptedChatModel(replies=replies), [say, paint, plain], config=config)


def test_the_agent_runs_the_grounded_call_and_keeps_it_in_the_thread(tmp_path):
    heard.clear()
    calls = [tool_call("say", {"text": "dinard is ready"}, "c1"), tool_call("paint", {"prompt": "a lihgthouse"}, "c2"),
             tool_call("plain", {"text": "dinard is ready"}, "c3")]
    agent = agent_with(tmp_path, [AIMessage("", tool_calls=calls), "Done."])
    reply = agent.chat("read this aloud: dinner is ready, then paint a lighthouse")
    assert sorted(heard, key=str) == sorted([{"text": "dinner is ready", "voice": "default"},  # tools run concurrently
                                             {"prompt": "a lihgthouse"}, {"plain": "dinard is ready"}], key=str)
    stored = next(m for m in agent.history(reply.thread_id) if isinstance(m, AIMessage) and m.tool_calls)
    assert stored.tool_calls[0]["args"] == {"text": "dinner is ready"}
    assert [m.content for m in agent.history(reply.thread_id) if isinstance(m, ToolMessage)][0] == "said 'dinner is ready'"


def test_grounding_only_touches_the_first_call_of_a_turn_and_can_be_turned_off(tmp_path):
    heard.clear()
    first = [tool_call("plain", {"text": "x"}, "c1")]
    second = [tool_call("say", {"text": "dinard is ready"}, "c2")]  # after a tool result: copied from it, not the user
    agent = agent_with(tmp_path, [AIMessage("", tool_calls=first), AIMessage("", tool_calls=second), "Done."])
    agent.chat("read this aloud: dinner is ready")
    assert heard[-1] == {"text": "dinard is ready", "voice": "default"}

    heard.clear()
    agent = agent_with(tmp_path, [AIMessage("", tool_calls=second), "Done."], ground_arguments=False)
    agent.chat("read this aloud: dinner is ready")
    assert heard == [{"text": "dinard is ready", "voice": "default"}]
