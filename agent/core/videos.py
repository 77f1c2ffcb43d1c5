"""The video rules: which files are videos, how big and long they may be, and how keyframes are sampled.

Videos are decoded with PyAV (``pip install 'llava-agent[video]'``), which bundles FFmpeg's
libraries: no ``ffmpeg`` program is needed. :func:`probe_video` reads the container's header
(format, codec, size, duration) and refuses, before any frame is decoded, a file that is not a
video, an image or audio file renamed, a frame over :data:`~agent.core.defaults.MAX_VIDEO_PIXELS`
or a stretch longer than :data:`~agent.core.defaults.MAX_VIDEO_SECONDS`.

:func:`sample_frames` decodes the chosen time range once, front to back, and keeps:

* ``uniform`` frames: one at the middle of each of ``max_frames`` equal slices of the range;
* ``scenes`` frames: the first frame and the frames where the picture changes most (mean
  absolute difference of small colour thumbnails taken a few times a second, above
  ``scene_threshold``);
* ``both``: scene changes first, the rest filled with uniform frames that are not too close to
  a chosen one.

Only the kept frames are converted to pictures, scaled down to at most ``max_frame_pixels``, so
memory stays bounded whatever the video's length. A file that ends before its header says
(a truncated download) is refused, as is one whose packets cannot be decoded.
"""

from __future__ import annotations

import heapq
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from agent.core.defaults import (
    DESCRIBE_VIDEO_MAX_FRAMES,
    MAX_FRAME_PIXELS,
    MAX_VIDEO_PIXELS,
    MAX_VIDEO_SECONDS,
)
from agent.core.errors import ToolError, VideoError

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

logger = logging.getLogger(__name__)

VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".webm", ".mkv", ".gif"})
"""File suffixes of the accepted video files."""
VIDEO_FORMATS_HINT = "MP4, MOV, WebM, MKV or GIF"
CONTAINER_NAMES = frozenset({"mov", "mp4", "matroska", "webm", "gif"})
"""FFmpeg demuxer names accepted (a PNG renamed .mp4 opens as ``png_pipe`` and is refused)."""
INSTALL_HINT = "install PyAV with `pip install 'llava-agent[video]'` (it bundles FFmpeg; no ffmpeg program is needed)"
Sampling = Literal["uniform", "scenes", "both"]
SAMPLINGS: tuple[str, ...] = ("uniform", "scenes", "both")
SCENE_THRESHOLD = 0.12
"""Mean absolute difference (0-1) between thumbnails above which a frame starts a new scene."""
THUMBNAIL_SIDE = 24
MIN_ANALYSIS_INTERVAL_S = 0.25
MAX_ANALYSED_FRAMES = 1200
"""Thumbnails compared per call: the interval between them grows with the range's length."""


def is_video_path(path: str | os.PathLike[str]) -> bool:
    """Whether a path names a video file of an accepted kind, judged by its suffix."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def require_av() -> Any:
    """The ``av`` module, or a :class:`ToolError` saying how to install it."""
    try:
        import av
    except ImportError:
        raise ToolError(f"reading videos needs PyAV, which is not installed; {INSTALL_HINT}") from None
    return av


def format_timestamp(seconds: float) -> str:
    """``75.25`` -> ``1:15.2``; an hour or more -> ``1:02:03``."""
    seconds = max(0.0, float(seconds))
    if seconds >= 3600:
        whole = int(seconds)
        return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}:{rest:04.1f}"


@dataclass(frozen=True)
class VideoInfo:
    """What a video's header says."""

    path: Path
    container: str
    codec: str
    width: int
    height: int
    duration_s: float | None
    fps: float | None
    frame_count: int | None

    def describe(self) -> str:
        length = format_timestamp(self.duration_s) if self.duration_s is not None else "unknown length"
        return f"{length}, {self.width}x{self.height}"


@dataclass(frozen=True)
class VideoFrame:
    """One kept frame: its time in seconds, the picture, and why it was kept (``uniform`` or ``scene``)."""

    time_s: float
    image: Image.Image
    reason: str
    score: float = 0.0


def _open(av: Any, path: Path, label: str) -> Any:
    try:
        return av.open(str(path), mode="r")
    except av.error.FFmpegError as exc:
        raise VideoError(
            f"file {label!r} is not a readable video, or it is truncated or corrupt ({exc.strerror or exc}); "
            f"give a complete {VIDEO_FORMATS_HINT} file"
        ) from None


def _duration(container: Any, stream: Any) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000
    return None


