"""Video checks and keyframe sampling (PyAV, videos encoded on the spot), and describe_video's refusals.

No model is loaded here: every refusal must come before one would be.
"""

from __future__ import annotations

import sys

import pytest

from agent.core.errors import ToolError, VideoError
from agent.core.model_manager import ModelManager
from agent.core.videos import (
    VideoFrame,
    check_time_range,
    format_timestamp,
    probe_video,
    sample_frames,
)
from tests.videos import write_video
from tools.describe_video import DescribeVideoTool, caption_timeline, contact_sheet

pytest.importorskip("av")


@pytest.fixture(scope="module")
def three_scenes(tmp_path_factory):
    """6 s at 10 fps: red, green, blue, 2 s each."""
    return write_video(tmp_path_factory.mktemp("videos") / "scenes.mp4")


def call(tool, **args):
    return tool.invoke({"type": "tool_call", "id": "call-1", "name": tool.name, "args": args})


@pytest.mark.parametrize("suffix", [".mp4", ".mov", ".mkv", ".webm", ".gif"])
def test_every_container_is_probed_and_sampled(tmp_path, suffix):
    path = write_video(tmp_path / f"clip{suffix}")
    info = probe_video(path)
    assert (info.width, info.height) == (64, 48)
    assert info.duration_s == pytest.approx(6.0, abs=0.15)
    frames = sample_frames(info, end=info.duration_s, max_frames=6, sampling="uniform")
    assert [round(f.time_s, 1) for f in frames] == pytest.approx([0.5, 1.5, 2.5, 3.5, 4.5, 5.5], abs=0.11)


def test_scene_sampling_finds_the_cuts(three_scenes):
    info = probe_video(three_scenes)
    frames = sample_frames(info, end=info.duration_s, max_frames=8, sampling="scenes")
    assert [f.reason for f in frames] == ["scene"] * 3  # the start and two cuts, nothing in between
    assert [f.time_s for f in frames] == pytest.approx([0.0, 2.0, 4.0], abs=0.31)
    # the kept pictures are the scenes' colours
    reds = [f.image.getpixel((2, 40))[0] for f in frames]
    assert reds[0] > 200 and reds[1] < 60 and reds[2] < 60


def test_both_fills_scene_frames_with_uniform_ones(three_scenes):
    info = probe_video(three_scenes)
    frames = sample_frames(info, end=info.duration_s, max_frames=6, sampling="both")
    assert len(frames) == 6
    assert [f.time_s for f in frames] == sorted(f.time_s for f in frames)
    assert sum(f.reason == "scene" for f in frames) == 3


def test_frames_are_capped_in_count_and_pixels(three_scenes):
    info = probe_video(three_scenes)
    frames = sample_frames(info, end=info.duration_s, max_frames=2, max_frame_pixels=600)
    assert len(frames) == 2
    assert all(f.image.size[0] * f.image.size[1] <= 600 for f in frames)


def test_a_time_range_limits_the_frames(three_scenes):
    info = probe_video(three_scenes)
    begin, stop = check_time_range(info, 2.5, 3.5)
    frames = sample_frames(info, start=begin, end=stop, max_frames=4, sampling="uniform")
    assert all(2.5 <= f.time_s < 3.5 for f in frames) and len(frames) == 4


@pytest.mark.parametrize(
    ("start", "end", "message"),
    [(-1, None, "start = -1"), (7.0, None, "past the end"), (3.0, 2.0, "after start"), (0.0, 100.0, None)],
)
def test_time_ranges_are_checked(three_scenes, start, end, message):
    info = probe_video(three_scenes)
    if message is None:
        assert check_time_range(info, start, end) == (0.0, info.duration_s)  # end clipped to the length
    else:
        with pytest.raises(VideoError, match=message):
            check_time_range(info, start, end)


def test_format_timestamp():
    assert [format_timestamp(s) for s in (0, 2.04, 75.25, 3723)] == ["0:00.0", "0:02.0", "1:15.2", "1:02:03"]


def test_caption_timeline_merges_repeated_captions():
    from PIL import Image

    frames = [VideoFrame(t, Image.new("RGB", (8, 8)), "uniform") for t in (0.5, 1.5, 2.5, 3.5)]
    segments = caption_timeline(frames, ["a red square", "a red square", "a blue sky", ""], 4.0)
    assert segments == [
        {"start_s": 0.5, "end_s": 2.5, "caption": "a red square"},
        {"start_s": 2.5, "end_s": 3.5, "caption": "a blue sky"},
        {"start_s": 3.5, "end_s": 4.0, "caption": "(no caption)"},
    ]


def test_contact_sheet_is_a_grid(three_scenes):
    info = probe_video(three_scenes)
    frames = sample_frames(info, end=info.duration_s, max_frames=6)
    sheet = contact_sheet(frames, columns=4, thumb_width=40)
    assert sheet.size == (6 + 4 * 46, 6 + 2 * (30 + 18 + 6))


# -- describe_video refuses bad input before loading anything ------------------------------------
@pytest.fixture
def video_tool(tool_workspace):
    manager = ModelManager()
    tool = DescribeVideoTool(
        allowed_dirs=[tool_workspace["allowed"]], artifacts_dir=tool_workspace["artifacts"], manager=manager,
        caption_model=str(tool_workspace["root"] / "no-such-model"), device="cpu",
    )
    yield tool
    assert manager.loaded_keys() == []  # nothing was loaded for a refused video
    assert list(tool_workspace["artifacts"].iterdir()) == []


