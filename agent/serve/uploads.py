"""Videos a caller sends for the agent to look at: ``POST /v1/uploads``, then a ``file`` part in a turn.

A video is too large for a JSON message, so it travels on its own:

1. ``POST /v1/uploads?filename=clip.mp4`` with the video's bytes as the body (any
   ``Content-Type``; the file name, or else a ``video/*`` type, gives its kind). The body is
   streamed to a private temporary file and refused with 413 past ``serve.max_video_bytes``;
   the file is then checked as a real video (:func:`agent.core.videos.probe_video`: a video
   container with a video stream, frames within ``tools.video_max_pixels``) before it is kept
   under ``<data_dir>/uploads/<caller>/<content hash>/<clean name>``. The caller never chooses
   a path. The answer is a file object whose ``id`` belongs to that caller only
   (:class:`agent.serve.ownership.OwnershipStore`): another key can neither use nor fetch it.
2. A chat completion with the agent model names it in the user message as
   ``{"type": "file", "file": {"file_id": "file-..."}}`` (OpenAI's file part). The server finds
   the caller's file, attaches it exactly as the terminal chat does
   (:func:`agent.app.attachments.save_video_attachment` into the agent's attachments folder,
   ``[attached video: PATH]`` in the message), and registers the attached copy to the caller so
   the thread's history can play it back. ``describe_video`` then reads that path.

Uploads are offered only when the agent has a tool that reads videos (``describe_video``) and
PyAV is installed; the tools route tells the chat page (``videos.accepted``).
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse

from agent.app.attachments import attachments_folder, safe_file_name, save_video_attachment
from agent.core.errors import InputError, PathNotAllowedError, ToolError, VideoError
from agent.core.files import resolve_allowed_path
from agent.core.private_files import exclusive_temp, private_dir
from agent.core.videos import VIDEO_FORMATS_HINT, is_video_path, probe_video
from agent.serve.ownership import FileRecord
from agent.serve.protocol import APIError
from agent.serve.security import LOCAL_CALLER

if TYPE_CHECKING:  # pragma: no cover
    from agent.app.multimodal_agent import MultimodalAgent
    from agent.core.config import AppConfig
    from agent.serve.app import ServerState

logger = logging.getLogger(__name__)

UPLOADS_FOLDER = "uploads"
VIDEO_TOOLS = frozenset({"describe_video"})
"""Tools that read a video the user attached: uploads are offered when the agent has one."""
SUFFIX_OF_TYPE = {
    "video/mp4": ".mp4", "video/x-m4v": ".m4v", "video/quicktime": ".mov", "video/webm": ".webm",
    "video/x-matroska": ".mkv", "image/gif": ".gif",
}  # fmt: skip
_DIGEST_PREFIX = re.compile(r"^[0-9a-f]{12}-")
_CALLER_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def uploads_folder(config: AppConfig, caller: str) -> Path:
    """The folder of one caller's uploads, inside the data folder."""
    name = caller if _CALLER_NAME.match(caller) else "caller-" + hashlib.sha256(caller.encode()).hexdigest()[:16]
    return config.data_dir.expanduser() / UPLOADS_FOLDER / name


def served_folders(config: AppConfig) -> list[Path]:
    """Every folder a registered file may lie in: generated artifacts, uploads, attached files."""
    data_dir = config.data_dir.expanduser()
    return [config.artifacts_dir, data_dir / UPLOADS_FOLDER, attachments_folder(data_dir)]


def video_uploads_offered(agent: MultimodalAgent) -> bool:
    """Whether the agent can read an uploaded video (a video tool enabled, PyAV installed)."""
    return any(tool.name in VIDEO_TOOLS for tool in agent.tools) and importlib.util.find_spec("av") is not None


def display_name(path: Path) -> str:
    """An attached file's name without the content-hash prefix it is stored under."""
    return _DIGEST_PREFIX.sub("", path.name) or path.name


def upload_name(filename: str | None, content_type: str | None) -> str:
    """The clean file name an upload is kept under; its suffix must name a video kind."""
    kind = (content_type or "").split(";")[0].strip().lower()
    base = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]  # a name, never a path
    name = safe_file_name(base or "video", limit=80)
    if is_video_path(name):
        return name
    suffix = SUFFIX_OF_TYPE.get(kind)
    if suffix is None:
        shown = (filename or "")[:80]
        raise APIError(400, f"the upload {shown!r} (Content-Type {kind or 'none'!r}) is not a video by its name or type; "
                       f"send a {VIDEO_FORMATS_HINT} file with ?filename=NAME.mp4", code="invalid_video", param="filename")  # fmt: skip
    return f"{Path(name).stem}{suffix}"


