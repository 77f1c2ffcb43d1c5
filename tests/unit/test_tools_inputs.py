"""Argument checks of the tools that need no model: prompts, sizes, speech text, voices, WAV joining."""

from __future__ import annotations

import io
import wave

import pytest

from agent.core.errors import InputError, ToolError
from tools.generate import MAX_SIDE, GenerateImageTool
from tools.speak import SpeakTool, join_wavs, split_sentences


def wav_bytes(frames: int, rate: int = 16000, width: int = 2) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(width)
        writer.setframerate(rate)
        writer.writeframes(b"\x01" * frames * width)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"prompt": ""}, "prompt is empty"),
        ({"prompt": "   "}, "prompt is empty"),
        ({"prompt": "x" * 5000}, "over the limit"),
        ({"width": 100}, "width = 100 must be a multiple of 8"),
        ({"height": 8}, "height = 8"),
        ({"width": MAX_SIDE + 8}, "width"),
        ({"steps": 0}, "steps = 0"),
        ({"steps": 1000}, "steps = 1000"),
        ({"guidance": -1.0}, "guidance"),
        ({"seed": -5}, "seed"),
    ],
)
def test_generate_rejects_bad_arguments(arguments, message):
    valid = {"prompt": "a cat", "width": 512, "height": 512, "steps": None, "guidance": 0.0, "seed": None}
    with pytest.raises(InputError, match=message):
        GenerateImageTool().validate(**{**valid, **arguments})


def test_generate_uses_default_steps():
    assert GenerateImageTool(default_steps=3).validate("a cat", 64, 64, None, 0.0, 1) == 3


def test_generate_bad_prompt_becomes_a_message_for_the_model(tmp_path):
    tool = GenerateImageTool(artifacts_dir=tmp_path)
    message = tool.invoke({"type": "tool_call", "id": "1", "name": "generate_image", "args": {"prompt": ""}})
    assert message.status == "error"
    assert message.content.startswith("Error running generate_image with prompt=''")
    assert "Please fix the arguments and try again." in message.content
    assert list(tmp_path.iterdir()) == []


def test_a_long_argument_is_not_repeated_whole_in_the_error_the_model_reads(tmp_path):
    tool = SpeakTool(artifacts_dir=tmp_path, max_chars=100)
    text = "Once upon a time " * 400
    message = tool.invoke({"type": "tool_call", "id": "1", "name": "speak", "args": {"text": text}})
    assert message.status == "error" and "over the limit of 100" in message.content
    assert len(message.content) < 600 and f"({len(repr(text))} characters)" in message.content
    schema = tool.invoke({"type": "tool_call", "id": "2", "name": "speak", "args": {"text": text, "speed": "fast"}})
    assert schema.status == "error" and len(schema.content) < 600  # the schema's message shortens it too


def test_tool_raises_when_errors_are_not_handled(tmp_path):
    from langchain_core.tools import ToolException

    tool = GenerateImageTool(artifacts_dir=tmp_path, handle_tool_error=False)
    with pytest.raises(ToolException) as info:
        tool.invoke({"prompt": " "})
    assert isinstance(info.value.__cause__, InputError)


def test_split_sentences_keeps_every_word_within_the_limit():
    text = "First sentence. Second one! A third? " + ("word " * 300) + "End."
    chunks = split_sentences(text, max_chars=100)
    assert all(0 < len(c) <= 100 for c in chunks)
    assert " ".join(chunks).split() == text.split()


def test_split_sentences_packs_short_sentences():
    assert split_sentences("One. Two. Three.", max_chars=100) == ["One. Two. Three."]
    assert split_sentences("One. Two. Three.", max_chars=9) == ["One. Two.", "Three."]


def test_join_wavs_concatenates_frames():
    audio, rate, seconds = join_wavs([wav_bytes(1600), wav_bytes(3200)])
    with wave.open(io.BytesIO(audio)) as reader:
        assert reader.getnframes() == 4800 and reader.getframerate() == 16000
    assert rate == 16000 and seconds == pytest.approx(0.3)


def test_join_wavs_refuses_mixed_sample_rates():
    with pytest.raises(ToolError, match="different formats"):
        join_wavs([wav_bytes(10, 16000), wav_bytes(10, 22050)])


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"text": ""}, "empty"),
        ({"text": "x" * 101}, "101 characters, over the limit of 100"),
        ({"text": "hi", "speed": 3.0}, "speed = 3.0"),
        ({"text": "hi", "speed": 0.1}, "speed"),
    ],
)
def test_speak_rejects_bad_arguments(tmp_path, arguments, message):
    tool = SpeakTool(artifacts_dir=tmp_path, max_chars=100)
    with pytest.raises(InputError, match=message):
        tool.synthesize(**arguments)
    assert list(tmp_path.iterdir()) == []


def test_missing_engine_says_how_to_install(tmp_path):
    tool = SpeakTool(artifacts_dir=tmp_path, espeak_executable="espeak-ng-not-installed-here")
    with pytest.raises(ToolError, match="not installed; install it with `sudo apt-get install espeak-ng`"):
        tool.synthesize("hello")
    message = tool.invoke({"type": "tool_call", "id": "1", "name": "speak", "args": {"text": "hello"}})
    assert "apt-get install espeak-ng" in message.content and message.status == "error"
    assert list(tmp_path.iterdir()) == []


# -- Bark's sentence splitting keeps cues and sung lines whole ------------------------------------
@pytest.mark.parametrize(
    ("text", "chunks"),
    [
        ("Hi! [laughs] Fine.", ["Hi! [laughs] Fine."]),
        ("One. Two. Three.", ["One. Two. Three."]),
        ("Well [clears throat. yes] ok. Next one here.", ["Well [clears throat. yes] ok.", "Next one here."]),
        ("♪ La la la. La la la! ♪ And now done.", ["♪ La la la. La la la! ♪ And", "now done."]),
        ("", []),
    ],
)
def test_bark_split_keeps_cues_and_songs(text, chunks):
    from tools.speak import split_bark_text

    assert split_bark_text(text, max_chars=30) == chunks


def test_bark_split_packs_long_text_into_chunks_that_keep_every_word():
    from tools.speak import split_bark_text

    text = " ".join(f"Sentence number {n} is here [sighs] and ♪ sung words ♪ too." for n in range(20))
    chunks = split_bark_text(text, max_chars=120)
    assert len(chunks) > 5 and all(len(c) <= 120 for c in chunks)
    assert " ".join(chunks).split() == text.split()
    assert all(c.count("[") == c.count("]") and c.count("♪") % 2 == 0 for c in chunks)
