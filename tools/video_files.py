"""Writing generated clips: an H.264 MP4 through PyAV (no ffmpeg program needed) and a contact sheet.

PyAV's wheels carry their own FFmpeg libraries with the libx264 encoder. The MP4 is written
in ``yuv420p`` (what every browser and player decodes) with the index at the front
(``+faststart``) so a web page can start playing it before it has all of it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.core.errors import ToolError
from tools.base import require_package

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    from PIL import Image

VIDEO_CODEC = "libx264"
SHEET_COLUMNS = 4
SHEET_FRAMES = 8
SHEET_THUMB_WIDTH = 256


def frames_to_uint8(frames: Any) -> np.ndarray:
    """Frames as ``uint8 [N, H, W, 3]``, from floats in [0, 1] (a pipeline's ``np`` output) or from uint8."""
    import numpy as np

    array = np.asarray(frames)
    if array.ndim == 5 and array.shape[0] == 1:  # a batch of one clip
        array = array[0]
    if array.ndim != 4 or array.shape[-1] != 3:
        raise ToolError(f"the pipeline returned frames of shape {array.shape}, not [frames, height, width, 3]")
    if array.dtype != np.uint8:
        array = (np.clip(np.nan_to_num(array.astype(np.float32)), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return array


def write_mp4(frames: np.ndarray, fps: int, path: str | Path, metadata: dict[str, Any] | None = None) -> None:
    """Encode ``uint8 [N, H, W, 3]`` frames as an H.264 MP4 at ``fps`` (even width and height needed).

    ``metadata`` goes into the container: its ``prompt`` as the title, everything as JSON in the comment.
    """
    av = require_package("av", "video", "writing MP4 files")
    count, height, width, _ = frames.shape
    if count == 0:
        raise ToolError("no frames were generated")
    if width % 2 or height % 2:
        raise ToolError(f"H.264 in yuv420p needs an even width and height, got {width}x{height}")
    container = av.open(str(path), mode="w", format="mp4", options={"movflags": "+faststart"})
    try:
        if metadata:
            container.metadata["title"] = str(metadata.get("prompt", ""))
            container.metadata["comment"] = json.dumps(metadata, ensure_ascii=False, default=str)
        stream = container.add_stream(VIDEO_CODEC, rate=int(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "18", "preset": "medium"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    finally:
        container.close()


def sheet_frame_indices(count: int, wanted: int = SHEET_FRAMES) -> list[int]:
    """Up to ``wanted`` frame numbers spread evenly over a clip, first and last included."""
    if count <= wanted:
        return list(range(count))
    return sorted({round(i * (count - 1) / (wanted - 1)) for i in range(wanted)})


def contact_sheet(
    frames: np.ndarray, *, fps: int, columns: int = SHEET_COLUMNS, wanted: int = SHEET_FRAMES,
    thumb_width: int = SHEET_THUMB_WIDTH,
) -> Image.Image:
    """A grid of frames spread over the clip, each labelled with its time, on a white page."""
    from PIL import Image, ImageDraw

    indices = sheet_frame_indices(len(frames), wanted)
    height, width = frames.shape[1:3]
    scale = min(1.0, thumb_width / width) if width > thumb_width else max(1.0, min(4.0, 96 / width))
    thumb = (max(1, round(width * scale)), max(1, round(height * scale)))
    label, gap = 14, 4
    columns = min(columns, len(indices))
    rows = -(-len(indices) // columns)
    sheet = Image.new("RGB", (columns * (thumb[0] + gap) + gap, rows * (thumb[1] + label + gap) + gap), "white")
    draw = ImageDraw.Draw(sheet)
    for slot, index in enumerate(indices):
        x = gap + (slot % columns) * (thumb[0] + gap)
        y = gap + (slot // columns) * (thumb[1] + label + gap)
        sheet.paste(Image.fromarray(frames[index]).resize(thumb, Image.Resampling.LANCZOS), (x, y + label))
        draw.text((x, y), f"{index / fps:.2f} s", fill=(60, 60, 60))
    return sheet


def mp4_bytes(frames: np.ndarray, fps: int, metadata: dict[str, Any] | None = None) -> bytes:
    """The MP4 of :func:`write_mp4` as bytes (written in a private temporary folder: PyAV's
    ``+faststart`` rewrites the file by name, which a bare file handle cannot offer)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="llava-agent-video-") as folder:
        path = Path(folder) / "clip.mp4"
        write_mp4(frames, fps, path, metadata)
        return path.read_bytes()
