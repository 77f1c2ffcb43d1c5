"""speak end to end on the real espeak-ng and on a tiny random VITS."""

from __future__ import annotations

import wave
from pathlib import Path

import pytest
from langchain_tests.integration_tests import ToolsIntegrationTests

from agent.core.errors import InputError
from tests.tool_models import session_tool_models
from tools.speak import SpeakTool

pytestmark = pytest.mark.integration


def call(tool, **args):
    return tool.invoke({"type": "tool_call", "id": "call-1", "name": tool.name, "args": args})


def wav_facts(path) -> tuple[int, float, int]:
    with wave.open(str(path)) as reader:
        return reader.getframerate(), reader.getnframes() / reader.getframerate(), reader.getnchannels()


@pytest.fixture
def espeak_tool(tool_workspace):
    return SpeakTool(artifacts_dir=tool_workspace["artifacts"])


def test_espeak_writes_a_wav_with_the_reported_duration(espeak_tool):
    message = call(espeak_tool, text="Hello there. This is a test of the speech tool.")
    assert message.status == "success"
    artifact = message.artifact
    rate, seconds, channels = wav_facts(artifact["path"])
    assert rate == artifact["sample_rate"] == 22050 and channels == 1
    assert seconds == pytest.approx(artifact["duration_s"], abs=0.002)
    assert 1.0 < seconds < 10.0


def test_speed_changes_the_duration(espeak_tool):
    text = "The quick brown fox jumps over the lazy dog."
    slow = call(espeak_tool, text=text, speed=0.5).artifact["duration_s"]
    fast = call(espeak_tool, text=text, speed=2.0).artifact["duration_s"]
    assert slow > 2.5 * fast


def test_long_text_is_split_and_joined(espeak_tool):
    sentence = "This sentence is about twelve words long, give or take one or two."
    one = call(espeak_tool, text=sentence).artifact["duration_s"]
    text = " ".join([sentence] * 40)  # about 2,700 characters: several chunks
    many = call(espeak_tool, text=text).artifact
    rate, seconds, _ = wav_facts(many["path"])
    assert rate == 22050
    assert 30 * one < seconds < 50 * one


def test_other_voices_work(espeak_tool):
    text = "Bonjour tout le monde."
    french = call(espeak_tool, text=text, voice="fr")
    assert french.status == "success" and french.artifact["voice"] == "fr"
    english = call(espeak_tool, text=text).artifact
    assert english["voice"] == "en"
    assert wav_facts(french.artifact["path"])[1] > 0.5
    assert Path(french.artifact["path"]).read_bytes() != Path(english["path"]).read_bytes()


def test_every_voice_the_schema_offers_speaks(espeak_tool):
    """The voice enum is what constrained decoding picks from: each one must really work."""
    options = espeak_tool.tool_call_schema.model_json_schema()["properties"]["voice"]["anyOf"]
    voices = next(o["enum"] for o in options if "enum" in o)
    assert len(voices) >= 10
    for voice in voices:
        audio, rate, seconds = espeak_tool.synthesize("Hello, one two three.", voice)
        assert audio[:4] == b"RIFF" and rate == 22050 and seconds > 0.3, voice


def test_unsupported_voice_lists_valid_ones(espeak_tool, tool_workspace):
    message = call(espeak_tool, text="hi", voice="klingon")
    assert message.status == "error"
    assert "Error running speak with voice='klingon': voice must be one of 'en', 'en-us', 'en-gb'" in message.content
    assert list(tool_workspace["artifacts"].iterdir()) == []
    with pytest.raises(InputError, match="voice 'klingon' is not supported by espeak-ng; use one of en, en-us"):
        espeak_tool.synthesize("hi", "klingon")  # the Python API checks against the engine's full list


def test_text_too_long_names_the_limit(tool_workspace):
    tool = SpeakTool(artifacts_dir=tool_workspace["artifacts"], max_chars=50)
    message = call(tool, text="word " * 20)
    assert "100 characters, over the limit of 50" in message.content
    assert list(tool_workspace["artifacts"].iterdir()) == []


def test_vits_engine_writes_a_wav(tool_model_paths, tool_workspace):
    tool = SpeakTool(engine="vits", vits_model=str(tool_model_paths["vits"]), device="cpu",
                     artifacts_dir=tool_workspace["artifacts"])
    artifact = call(tool, text="Hello there. How are you today?").artifact
    rate, seconds, channels = wav_facts(artifact["path"])
    assert rate == artifact["sample_rate"] == 16000 and channels == 1
    assert seconds == pytest.approx(artifact["duration_s"], abs=0.002) and seconds > 0
    assert artifact["engine"] == "vits"


def test_vits_refuses_a_voice(tool_model_paths, tool_workspace):
    tool = SpeakTool(engine="vits", vits_model=str(tool_model_paths["vits"]), artifacts_dir=tool_workspace["artifacts"])
    assert "voice is not an argument of speak (its arguments: text, speed)" in call(tool, text="hello", voice="en").content
    with pytest.raises(InputError, match="cannot be chosen with the VITS engine"):
        tool.synthesize("hello", "en")


class TestSpeakToolEspeakIntegration(ToolsIntegrationTests):
    @property
    def tool_constructor(self):
        return SpeakTool

    @property
    def tool_constructor_params(self) -> dict:
        return {"artifacts_dir": str(session_tool_models()["vits"].parent / "artifacts")}

    @property
    def tool_invoke_params_example(self) -> dict:
        return {"text": "Hello world.", "voice": "en", "speed": 1.0}


class TestSpeakToolVitsIntegration(ToolsIntegrationTests):
    @property
    def tool_constructor(self):
        return SpeakTool

    @property
    def tool_constructor_params(self) -> dict:
        paths = session_tool_models()
        return {"engine": "vits", "vits_model": str(paths["vits"]), "device": "cpu",
                "artifacts_dir": str(paths["vits"].parent / "artifacts")}

    @property
    def tool_invoke_params_example(self) -> dict:
        return {"text": "Hello world.", "speed": 1.0}
