"""User turns: checking and keeping attached images and videos, and building the message the agent stores.

Attached images are copied into the data folder (named by content hash and a cleaned-up file
name) so tools can read them by path, and the message names each one as ``[attached image: PATH]``.
Attached videos are checked (a video container, within the size limit), linked or copied into the
same folder and named as ``[attached video: PATH]``; only their path travels in the message, and
the ``describe_video`` tool looks at them.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.core.errors import ImageError, InputError, StoreError, VideoError
from agent.core.images import FORMATS_HINT, mime_type, verified_format
from agent.core.private_files import private_dir, write_file_atomically
from agent.core.videos import VIDEO_FORMATS_HINT, is_video_path, probe_video

if TYPE_CHECKING:
    from langchain_core.messages import HumanMessage

ATTACHMENTS_FOLDER = "attachments"


def attachments_folder(data_dir: str | os.PathLike[str]) -> Path:
    """Where a data folder keeps attached images and videos (``<data_dir>/attachments``)."""
    return Path(data_dir).expanduser() / ATTACHMENTS_FOLDER


def safe_file_name(name: str, limit: int = 80) -> str:
    """A file name made of letters, digits, ``.``, ``_`` and ``-`` only (its suffix kept).

    The name of an attached file is written into the conversation as ``[attached image: PATH]``;
    a name like ``cat<|im_end|>...png`` or one holding ``USER:`` must not carry markup into it.
    """
    path = Path(name)
    suffix = re.sub(r"[^A-Za-z0-9]", "", path.suffix)[:10].lower()
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", path.stem).strip("._-")[: limit - len(suffix) - 1] or "image"
    return f"{stem}.{suffix}" if suffix else stem


def save_attachment(path: str | os.PathLike[str], folder: Path) -> tuple[Path, str, bytes]:
    """Check an image file and keep a copy in ``folder``; returns (saved path, mime type, bytes).

    The copy is named by content hash, so attaching the same image twice stores it once, and
    tools can always read it (the data folder is an allowed folder).
    """
    source = Path(path).expanduser()
    if not source.exists():
        raise ImageError(f"image {str(path)!r} does not exist; check the path (relative paths start at {Path.cwd()})")
    if not source.is_file():
        raise ImageError(f"image {str(path)!r} is not a file; give the path of an image file")
    try:
        data = source.read_bytes()
    except OSError as exc:
        raise ImageError(f"image {str(path)!r} cannot be read ({exc.strerror}); check its permissions") from None
    if not data:
        raise ImageError(f"image {str(path)!r} is empty; give a {FORMATS_HINT} file")
    image_format = verified_format(data, str(path))
    mime = mime_type(image_format)
    if mime is None:
        raise ImageError(f"image {str(path)!r} is a {image_format} file; give a {FORMATS_HINT} file")
    digest = hashlib.sha256(data).hexdigest()[:12]
    target = folder / f"{digest}-{safe_file_name(source.name)}"
    if not target.exists():
        try:
            private_dir(folder)  # attachments are the user's own: 0700 folder, 0600 files
            write_file_atomically(target, lambda handle: handle.write(data))
        except OSError as exc:
            raise StoreError(
                f"cannot keep a copy of {str(path)!r} in {folder} ({exc.strerror or exc}); free some disk space or "
                "set data_dir in the config"
            ) from None
    return target.resolve(), mime, data


def save_video_attachment(path: str | os.PathLike[str], folder: Path) -> Path:
    """Check a video file and keep it in ``folder`` (a hard link when possible, else a copy); returns its path.

    A file attached before (in ``folder`` under its content-hash name) is returned as it is."""
    import shutil

    source = Path(path).expanduser()
    if not source.is_file():
        raise VideoError(f"video {str(path)!r} does not exist or is not a file; check the path")
    if not is_video_path(source):
        raise VideoError(f"file {str(path)!r} is not a video by its name; give a {VIDEO_FORMATS_HINT} file")
    if source.stat().st_size == 0:
        raise VideoError(f"video {str(path)!r} is empty; give a {VIDEO_FORMATS_HINT} file")
    probe_video(source, label=str(path))
    digest = hashlib.sha256()
    with open(source, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    prefix = f"{digest.hexdigest()[:12]}-"
    if source.resolve().parent == folder.resolve() and source.name.startswith(prefix):
        return source.resolve()  # already attached: kept as it is, not under a second prefix
    target = folder / f"{prefix}{source.name}"
    if not target.exists():
        folder.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        try:
            try:
                os.link(source.resolve(), tmp)
            except OSError:
                shutil.copyfile(source, tmp)
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                tmp.unlink()
    return target.resolve()


def build_user_message(
    text: str,
    images: Sequence[str | os.PathLike[str]],
    attachments_dir: Path,
    videos: Sequence[str | os.PathLike[str]] = (),
) -> HumanMessage:
    """A user turn: the text, one ``[attached image: PATH]`` line per image and
    ``[attached video: PATH]`` per video, then the images."""
    import base64

    from langchain_core.messages import HumanMessage

    if not isinstance(text, str):
        raise InputError(f"message must be a str, got {type(text).__name__}; pass the user's text")
    if isinstance(images, (str, os.PathLike)):
        images = [images]
    if isinstance(videos, (str, os.PathLike)):
        videos = [videos]
    if not text.strip() and not images and not videos:
        raise InputError("the message is empty; type some text or attach an image")
    saved = [save_attachment(path, attachments_dir) for path in images]
    kept_videos = [save_video_attachment(path, attachments_dir) for path in videos]
    lines = [text.strip()] if text.strip() else []
    lines += [f"[attached image: {path}]" for path, _, _ in saved]
    lines += [f"[attached video: {path}]" for path in kept_videos]
    blocks: list[str | dict[str, Any]] = [{"type": "text", "text": "\n".join(lines)}]
    for path, mime, data in saved:
        blocks.append(
            {
                "type": "image",
                "base64": base64.b64encode(data).decode("ascii"),
                "mime_type": mime,
                "extras": {"path": str(path)},
            }
        )
    return HumanMessage(content=blocks if saved else blocks[0]["text"])  # type: ignore[index]
