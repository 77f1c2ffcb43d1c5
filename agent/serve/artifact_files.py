"""Which files of a tool's artifact a caller may fetch, and how the chat page should show each.

A tool's artifact names files by path. Three kinds are offered at ``/v1/files/{id}/content``,
each registered to the caller who ran the tool (:class:`agent.serve.ownership.OwnershipStore`):

* ``output``: what the tool wrote into the artifacts folder (an image, speech, a video's contact
  sheet, a mesh);
* ``preview``: a picture of an output that is not one (a mesh's rendered preview);
* ``thumbnail``: a small JPEG of each image search hit, with its score and caption. The hits are
  the server's own indexed images, not something made for the caller, so thumbnails are made
  only for the local caller of a server without API keys (the person at this machine); other
  callers get the scores and names without pixels.

Nothing outside the artifacts folder is ever registered: a path elsewhere is skipped.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.core.errors import LlavaAgentError, PathNotAllowedError
from agent.core.files import read_allowed_image, resolve_allowed_path
from agent.core.private_files import private_dir, write_file_atomically
from agent.serve.ownership import FileRecord, OwnershipStore
from agent.serve.security import LOCAL_CALLER

if TYPE_CHECKING:  # pragma: no cover
    from agent.core.config import AppConfig

logger = logging.getLogger(__name__)

THUMBNAIL_PIXELS = 256
"""The longer side of a search hit's thumbnail."""
THUMBNAIL_FOLDER = "thumbnails"
MAX_SEARCH_THUMBNAILS = 24


def _describe(record: FileRecord, file_url: Callable[[FileRecord], str], kind: str, **extra: Any) -> dict[str, Any]:
    return {"id": record.file_id, "url": file_url(record), "filename": record.path.name,
            "mime_type": record.mime_type, "bytes": record.bytes, "kind": kind, **extra}  # fmt: skip


def _artifact_file(path: Any, artifacts_dir: Path) -> Path | None:
    if not isinstance(path, str):
        return None
    try:
        resolved = resolve_allowed_path(path, [artifacts_dir])
    except PathNotAllowedError:
        return None  # e.g. a search hit: the user's own image, not something generated for this caller
    return resolved if resolved.is_file() else None


def thumbnail_of(image_path: str, config: AppConfig) -> Path | None:
    """A JPEG thumbnail of an indexed image (made once, kept in the artifacts folder), or None if unreadable."""
    try:
        image, resolved = read_allowed_image(image_path, config.allowed_dirs, config.serve.max_image_pixels)
    except (LlavaAgentError, OSError) as exc:
        logger.info("no thumbnail for a search hit (%s)", exc)
        return None
    stat = resolved.stat()
    digest = hashlib.sha256(f"{resolved}\0{stat.st_mtime_ns}\0{stat.st_size}".encode()).hexdigest()[:24]
    folder = private_dir(config.artifacts_dir / THUMBNAIL_FOLDER)
    target = folder / f"{digest}.jpg"
    if not target.is_file():
        small = image.convert("RGB")
        small.thumbnail((THUMBNAIL_PIXELS, THUMBNAIL_PIXELS))
        write_file_atomically(target, lambda handle: small.save(handle, format="JPEG", quality=85))
    return target


def served_files(
    caller: str,
    artifact: Any,
    config: AppConfig,
    store: OwnershipStore,
    file_url: Callable[[FileRecord], str],
) -> list[dict[str, Any]]:
    """The files of ``artifact`` registered to ``caller``, each described for the client (url, kind...)."""
    artifacts_dir = config.artifacts_dir
    items = artifact if isinstance(artifact, list) else [artifact]
    files: list[dict[str, Any]] = []
    for item in items:
        if not isinstance(item, dict):
            continue
        for key, kind in (("path", "output"), ("preview", "preview")):
            resolved = _artifact_file(item.get(key), artifacts_dir)
            if resolved is not None:
                files.append(_describe(store.file_for_path(caller, resolved), file_url, kind))
        results = item.get("results")
        if caller == LOCAL_CALLER and isinstance(results, list):
            for hit in results[:MAX_SEARCH_THUMBNAILS]:
                if not isinstance(hit, dict) or not isinstance(hit.get("path"), str):
                    continue
                thumbnail = thumbnail_of(hit["path"], config)
                if thumbnail is not None:
                    files.append(_describe(store.file_for_path(caller, thumbnail), file_url, "thumbnail",
                                           source=Path(hit["path"]).name, score=hit.get("score"),
                                           caption=hit.get("caption")))  # fmt: skip
    return files