async def receive_video(request: Request, state: ServerState, caller: str) -> tuple[FileRecord, str, Any]:
    """Stream the request's body into the caller's uploads, check it is a video; (record, clean name, VideoInfo)."""
    limit = state.settings.max_video_bytes
    too_big = APIError(413, f"the video is over the limit of {limit:,} bytes (serve.max_video_bytes); send a shorter "
                       "or smaller video", code="video_too_large")  # fmt: skip
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_big
    name = upload_name(request.query_params.get("filename"), request.headers.get("content-type"))
    folder = uploads_folder(state.config, caller)
    try:
        fd, tmp = exclusive_temp(private_dir(folder), "upload", Path(name).suffix)
    except OSError as exc:
        raise APIError(500, f"the server cannot store uploads ({exc.strerror or exc})", type="server_error") from None
    digest = hashlib.sha256()
    size = 0
    try:
        with os.fdopen(fd, "wb") as handle:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise too_big
                digest.update(chunk)
                handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())
        if size == 0:
            raise APIError(400, f"the upload {name!r} is empty; send the video's bytes as the request body",
                           code="invalid_video")  # fmt: skip
        try:
            info = await asyncio.to_thread(probe_video, tmp, label=name, max_pixels=state.config.tools.video_max_pixels)
        except VideoError as exc:
            raise APIError(400, str(exc), code="invalid_video", param="file") from None
        except ToolError as exc:
            raise APIError(503, str(exc), type="server_error", code="video_unavailable") from None
        target = private_dir(folder / digest.hexdigest()[:12]) / name
        try:
            os.link(tmp, target)  # the same video uploaded again: the kept copy is the same bytes
        except FileExistsError:
            pass
        except OSError:
            os.replace(tmp, target)  # a file system without hard links
    except OSError as exc:
        raise APIError(500, f"the server cannot store the upload ({exc.strerror or exc}); its disk may be full",
                       type="server_error") from None  # fmt: skip
    finally:
        tmp.unlink(missing_ok=True)
    record = await asyncio.to_thread(state.store.file_for_path, caller, target)
    logger.info("kept an uploaded video of %d bytes (%s) for %s", size, info.describe(), caller)
    return record, name, info


def _no_file(file_id: str) -> APIError:
    return APIError(404, f"no file {file_id[:80]!r} for this API key; upload the video first (POST /v1/uploads)",
                    code="file_not_found", param="messages")  # fmt: skip


def attach_videos(state: ServerState, agent: MultimodalAgent, caller: str, file_ids: list[str]) -> list[Path]:
    """The caller's files ``file_ids`` attached to the agent (checked videos in its attachments folder; blocking)."""
    attached: list[Path] = []
    for file_id in file_ids:
        record = state.store.file(caller, file_id)  # another caller's file is as absent as a missing one
        if record is None:
            raise _no_file(file_id)
        try:
            resolved = resolve_allowed_path(record.path, served_folders(state.config))
        except (PathNotAllowedError, InputError):
            raise _no_file(file_id) from None
        if not resolved.is_file():
            raise _no_file(file_id)
        if not is_video_path(resolved):
            raise APIError(400, f"file {file_id!r} ({record.path.name}) is not a video; send images as image_url "
                           "parts and videos as file parts", code="invalid_video", param="messages")  # fmt: skip
        try:
            kept = save_video_attachment(resolved, agent.attachments_dir)
        except VideoError as exc:
            raise APIError(400, str(exc), code="invalid_video", param="messages") from None
        state.store.file_for_path(caller, kept)  # the thread's history plays it back to this caller
        attached.append(kept)
    return attached


def history_video(
    path_text: str, caller: str, state: ServerState, attachments_dir: Path, file_url: Callable[[FileRecord], str]
) -> dict[str, Any]:
    """An ``[attached video: PATH]`` of a thread as the page shows it: its name, and a link for its owner.

    A link is given only for a video in the attachments folder that was attached by this caller
    (or, on a server without keys, by the one caller): typing such a line into a message gives no
    access to anyone else's video.
    """
    item: dict[str, Any] = {"name": display_name(Path(path_text)), "url": None}
    try:
        resolved = resolve_allowed_path(path_text, [attachments_dir])
    except (PathNotAllowedError, InputError):
        return item
    if not resolved.is_file() or not is_video_path(resolved):
        return item
    record = state.store.path_record(caller, resolved)
    if record is None or record.bytes != resolved.stat().st_size:
        if caller != LOCAL_CALLER:
            return item
        record = state.store.file_for_path(caller, resolved)
    item.update(id=record.file_id, url=file_url(record), mime_type=record.mime_type, bytes=record.bytes)
    return item


def add_upload_routes(app: FastAPI, state: ServerState, caller_of: Any) -> None:
    """Register ``POST /v1/uploads`` (``caller_of``: the API-key dependency)."""

    def video_agent() -> MultimodalAgent:
        if state.agent is None:
            raise APIError(404, "the agent model is off on this server (serve.agent_model is not set)",
                           code="agent_disabled")  # fmt: skip
        agent = state.agent.agent()
        if not video_uploads_offered(agent):
            raise APIError(400, "no tool on this server reads videos; enable describe_video (tools.enabled) and "
                           "install PyAV (pip install 'llava-agent[video]')", code="videos_unsupported")  # fmt: skip
        return agent

    @app.post("/v1/uploads")
    async def upload(request: Request, caller: str = Depends(caller_of)) -> JSONResponse:
        await asyncio.to_thread(video_agent)
        record, name, info = await receive_video(request, state, caller)
        return JSONResponse({
            "id": record.file_id, "object": "file", "bytes": record.bytes, "created_at": int(record.created),
            "filename": name, "purpose": "user_data", "mime_type": record.mime_type,
            "video": {"width": info.width, "height": info.height, "duration_s": info.duration_s, "codec": info.codec},
        }, status_code=201)  # fmt: skip
