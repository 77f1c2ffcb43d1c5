"""Small test videos encoded on the spot with PyAV: solid-colour scenes with a moving white box."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

SCENE_COLOURS = {"red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 40, 220), "yellow": (235, 215, 30)}
CODECS = {".mp4": "libx264", ".mov": "libx264", ".mkv": "libx264", ".webm": "libvpx"}


def write_video(
    path: Path,
    scenes: Sequence[tuple[str, float]] = (("red", 2.0), ("green", 2.0), ("blue", 2.0)),
    *,
    fps: int = 10,
    size: tuple[int, int] = (64, 48),
    faststart: bool = False,
) -> Path:
    """Encode one scene per ``(colour, seconds)``; mp4/mov/mkv are H.264, webm VP8, gif through Pillow."""
    import numpy as np

    path = Path(path)
    width, height = size
    frames = []
    for colour, seconds in scenes:
        for _ in range(round(seconds * fps)):
            array = np.zeros((height, width, 3), np.uint8)
            array[:] = SCENE_COLOURS[colour]
            left = (len(frames) * 2) % max(1, width - 8)
            array[height // 4 : height // 4 + 8, left : left + 8] = 255
            frames.append(array)
    if path.suffix == ".gif":
        from PIL import Image

        pictures = [Image.fromarray(a) for a in frames]
        pictures[0].save(path, save_all=True, append_images=pictures[1:], duration=round(1000 / fps), loop=0)
        return path
    import av

    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream(CODECS[path.suffix], rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for array in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
