"""speak with the Bark engine on a tiny random Bark: WAV format, duration, voice presets, cues, the model manager."""

from __future__ import annotations

import wave

import pytest

from agent.core.config import load_config
from agent.core.model_manager import ModelManager
from tools.speak import BarkSpeakInput, SpeakTool

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_torch_thread")]

SENTENCE = "Hello there, this is the little harbour town speaking to you today."


def call(tool, **args):
    return tool.invoke({"type": "tool_call", "id": "call-1", "name": tool.name, "args": args})


def wav_facts(path) -> tuple[int, float, int]:
    with wave.open(str(path)) as reader:
        return reader.getframerate(), reader.getnframes() / reader.getframerate(), reader.getnchannels()


@pytest.fixture(scope="module")
def manager():
    return ModelManager()


@pytest.fixture
def bark_tool(tiny_bark, tool_workspace, manager):
    return SpeakTool(engine="bark", bark_model=str(tiny_bark), bark_voice="v2/en_speaker_0", device="cpu",
                     artifacts_dir=tool_workspace["artifacts"], manager=manager)


def test_bark_writes_a_24khz_wav_whose_length_grows_with_the_text(bark_tool, manager, tiny_bark):
    short = call(bark_tool, text=SENTENCE).artifact
    rate, seconds, channels = wav_facts(short["path"])
    assert rate == short["sample_rate"] == 24_000 and channels == 1
    assert seconds == pytest.approx(short["duration_s"], abs=0.002) and seconds > 0.1
    assert short["engine"] == "bark" and short["voice"] == "v2/en_speaker_0"
    long_text = " ".join([SENTENCE] * 9)  # about 600 characters: three Bark chunks
    long = call(bark_tool, text=long_text).artifact
    assert wav_facts(long["path"])[0] == 24_000
    assert long["duration_s"] > 2.5 * short["duration_s"]
    assert manager.load_count == {("bark", str(tiny_bark), "cpu"): 1}  # loaded once, through the manager


def test_cues_and_songs_reach_the_model(bark_tool):
    message = call(bark_tool, text="Ha! [laughs] What a day. [sighs] ♪ la la la ♪")
    assert message.status == "success", message.content
    assert message.artifact["duration_s"] > 0


def test_voice_presets(bark_tool):
    assert call(bark_tool, text="Hi.", voice="v2/en_speaker_1").artifact["voice"] == "v2/en_speaker_1"
    assert call(bark_tool, text="Hi.", voice="en_speaker_1").status == "success"  # the v2/ prefix may be left out
    refused = call(bark_tool, text="Hi.", voice="v2/klingon_speaker_9")
    assert refused.status == "error"
    assert "is not a voice preset of the Bark model" in refused.content
    assert "v2/en_speaker_0, v2/en_speaker_1" in refused.content


def test_speed_other_than_normal_is_refused(bark_tool):
    # the schema bounds speed to 1.0 (so constrained decoding never writes another), and a caller
    # passing one anyway reads the refusal
    message = call(bark_tool, text="Hi.", speed=1.5)
    assert message.status == "error" and "speed" in message.content and "1" in message.content
    assert bark_tool.args_schema.model_json_schema()["properties"]["speed"]["maximum"] == 1.0


def test_the_model_reads_bark_arguments(bark_tool):
    assert bark_tool.args_schema is BarkSpeakInput
    assert "[laughs]" in bark_tool.tool_call_schema.model_json_schema()["properties"]["text"]["description"]


def test_bark_from_the_config(tiny_bark, tmp_path):
    config = load_config({"data_dir": str(tmp_path), "tools": {"tts_engine": "bark", "bark_model": str(tiny_bark),
                                                               "bark_voice": "v2/en_speaker_1"}}, environ={})
    tool = SpeakTool.from_config(config)
    assert (tool.engine, tool.bark_model, tool.bark_voice) == ("bark", str(tiny_bark), "v2/en_speaker_1")
