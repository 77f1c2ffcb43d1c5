"""describe_video end to end: tiny BLIP captions, the agent's own tiny multi-image LLaVA, the terminal's /video."""

from __future__ import annotations

import io
import re

import pytest
from langchain_core.messages import AIMessage, HumanMessage
from langchain_tests.integration_tests import ToolsIntegrationTests

from agent.app.multimodal_agent import MultimodalAgent
from agent.cli.terminal import TerminalChat
from agent.core.config import load_config
from agent.core.errors import VideoError
from agent.core.model_manager import ModelManager
from agent.llava.chat_model import ChatLlava
from tests.scripted_chat_model import ScriptedChatModel, tool_call
from tests.tool_models import session_tool_models
from tests.videos import write_video
from tools.describe_video import DescribeVideoTool

pytest.importorskip("av")
pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_torch_thread")]


def call(tool, **args):
    return tool.invoke({"type": "tool_call", "id": "call-1", "name": tool.name, "args": args})


@pytest.fixture
def video(tool_workspace):
    return write_video(tool_workspace["allowed"] / "party.mp4")


@pytest.fixture
def video_tool(tool_workspace, tool_model_paths):
    return DescribeVideoTool(
        caption_model=str(tool_model_paths["blip"]), device="cpu", allowed_dirs=[tool_workspace["allowed"]],
        artifacts_dir=tool_workspace["artifacts"], manager=ModelManager(), max_frames=5,
    )


def test_captions_are_merged_into_a_timeline(video_tool, video):
    result = call(video_tool, video=str(video), question="Is anyone dancing?")
    assert result.status == "success", result.content
    artifact = result.artifact
    assert artifact["method"] == "captions" and len(artifact["frames"]) == 5
    assert all(isinstance(f["caption"], str) for f in artifact["frames"])
    segments = artifact["timeline"]
    assert segments[0]["start_s"] == pytest.approx(0.0, abs=0.3) and segments[-1]["end_s"] == pytest.approx(6.0)
    assert all(a["end_s"] == b["start_s"] for a, b in zip(segments, segments[1:], strict=False))
    assert re.search(r"^0:00\.\d-0:0\d\.\d ", result.content, re.M)  # timestamped lines
    assert "The question was: Is anyone dancing?" in result.content
    from PIL import Image

    with Image.open(artifact["path"]) as sheet:
        assert sheet.format == "PNG" and sheet.size[0] > 4 * 240


def test_the_agent_shows_frames_to_its_multi_image_chat_model(tiny_llava_qwen2, video_tool, video, tmp_path):
    model = ChatLlava(model=str(tiny_llava_qwen2), quantization="none", device="cpu", max_new_tokens=6,
                      temperature=0)
    config = load_config({"data_dir": str(tmp_path / "data"), "agent": {"long_term_memory": False}}, environ={})
    agent = MultimodalAgent(model, [video_tool], config=config)
    assert video_tool.vision_chat is not None  # attached by the agent
    result = call(video_tool, video=str(video))
    assert result.status == "success", result.content
    artifact = result.artifact
    assert artifact["method"] == "chat_model"
    assert len(artifact["frames"]) == 5  # max_frames 5, the tiny qwen2 LLaVA takes 8 images
    assert isinstance(artifact["description"], str)
    assert "5 frames at 0:00.0, " in result.content
    agent.close()


def test_a_single_image_chat_model_gets_captions_instead(tiny_llava_llama, video_tool, video, tmp_path):
    model = ChatLlava(model=str(tiny_llava_llama), quantization="none", device="cpu", max_new_tokens=4)
    config = load_config({"data_dir": str(tmp_path / "data"), "agent": {"long_term_memory": False}}, environ={})
    MultimodalAgent(model, [video_tool], config=config).close()
    assert call(video_tool, video=str(video)).artifact["method"] == "captions"


def test_video_command_in_the_terminal_attaches_a_video(video_tool, video, tmp_path):
    def call_the_tool(messages):
        text = messages[-1].text if isinstance(messages[-1], HumanMessage) else ""
        path = re.search(r"\[attached video: (.+?)\]", text).group(1)
        return AIMessage("", tool_calls=[tool_call("describe_video", {"video": path})])

    model = ScriptedChatModel(replies=[call_the_tool, "It changes colour twice."])
    config = load_config(
        {"data_dir": str(tmp_path / "data"), "agent": {"long_term_memory": False},
         "tools": {"allowed_dirs": [str(video.parent), str(tmp_path / "data")]}},
        environ={},
    )
    video_tool.allowed_dirs = config.allowed_dirs
    out = io.StringIO()
    terminal = TerminalChat(config, output=out, agent_factory=lambda c: MultimodalAgent(model, [video_tool], config=c))
    terminal._loader.start()
    terminal._run_command(f"/video {video}")
    assert terminal.prompt_text() == "you [1 video]> "
    reply = terminal.turn("What happens in it?")
    printed = out.getvalue()
    assert "[tool done] describe_video: Timeline of video" in printed
    assert reply.text == "It changes colour twice." and terminal.pending_videos == []
    first_message = model.calls[0][-1].text
    assert "[attached video: " in first_message and "party.mp4]" in first_message
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    with pytest.raises(VideoError, match="not a video file by its name"):
        terminal._run_command(f"/video {notes}")


class TestDescribeVideoIntegration(ToolsIntegrationTests):
    @property
    def tool_constructor(self):
        return DescribeVideoTool

    @property
    def tool_constructor_params(self) -> dict:
        paths = session_tool_models()
        folder = paths["blip"].parent
        video = folder / "standard-suite.mp4"
        if not video.exists():
            write_video(video, (("red", 1.0), ("blue", 1.0)))
        return {"caption_model": str(paths["blip"]), "device": "cpu", "allowed_dirs": [str(folder)],
                "artifacts_dir": str(folder / "artifacts"), "max_frames": 3}

    @property
    def tool_invoke_params_example(self) -> dict:
        return {"video": str(session_tool_models()["blip"].parent / "standard-suite.mp4"), "question": None}