def probe_video(
    path: str | os.PathLike[str],
    *,
    label: str | None = None,
    max_pixels: int = MAX_VIDEO_PIXELS,
) -> VideoInfo:
    """Read a video's header and check it: a video container with a video stream, frames within ``max_pixels``."""
    av = require_av()
    path = Path(path)
    label = label or str(path)
    container = _open(av, path, label)
    try:
        names = set(container.format.name.split(","))
        if not names & CONTAINER_NAMES:
            kind = "an image" if any(n.endswith("_pipe") for n in names) else f"a {container.format.long_name} file"
            raise VideoError(
                f"file {label!r} is {kind}, not a video; give a {VIDEO_FORMATS_HINT} file"
                + (" (use caption_image for a picture)" if kind == "an image" else "")
            )
        if not container.streams.video:
            raise VideoError(f"file {label!r} holds no video stream (audio only?); give a video file")
        stream = container.streams.video[0]
        width, height = int(stream.codec_context.width or 0), int(stream.codec_context.height or 0)
        if width <= 0 or height <= 0:
            raise VideoError(f"video {label!r} has no frame size in its header; it is corrupt, re-encode it")
        if width * height > max_pixels:
            raise VideoError(
                f"video {label!r} is {width}x{height} = {width * height:,} pixels a frame, over the limit of "
                f"{max_pixels:,}; scale it down first or raise tools.video_max_pixels"
            )
        rate = stream.average_rate or stream.guessed_rate
        return VideoInfo(
            path=path, container=container.format.name, codec=stream.codec_context.name, width=width,
            height=height, duration_s=_duration(container, stream), fps=float(rate) if rate else None,
            frame_count=int(stream.frames) or None,
        )
    finally:
        container.close()


def check_time_range(
    info: VideoInfo, start: float | None, end: float | None, max_seconds: float = MAX_VIDEO_SECONDS, label: str = ""
) -> tuple[float, float | None]:
    """The ``(start, end)`` seconds to decode, checked against the video's length and ``max_seconds``."""
    label = label or str(info.path)
    begin = 0.0 if start is None else float(start)
    if not math.isfinite(begin) or begin < 0:
        raise VideoError(f"start = {start!r} must be a number of seconds from 0")
    if end is not None and (not math.isfinite(float(end)) or float(end) <= begin):
        raise VideoError(f"end = {end!r} must be a number of seconds after start = {begin:g}")
    stop = None if end is None else float(end)
    if info.duration_s is not None:
        if begin >= info.duration_s:
            raise VideoError(
                f"start = {begin:g} s is past the end of video {label!r}, which lasts {info.duration_s:.1f} s"
            )
        stop = info.duration_s if stop is None else min(stop, info.duration_s)
    if stop is not None and stop - begin > max_seconds:
        raise VideoError(
            f"the part of video {label!r} to look at lasts {stop - begin:.0f} s, over the limit of "
            f"{max_seconds:.0f} s; give a shorter range with start and end, or raise tools.video_max_seconds"
        )
    return begin, stop


