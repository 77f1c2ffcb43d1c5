"""``describe_video``: what happens in a video, with times, from a few keyframes.

The video is checked and its keyframes sampled by :mod:`agent.core.videos` (PyAV, uniform and
scene-change sampling, capped in count and pixels) before any model is loaded. Then:

* with a **multi-image chat model** attached (llava-interleave, llava-onevision: the agent
  attaches its own chat model through :meth:`DescribeVideoTool.attach_vision_chat`), the
  keyframes go to that model as one question holding every frame, each labelled with its time;
* otherwise each keyframe is **captioned** by the captioning model (``tools.caption_model``) and
  the captions are merged into a timeline (consecutive frames with the same caption become one
  segment).

The artifact is a contact sheet: the keyframes in a grid, each labelled with its time, written
as a PNG into the artifacts folder.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, Field

from agent.core.defaults import (
    CAPTION_MODEL,
    DESCRIBE_VIDEO_MAX_FRAMES,
    MAX_FRAME_PIXELS,
    MAX_IMAGE_PIXELS,
    MAX_VIDEO_PIXELS,
    MAX_VIDEO_SECONDS,
)
from agent.core.errors import InputError, VideoError
from agent.core.files import check_readable_file, write_new_artifact
from agent.core.videos import (
    SCENE_THRESHOLD,
    VIDEO_FORMATS_HINT,
    VideoFrame,
    check_time_range,
    format_timestamp,
    is_video_path,
    probe_video,
    sample_frames,
)
from tools.base import LlavaTool, default_allowed_dirs, default_artifacts_dir

if TYPE_CHECKING:
    from PIL import Image

    from agent.core.config import AppConfig

logger = logging.getLogger(__name__)

DEFAULT_QUESTION = "Describe what happens in the video, in order, saying at what time each thing happens."
MAX_QUESTION_CHARS = 1000
SHEET_COLUMNS = 4
SHEET_THUMB_WIDTH = 240


@runtime_checkable
class VisionChat(Protocol):
    """A chat model that answers one question about several images (the agent's own chat model).

    ``max_images()`` says how many images one prompt may hold; ``ask(text_before, frames, question)``
    sends ``frames`` (``(label, image)`` pairs, in order) between an introduction and a question
    and returns the model's answer.
    """

    def max_images(self) -> int: ...

    def ask(self, introduction: str, frames: Sequence[tuple[str, Image.Image]], question: str) -> str: ...


class DescribeVideoInput(BaseModel):
    video: str = Field(description="Path of the video file (mp4, mov, webm, mkv or gif), e.g. 'clips/party.mp4'.")
    question: str | None = Field(None, description="What to find out about the video; empty for a general description.")
    start: float | None = Field(None, description="Where to start looking, in seconds from the beginning; empty for the start.")
    end: float | None = Field(None, description="Where to stop looking, in seconds from the beginning; empty for the end.")


def contact_sheet(frames: Sequence[VideoFrame], columns: int = SHEET_COLUMNS, thumb_width: int = SHEET_THUMB_WIDTH) -> Image.Image:
    """The keyframes in a grid, each with its time written under it."""
    from PIL import Image, ImageDraw

    if not frames:
        raise InputError("no frames to put on a contact sheet")
    columns = max(1, min(columns, len(frames)))
    width, height = frames[0].image.size
    thumb_height = max(1, round(thumb_width * height / width))
    label_height, pad = 18, 6
    rows = -(-len(frames) // columns)
    sheet = Image.new(
        "RGB", (pad + columns * (thumb_width + pad), pad + rows * (thumb_height + label_height + pad)), (24, 24, 24)
    )
    draw = ImageDraw.Draw(sheet)
    for number, frame in enumerate(frames):
        row, column = divmod(number, columns)
        x = pad + column * (thumb_width + pad)
        y = pad + row * (thumb_height + label_height + pad)
        sheet.paste(frame.image.convert("RGB").resize((thumb_width, thumb_height)), (x, y))
        mark = " (scene)" if frame.reason == "scene" else ""
        draw.text((x + 2, y + thumb_height + 3), f"{number + 1}. {format_timestamp(frame.time_s)}{mark}", fill="white")
    return sheet


def caption_timeline(frames: Sequence[VideoFrame], captions: Sequence[str], end_s: float) -> list[dict[str, Any]]:
    """Merge per-frame captions into segments ``{"start_s", "end_s", "caption"}`` (same caption in a row = one)."""
    segments: list[dict[str, Any]] = []
    for index, (frame, caption) in enumerate(zip(frames, captions, strict=True)):
        until = frames[index + 1].time_s if index + 1 < len(frames) else max(end_s, frame.time_s)
        text = caption.strip() or "(no caption)"
        if segments and segments[-1]["caption"] == text:
            segments[-1]["end_s"] = until
        else:
            segments.append({"start_s": frame.time_s, "end_s": until, "caption": text})
    return segments


class DescribeVideoTool(LlavaTool):
    """Describe a video file (or part of it) from keyframes, with timestamps."""

    name: str = "describe_video"
    description: str = (
        "Describe what happens in a video file, with the times things happen, or answer a question about "
        "it. Use it when the user asks about a video or clip they gave by path."
    )
    args_schema: type[BaseModel] = DescribeVideoInput
    caption_model: str = Field(CAPTION_MODEL, description="Image-to-text checkpoint for per-frame captions.")
    caption_adapter: str | None = Field(None, description="LoRA adapter folder applied to the captioning model.")
    allowed_dirs: list[Path] | None = Field(None, description="Folders videos may be read from; None = config's.")
    artifacts_dir: Path | None = Field(None, description="Where contact sheets are written; None = config's.")
    max_frames: int = Field(DESCRIBE_VIDEO_MAX_FRAMES, ge=1, le=64, description="Keyframes looked at per call.")
    sampling: Literal["uniform", "scenes", "both"] = Field("both", description="How keyframes are chosen.")
    scene_threshold: float = Field(SCENE_THRESHOLD, gt=0, le=1, description="Picture change (0-1) that starts a scene.")
    max_frame_pixels: int = Field(MAX_FRAME_PIXELS, gt=0, description="Keyframes are scaled down to this many pixels.")
    max_video_pixels: int = Field(MAX_VIDEO_PIXELS, gt=0, description="Larger video frames are refused.")
    max_seconds: float = Field(MAX_VIDEO_SECONDS, gt=0, description="Longest stretch of video decoded per call.")
    describe_with: Literal["auto", "chat_model", "captions"] = Field(
        "auto", description="auto: the attached chat model when it takes several images, else captions."
    )
    vision_chat: Any = Field(None, exclude=True, description="The chat model frames are shown to (a VisionChat).")

    @classmethod
    def from_config(cls, config: AppConfig, manager: Any = None) -> DescribeVideoTool:
        tools = config.tools
        return cls(
            caption_model=tools.caption_model, caption_adapter=tools.caption_adapter, device=tools.device,
            allowed_dirs=config.allowed_dirs, artifacts_dir=config.artifacts_dir, max_frames=tools.describe_video_max_frames,
            sampling=tools.video_sampling, max_video_pixels=tools.video_max_pixels,
            max_seconds=tools.video_max_seconds, describe_with=tools.video_description, manager=manager,
        )

    def attach_vision_chat(self, vision_chat: VisionChat) -> None:
        """Let the tool show frames to a chat model (the agent calls this with its own; one already set is kept)."""
        if self.vision_chat is None:
            self.vision_chat = vision_chat

    # -- the two ways of describing -----------------------------------------------------------
    def _chat_capacity(self) -> int:
        if self.describe_with == "captions" or self.vision_chat is None:
            if self.describe_with == "chat_model":
                raise InputError(
                    "tools.video_description = 'chat_model' but no chat model is attached to describe_video; "
                    "use it through the agent, or set it to 'auto'"
                )
            return 0
        capacity = int(self.vision_chat.max_images())
        if self.describe_with == "chat_model" and capacity < 2:
            raise InputError(
                f"the chat model takes {capacity} image(s) per prompt, too few for video frames; use a multi-image "
                "model (llava-interleave, llava-onevision) or set tools.video_description = 'auto'"
            )
        return capacity if capacity >= 2 else 0

    def _ask_chat_model(self, name: str, frames: list[VideoFrame], question: str | None, length: str) -> str:
        introduction = (
            f"These are {len(frames)} frames from the video {name} ({length}), in time order, each labelled "
            "with its time."
        )
        labelled = [(f"Frame {n} at {format_timestamp(f.time_s)}:", f.image) for n, f in enumerate(frames, 1)]
        return self.vision_chat.ask(introduction, labelled, question or DEFAULT_QUESTION).strip()

    def _caption_frames(self, frames: list[VideoFrame]) -> list[str]:
        from tools.caption import CaptionImageTool

        captioner = CaptionImageTool(
            model=self.caption_model, adapter=self.caption_adapter, device=self.device,
            allowed_dirs=self.allowed_dirs, manager=self.get_manager(), max_image_pixels=MAX_IMAGE_PIXELS,
        )
        return captioner.caption_images([f.image for f in frames])

    # -- the tool ------------------------------------------------------------------------------
    def _execute(
        self, video: str, question: str | None = None, start: float | None = None, end: float | None = None
    ) -> tuple[str, dict[str, Any]]:
        started = time.perf_counter()
        if question is not None and len(question) > MAX_QUESTION_CHARS:
            raise InputError(f"the question has {len(question)} characters, over the limit of {MAX_QUESTION_CHARS}")
        question = question.strip() if question and question.strip() else None
        allowed = self.allowed_dirs if self.allowed_dirs is not None else default_allowed_dirs()
        resolved = check_readable_file(video, allowed)
        if not is_video_path(resolved):
            raise VideoError(f"file {video!r} is not a video file by its name; give a {VIDEO_FORMATS_HINT} file")
        info = probe_video(resolved, label=video, max_pixels=self.max_video_pixels)
        begin, stop = check_time_range(info, start, end, self.max_seconds, label=video)
        capacity = self._chat_capacity()
        frame_count = min(self.max_frames, capacity) if capacity else self.max_frames
        frames = sample_frames(
            info, start=begin, end=stop, max_frames=frame_count, sampling=self.sampling,
            scene_threshold=self.scene_threshold, max_frame_pixels=self.max_frame_pixels,
            max_seconds=self.max_seconds, label=video,
        )
        range_end = stop if stop is not None else frames[-1].time_s
        length = info.describe() if start is None and end is None else (
            f"{format_timestamp(begin)} to {format_timestamp(range_end)} of {info.describe()}"
        )
        times = ", ".join(format_timestamp(f.time_s) for f in frames)
        artifact: dict[str, Any] = {
            "video": str(resolved), "duration_s": info.duration_s, "width": info.width, "height": info.height,
            "start_s": begin, "end_s": range_end, "question": question, "sampling": self.sampling,
            "frames": [{"time_s": round(f.time_s, 3), "reason": f.reason} for f in frames],
        }
        if capacity:
            answer = self._ask_chat_model(Path(video).name, frames, question, length)
            artifact.update(method="chat_model", description=answer)
            text = f"Video {video} ({length}); {len(frames)} frames at {times}:\n{answer or '(no answer)'}"
        else:
            captions = self._caption_frames(frames)
            segments = caption_timeline(frames, captions, range_end)
            for entry, caption in zip(artifact["frames"], captions, strict=True):
                entry["caption"] = caption
            artifact.update(method="captions", model=self.caption_model, timeline=segments)
            lines = [f"{format_timestamp(s['start_s'])}-{format_timestamp(s['end_s'])} {s['caption']}" for s in segments]
            text = f"Timeline of video {video} ({length}; {len(frames)} frames captioned one by one):\n" + "\n".join(lines)
            if question:
                text += (
                    f"\nThe question was: {question} The captioning model cannot answer questions; answer it "
                    "from this timeline, and say so if the timeline does not tell."
                )
            artifact["description"] = "\n".join(lines)
        sheet = contact_sheet(frames)
        folder = self.artifacts_dir or default_artifacts_dir()
        path = write_new_artifact(folder, f"video-{Path(video).stem}", ".png", lambda tmp: sheet.save(tmp, format="PNG"))
        artifact.update(path=str(path), seconds=round(time.perf_counter() - started, 3))
        return f"{text}\nContact sheet of the frames: {path}", artifact
