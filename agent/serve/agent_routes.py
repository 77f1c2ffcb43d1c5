"""JSON routes about the agent (what the chat page needs): threads, their history, the tools, memories.

* ``GET /v1/agent/threads``: the caller's threads, most recent first. A server without API keys
  has one caller (the person at this machine), who sees every thread of the conversation
  database, the terminal chat's too; with keys, each caller sees the threads it made only.
* ``POST /v1/agent/threads`` (``{"title"}``): a new, empty thread.
* ``GET /v1/agent/threads/{id}``: a thread and its messages (user text, images and videos, replies,
  tool calls and results with their files; a tool's error as
  :func:`agent.serve.tool_text.shown_tool_text` shows it to the caller); ``PATCH`` (``{"title"}``)
  renames it; ``DELETE`` deletes it (every turn of it, as ``llava-agent threads delete`` does).
* ``GET /v1/agent/tools``: the tools the agent can call, with their argument schemas, and whether
  it takes uploaded videos (``videos``: ``accepted`` and ``max_bytes``; :mod:`agent.serve.uploads`).
* ``GET /v1/agent/memories`` and ``DELETE /v1/agent/memories/{id}``: long-term memory, on a
  server without keys only (its facts are shared by everyone using the data folder).

A thread's ``id`` is the caller's key for it (the ``X-Thread-Id`` of chat completions). Another
caller's thread is as absent as a missing one (404). Every route needs the API key.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse

from agent.app.attachments import attachments_folder
from agent.serve.artifact_files import served_files
from agent.serve.ownership import FileRecord
from agent.serve.protocol import APIError
from agent.serve.security import LOCAL_CALLER
from agent.serve.tool_text import shown_tool_text
from agent.serve.uploads import history_video, video_uploads_offered

if TYPE_CHECKING:  # pragma: no cover
    from agent.app.multimodal_agent import MultimodalAgent
    from agent.serve.app import ServerState

MAX_TITLE_CHARS = 200
MAX_HISTORY_IMAGE_BYTES = 4 * 1024 * 1024
"""A user's image larger than this is listed by name in a thread's history, not sent back."""
_ATTACHED = re.compile(r"^\[attached (image|video): (.+)\]$")


def _thread_json(key: str, info: Any) -> dict[str, Any]:
    return {"id": key, "object": "thread", "title": info.title, "created_at": info.created_at,
            "updated_at": info.updated_at}  # fmt: skip


def _no_thread(key: str) -> APIError:
    return APIError(404, f"no thread {key[:80]!r} for this API key", code="thread_not_found", param="thread_id")


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if len(raw) > 64_000:
        raise APIError(413, "the request body is over 64,000 bytes; send a short JSON object", code="request_too_large")
    try:
        body = json.loads(raw or b"{}")
    except (UnicodeDecodeError, ValueError) as exc:
        raise APIError(400, f"the request body is not valid JSON ({exc}); send a JSON object") from None
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    return body


def _title_of(body: dict[str, Any], required: bool) -> str:
    title = body.get("title", "")
    if not isinstance(title, str):
        raise APIError(400, f"title must be a string, got {type(title).__name__}", param="title")
    title = " ".join(title.split())
    if required and not title:
        raise APIError(400, "title is empty; send some words", param="title")
    if len(title) > MAX_TITLE_CHARS:
        raise APIError(400, f"title is {len(title)} characters, over the limit of {MAX_TITLE_CHARS}", param="title")
    return title


def _content_blocks(content: Any) -> list[Any]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else list(content or [])


def _user_item(message: Any, video: Callable[[str], dict[str, Any]]) -> dict[str, Any]:
    """A user turn: its text without the server-side attachment paths, its images as data URLs, its videos
    as ``video(path)`` describes them (a name, and a link for their owner)."""
    lines, images, videos = [], [], []
    for block in _content_blocks(message.content):
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text":
            for line in str(block.get("text", "")).splitlines():
                attached = _ATTACHED.match(line.strip())
                if attached is None:
                    lines.append(line)
                elif attached.group(1) == "video":
                    videos.append(video(attached.group(2)))
        elif block.get("type") == "image":
            name = Path(str((block.get("extras") or {}).get("path", "image"))).name
            data, mime = block.get("base64"), block.get("mime_type") or "image/png"
            keep = isinstance(data, str) and len(data) * 3 // 4 <= MAX_HISTORY_IMAGE_BYTES and mime.startswith("image/")
            images.append({"name": name, "url": f"data:{mime};base64,{data}" if keep else None})
    return {"role": "user", "text": "\n".join(lines).strip(), "images": images, "videos": videos}


def history_items(
    messages: list[Any],
    caller: str,
    state: ServerState,
    file_url: Callable[[FileRecord], str],
    attachments_dir: Path | None = None,
) -> list[dict[str, Any]]:
    """A thread's messages as the page shows them (blocking: may register files and make thumbnails).

    ``attachments_dir``: the agent's attachments folder, where the thread's attached videos lie."""
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

    folder = attachments_dir if attachments_dir is not None else attachments_folder(state.config.data_dir)

    def video(path: str) -> dict[str, Any]:
        return history_video(path, caller, state, folder, file_url)

    items: list[dict[str, Any]] = []
    for message in messages:
        if isinstance(message, HumanMessage):
            items.append(_user_item(message, video))
        elif isinstance(message, AIMessage):
            calls = [{"id": c.get("id") or "", "name": c["name"], "arguments": c.get("args") or {}}
                     for c in message.tool_calls]  # fmt: skip
            items.append({"role": "assistant", "text": message.text, "tool_calls": calls})
        elif isinstance(message, ToolMessage):
            is_error = message.status == "error"
            files = [] if is_error else served_files(caller, message.artifact, state.config, state.store, file_url)
            content = shown_tool_text(message.text, is_error=is_error, caller=caller, config=state.config)
            items.append({"role": "tool", "id": message.tool_call_id, "name": message.name or "",
                          "is_error": is_error, "content": content, "files": files})  # fmt: skip
    return items


def add_agent_routes(app: FastAPI, state: ServerState, caller_of: Any, file_url: Any) -> None:
    """Register the routes on ``app`` (``caller_of``: the API-key dependency; ``file_url(base, record)``)."""

    def agent_of() -> MultimodalAgent:
        if state.agent is None:
            raise APIError(404, "the agent model is off on this server (serve.agent_model is not set)",
                           code="agent_disabled")  # fmt: skip
        return state.agent.agent()

    def caller_threads(agent: MultimodalAgent, caller: str) -> list[tuple[str, Any]]:
        """(key, ThreadInfo) of the caller's threads, most recent first."""
        keys = state.store.threads_of(caller)
        if caller == LOCAL_CALLER:
            key_of = {thread_id: key for key, thread_id in keys}
            return [(key_of.get(info.thread_id, info.thread_id), info) for info in agent.conversations.list_threads()]
        by_id = {info.thread_id: info for info in agent.conversations.list_threads()}
        owned = [(key, by_id[thread_id]) for key, thread_id in keys if thread_id in by_id]
        return sorted(owned, key=lambda pair: pair[1].updated_at, reverse=True)

    def owned_thread(agent: MultimodalAgent, caller: str, key: str) -> tuple[str, Any]:
        """(thread id, ThreadInfo) of the caller's thread ``key``; 404 for anyone else's."""
        thread_id = state.store.thread_for(caller, key)
        if thread_id is None and caller == LOCAL_CALLER:
            thread_id = key  # the keyless server's one caller owns every thread, by its id
        if thread_id is None or not agent.conversations.exists(thread_id):
            raise _no_thread(key)
        return thread_id, agent.conversations.get(thread_id)

    def base_url(request: Request) -> str:
        return state.settings.public_url or str(request.base_url)

    @app.get("/v1/agent/threads")
    async def list_threads(caller: str = Depends(caller_of)) -> JSONResponse:
        def work() -> list[dict[str, Any]]:
            return [_thread_json(key, info) for key, info in caller_threads(agent_of(), caller)]

        return JSONResponse({"object": "list", "data": await asyncio.to_thread(work)})

    @app.post("/v1/agent/threads")
    async def new_thread(request: Request, caller: str = Depends(caller_of)) -> JSONResponse:
        title = _title_of(await _json_body(request), required=False)

        def work() -> dict[str, Any]:
            agent = agent_of()
            thread_id = agent.new_thread(title)
            state.store.bind_thread(caller, thread_id, thread_id)
            return _thread_json(thread_id, agent.conversations.get(thread_id))

        return JSONResponse(await asyncio.to_thread(work), status_code=201)

    @app.get("/v1/agent/threads/{key:path}")
    async def get_thread(key: str, request: Request, caller: str = Depends(caller_of)) -> JSONResponse:
        from functools import partial

        link = partial(file_url, base_url(request))

        def work() -> dict[str, Any]:
            agent = agent_of()
            thread_id, info = owned_thread(agent, caller, key)
            body = _thread_json(key, info)
            body["messages"] = history_items(agent.conversations.messages(thread_id), caller, state, link,
                                             agent.attachments_dir)  # fmt: skip
            return body

        return JSONResponse(await asyncio.to_thread(work))

    @app.patch("/v1/agent/threads/{key:path}")
    async def rename_thread(key: str, request: Request, caller: str = Depends(caller_of)) -> JSONResponse:
        title = _title_of(await _json_body(request), required=True)

        def work() -> dict[str, Any]:
            agent = agent_of()
            thread_id, _ = owned_thread(agent, caller, key)
            return _thread_json(key, agent.conversations.rename(thread_id, title))

        return JSONResponse(await asyncio.to_thread(work))

    @app.delete("/v1/agent/threads/{key:path}")
    async def delete_thread(key: str, caller: str = Depends(caller_of)) -> JSONResponse:
        from memory.thread_lease import ThreadBusyError, lease_folder, writing_turn

        def work() -> dict[str, Any]:
            agent = agent_of()
            thread_id, _ = owned_thread(agent, caller, key)
            try:
                with writing_turn(lease_folder(agent.conversations.db_path), thread_id):  # not while a turn runs on it
                    agent.conversations.delete(thread_id)
            except ThreadBusyError as exc:
                raise APIError(409, f"{exc}", code="thread_busy") from None
            state.store.unbind_thread(thread_id)
            return {"id": key, "object": "thread.deleted", "deleted": True}

        return JSONResponse(await asyncio.to_thread(work))

    @app.get("/v1/agent/tools")
    async def list_tools(caller: str = Depends(caller_of)) -> JSONResponse:
        from langchain_core.utils.function_calling import convert_to_openai_tool

        def work() -> list[dict[str, Any]]:
            tools = []
            for tool in agent_of().tools:
                function = convert_to_openai_tool(tool)["function"]
                tools.append({"name": tool.name, "description": tool.description,
                              "parameters": function.get("parameters", {})})  # fmt: skip
            return tools

        tools = await asyncio.to_thread(work)
        videos = {"accepted": await asyncio.to_thread(lambda: video_uploads_offered(agent_of())),
                  "max_bytes": state.settings.max_video_bytes}  # fmt: skip
        return JSONResponse({"object": "list", "data": tools, "memory": memory_available(), "videos": videos})

    def memory_available() -> bool:
        return caller_is_alone() and state.config.agent.long_term_memory

    def caller_is_alone() -> bool:
        return not state.keys.required

    def long_term_memory() -> Any:
        if not caller_is_alone():
            raise APIError(403, "long-term memory is off on a server with API keys: its facts would be shared by "
                           "every key; use `llava-agent memories` on the server's machine", code="memory_unavailable")  # fmt: skip
        agent = agent_of()
        if agent.memory is None:
            raise APIError(404, "long-term memory is off (agent.long_term_memory = false in the config)",
                           code="memory_unavailable")  # fmt: skip
        return agent.memory

    @app.get("/v1/agent/memories")
    async def list_memories(caller: str = Depends(caller_of)) -> JSONResponse:
        def work() -> list[dict[str, Any]]:
            return [{"id": m.memory_id, "text": m.text, "created_at": m.created_at} for m in long_term_memory().list()]

        return JSONResponse({"object": "list", "data": await asyncio.to_thread(work)})

    @app.delete("/v1/agent/memories/{memory_id}")
    async def forget_memory(memory_id: str, caller: str = Depends(caller_of)) -> JSONResponse:
        from agent.core.errors import InputError

        def work() -> dict[str, Any]:
            try:
                item = long_term_memory().forget(memory_id)
            except InputError as exc:
                raise APIError(404, str(exc), code="memory_not_found", param="memory_id") from None
            return {"id": item.memory_id, "object": "memory.deleted", "deleted": True}

        return JSONResponse(await asyncio.to_thread(work))