def _scaled_size(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    if width * height <= max_pixels:
        return width, height
    scale = math.sqrt(max_pixels / (width * height))
    return max(2, int(width * scale) // 2 * 2), max(2, int(height * scale) // 2 * 2)


def _thumbnail(frame: Any) -> Any:
    import numpy as np

    small = frame.reformat(width=THUMBNAIL_SIDE, height=THUMBNAIL_SIDE, format="rgb24").to_ndarray()
    return small.astype(np.float32) / 255.0


def select_frames(
    uniform: list[VideoFrame], scenes: list[VideoFrame], max_frames: int, sampling: str, span: float
) -> list[VideoFrame]:
    """The final keyframes, in time order (see the module's docstring for the three policies)."""
    if sampling == "uniform":
        chosen = uniform[:max_frames]
    elif sampling == "scenes":
        chosen = sorted(scenes, key=lambda f: -f.score)[:max_frames]
    else:
        chosen = sorted(scenes, key=lambda f: -f.score)[:max_frames]
        gap = span / (2 * max_frames) if span > 0 else 0.0
        for frame in uniform:
            if len(chosen) >= max_frames:
                break
            if all(abs(frame.time_s - other.time_s) >= gap for other in chosen):
                chosen.append(frame)
    return sorted(chosen, key=lambda f: f.time_s)


def sample_frames(
    info: VideoInfo,
    *,
    start: float = 0.0,
    end: float | None = None,
    max_frames: int = DESCRIBE_VIDEO_MAX_FRAMES,
    sampling: str = "both",
    scene_threshold: float = SCENE_THRESHOLD,
    max_frame_pixels: int = MAX_FRAME_PIXELS,
    max_seconds: float = MAX_VIDEO_SECONDS,
    label: str | None = None,
) -> list[VideoFrame]:
    """Decode ``[start, end)`` of a probed video once and return at most ``max_frames`` keyframes in time order."""
    if sampling not in SAMPLINGS:
        raise VideoError(f"sampling = {sampling!r} is not one of {', '.join(SAMPLINGS)}")
    if max_frames < 1:
        raise VideoError(f"max_frames = {max_frames} must be at least 1")
    av = require_av()
    label = label or str(info.path)
    if end is None:  # the header gives no length: read the packets' times (no decoding) to find it
        end = _scan_end(av, info, label, start, max_seconds)
    span = end - start
    interval = max(MIN_ANALYSIS_INTERVAL_S, span / MAX_ANALYSED_FRAMES)
    targets = [start + (i + 0.5) * span / max_frames for i in range(max_frames)]
    size = _scaled_size(info.width, info.height, max_frame_pixels)

    def picture(frame: Any) -> Image.Image:
        return frame.reformat(width=size[0], height=size[1], format="rgb24").to_image()

    uniform: list[VideoFrame] = []
    scene_heap: list[tuple[float, float, int, VideoFrame]] = []  # (score, -time, n, frame): the top scores
    previous_thumbnail = None
    next_analysis = start
    last_time: float | None = None
    counter = 0
    container = _open(av, info.path, label)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if start > 0:
            container.seek(int(start / stream.time_base), stream=stream, backward=True, any_frame=False)
        for frame in container.decode(stream):
            if frame.time is None:
                continue
            time_s = float(frame.time)
            if time_s < start - 1e-6:
                continue
            if time_s >= end - 1e-6:
                break
            last_time = time_s
            while targets and time_s >= targets[0] - 1e-6:
                targets.pop(0)
                if not uniform or uniform[-1].time_s != time_s:
                    uniform.append(VideoFrame(time_s, picture(frame), "uniform"))
            if time_s >= next_analysis - 1e-6:
                while next_analysis <= time_s + 1e-6:  # a fixed grid, so a cut is found within one interval
                    next_analysis += interval
                thumbnail = _thumbnail(frame)
                score = math.inf if previous_thumbnail is None else float(abs(thumbnail - previous_thumbnail).mean())
                previous_thumbnail = thumbnail
                if score >= scene_threshold:
                    counter += 1
                    item = (score, -time_s, counter, VideoFrame(time_s, picture(frame), "scene", min(score, 1.0)))
                    if len(scene_heap) < max_frames:
                        heapq.heappush(scene_heap, item)
                    elif item[:2] > scene_heap[0][:2]:
                        heapq.heapreplace(scene_heap, item)
    except av.error.FFmpegError as exc:
        raise VideoError(
            f"video {label!r} cannot be decoded past {format_timestamp(last_time or start)} ({exc.strerror or exc}); "
            "it is truncated or corrupt: re-download or re-encode it"
        ) from None
    finally:
        container.close()
    if last_time is None:
        raise VideoError(f"video {label!r} has no frames between {start:g} s and {end if end is not None else 'its end'}")
    if info.duration_s is not None:
        frame_time = 1.0 / info.fps if info.fps else 0.1
        if last_time < end - max(1.0, 3 * frame_time):
            raise VideoError(
                f"video {label!r} ends at {format_timestamp(last_time)} although its header says "
                f"{format_timestamp(info.duration_s)}; the file is truncated: re-download or re-encode it"
            )
    scenes = [item[3] for item in scene_heap]
    return select_frames(uniform, scenes, max_frames, sampling, span)


def _scan_end(av: Any, info: VideoInfo, label: str, start: float, max_seconds: float) -> float:
    """The end time of a video whose header has no length, from its packets' timestamps."""
    container = _open(av, info.path, label)
    last = None
    try:
        stream = container.streams.video[0]
        for packet in container.demux(stream):
            if packet.pts is None:
                continue
            moment = float((packet.pts + (packet.duration or 0)) * stream.time_base)
            last = moment if last is None else max(last, moment)
            if last - start > max_seconds:
                raise VideoError(
                    f"video {label!r} runs past the limit of {max_seconds:.0f} s; give a shorter range with "
                    "start and end, or raise tools.video_max_seconds"
                )
    except av.error.FFmpegError as exc:
        raise VideoError(f"video {label!r} cannot be read ({exc.strerror or exc}); it is truncated or corrupt") from None
    finally:
        container.close()
    if last is None or last <= start:
        raise VideoError(f"video {label!r} has no frames after {start:g} s")
    return last