def _truncated(path, fraction=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: _truncated(write_video(d / "cut.mp4")), "not a readable video, or it is truncated"),
        (lambda d: _truncated(write_video(d / "cut.mkv")), "the file is truncated"),
        (lambda d: _truncated(write_video(d / "cut2.mp4", faststart=True)), "truncated or corrupt"),
        (lambda d: _image_named(d / "photo.mp4"), "is an image, not a video"),
        (lambda d: _text_named(d / "notes.mp4"), "not a readable video"),
        (lambda d: _text_named(d / "notes.txt"), "not a video file by its name"),
        (lambda d: _empty(d / "empty.webm"), "is empty"),
        (lambda d: d / "missing.mp4", "does not exist"),
    ],
)
def test_bad_videos_are_refused_clearly(video_tool, tool_workspace, make, message):
    path = make(tool_workspace["allowed"])
    result = call(video_tool, video=str(path))
    assert result.status == "error"
    assert message in result.content
    assert result.content.startswith("Error running describe_video with video=")


def _image_named(path):
    from PIL import Image

    Image.new("RGB", (20, 20), "red").save(path, format="PNG")
    return path


def _text_named(path):
    path.write_text("not a video at all " * 20)
    return path


def _empty(path):
    path.write_bytes(b"")
    return path


def test_huge_resolution_and_duration_are_refused(video_tool, tool_workspace):
    path = write_video(tool_workspace["allowed"] / "clip.mp4")
    video_tool.max_video_pixels = 1000
    assert "64x48 = 3,072 pixels a frame, over the limit of 1,000" in call(video_tool, video=str(path)).content
    video_tool.max_video_pixels = 10_000
    video_tool.max_seconds = 3
    content = call(video_tool, video=str(path)).content
    assert "lasts 6 s, over the limit of 3 s" in content and "start and end" in content


def test_symlink_out_of_the_allowed_folder_is_refused(video_tool, tool_workspace):
    outside = write_video(tool_workspace["outside"] / "secret.mp4")
    link = tool_workspace["allowed"] / "link.mp4"
    link.symlink_to(outside)
    content = call(video_tool, video=str(link)).content
    assert "is outside the allowed folders" in content


def test_missing_pyav_says_how_to_install(video_tool, tool_workspace, monkeypatch):
    path = write_video(tool_workspace["allowed"] / "clip.mp4")
    monkeypatch.setitem(sys.modules, "av", None)
    content = call(video_tool, video=str(path)).content
    assert "needs PyAV" in content and "pip install 'llava-agent[video]'" in content
    with pytest.raises(ToolError, match="needs PyAV"):
        probe_video(path)


# -- frames go to an attached multi-image chat model as one question -----------------------------
class RecordingVision:
    """A VisionChat that records what it was shown."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.calls: list[tuple[str, list[tuple[str, object]], str]] = []

    def max_images(self) -> int:
        return self.capacity

    def ask(self, introduction, frames, question):
        self.calls.append((introduction, list(frames), question))
        return "Red, then green at 0:02, then blue at 0:04."


def test_frames_go_to_a_multi_image_chat_model_in_one_question(tool_workspace):
    path = write_video(tool_workspace["allowed"] / "clip.mp4")
    manager = ModelManager()
    tool = DescribeVideoTool(allowed_dirs=[tool_workspace["allowed"]], artifacts_dir=tool_workspace["artifacts"],
                             manager=manager, device="cpu")
    vision = RecordingVision(capacity=4)
    tool.attach_vision_chat(vision)
    tool.attach_vision_chat(RecordingVision(capacity=8))  # the first one attached is kept
    result = call(tool, video=str(path), question="What colours appear?")
    assert result.status == "success", result.content
    assert len(vision.calls) == 1
    introduction, frames, question = vision.calls[0]
    assert question == "What colours appear?"
    assert len(frames) == 4  # max_frames 8, but the model takes 4 images
    assert [label.split(" at ")[0] for label, _ in frames] == ["Frame 1", "Frame 2", "Frame 3", "Frame 4"]
    assert "4 frames from the video clip.mp4" in introduction
    artifact = result.artifact
    assert artifact["method"] == "chat_model" and len(artifact["frames"]) == 4
    assert "Red, then green at 0:02" in result.content
    from PIL import Image

    with Image.open(artifact["path"]) as sheet:
        assert sheet.format == "PNG"
    assert manager.loaded_keys() == []  # no captioning model was needed


def test_a_single_image_chat_model_falls_back_to_captions(tool_workspace):
    tool = DescribeVideoTool(allowed_dirs=[tool_workspace["allowed"]], describe_with="auto")
    tool.attach_vision_chat(RecordingVision(capacity=1))
    assert tool._chat_capacity() == 0
    tool.describe_with = "chat_model"
    with pytest.raises(Exception, match="too few for video frames"):
        tool._chat_capacity()


def test_a_video_attached_twice_is_kept_once_under_one_name(tmp_path, three_scenes):
    from agent.app.attachments import save_video_attachment

    folder = tmp_path / "attachments"
    kept = save_video_attachment(three_scenes, folder)
    assert kept.parent == folder.resolve() and kept.name.endswith("-scenes.mp4") and kept.name.count("-") == 1
    assert save_video_attachment(kept, folder) == kept  # re-attaching an attached file keeps its name
    assert save_video_attachment(three_scenes, folder) == kept
    assert sorted(p.name for p in folder.iterdir()) == [kept.name]
