"""LangChain messages and tools -> the chat turns and tool schemas :func:`agent.llava.prompting.render_prompt` reads.

:func:`tool_schemas` converts LangChain tools (and pydantic models, functions, OpenAI dicts) to the
OpenAI-format schemas of :mod:`agent.decoding.tool_protocol`.

Content blocks understood:

* text: plain strings, ``{"type": "text", "text": ...}``;
* LangChain standard image blocks: ``{"type": "image", "base64": ..., "mime_type": ...}``,
  ``{"type": "image", "url": ...}`` (``data:``, ``file://``, local paths; ``http(s)`` only when
  remote images are allowed), and the older ``{"type": "image", "source_type": "base64" | "url",
  "data" | "url": ...}`` form;
* OpenAI ``{"type": "image_url", "image_url": {"url": ...}}`` (or ``"image_url": "<url>"``);
* PIL images: ``{"type": "image", "image": <PIL.Image>}``.

``AIMessage.tool_calls`` become the turn's ``tool_calls``; a ``ToolMessage`` becomes a ``tool``
turn. Blocks that carry no meaning for the model (reasoning, tool-call echoes) are skipped; any
other block type raises :class:`agent.core.errors.InputError` naming the message and block.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from agent.core.errors import ImageError, InputError
from agent.core.images import DEFAULT_MAX_PIXELS, ImageLocation, image_name, load_image

if TYPE_CHECKING:  # pragma: no cover
    from langchain_core.messages import BaseMessage

# Block types that are part of a message's record but not of what the model reads.
SKIPPED_BLOCK_TYPES = frozenset(
    {
        "tool_call",
        "tool_call_chunk",
        "server_tool_call",
        "server_tool_result",
        "reasoning",
        "thinking",
        "tool_use",
    }
)
_ROLE_OF_TYPE = {"system": "system", "human": "user", "ai": "assistant", "tool": "tool"}
_CHAT_ROLES = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "ai": "assistant",
    "tool": "tool",
}


def messages_to_turns(
    messages: Sequence[BaseMessage],
    *,
    allow_remote_images: bool = False,
    max_image_pixels: int = DEFAULT_MAX_PIXELS,
) -> list[dict[str, Any]]:
    """Convert LangChain messages to HF-style turns with images decoded to RGB ``PIL`` images."""
    from langchain_core.messages import AIMessage, BaseMessage, ChatMessage, ToolMessage

    turns: list[dict[str, Any]] = []
    for message_index, message in enumerate(messages):
        if not isinstance(message, BaseMessage):
            raise InputError(
                f"message {message_index} is a {type(message).__name__}, not a LangChain message; "
                "pass HumanMessage/AIMessage/SystemMessage/ToolMessage objects or (role, text) tuples to invoke()"
            )
        if isinstance(message, ChatMessage):
            role = _CHAT_ROLES.get(message.role.lower())
            if role is None:
                raise InputError(
                    f"message {message_index} has role {message.role!r}; use one of {', '.join(sorted(_CHAT_ROLES))}"
                )
        else:
            role = _ROLE_OF_TYPE.get(message.type)
            if role is None:
                raise InputError(
                    f"message {message_index} is a {type(message).__name__} (type {message.type!r}), which "
                    "cannot be sent to the model; use system, human, AI or tool messages"
                )
        content = _content_blocks(
            message.content, message_index, allow_remote=allow_remote_images, max_pixels=max_image_pixels
        )
        turn: dict[str, Any] = {"role": role, "content": content}
        if isinstance(message, AIMessage) and message.tool_calls:
            turn["tool_calls"] = [
                {
                    "type": "function",
                    "id": call.get("id"),
                    "function": {"name": call["name"], "arguments": dict(call.get("args") or {})},
                }
                for call in message.tool_calls
            ]
        if isinstance(message, ToolMessage):
            if message.name:
                turn["name"] = message.name
            turn["tool_call_id"] = message.tool_call_id
            if getattr(message, "status", "success") == "error":
                turn["content"] = [{"type": "text", "text": "Error: "}, *content]
        turns.append(turn)
    return turns


def _content_blocks(
    content: Any, message_index: int, *, allow_remote: bool, max_pixels: int
) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise InputError(
            f"message {message_index}: content of type {type(content).__name__} is not supported"
        )
    blocks: list[dict[str, Any]] = []
    for block_index, block in enumerate(content):
        location = ImageLocation(message_index, block_index)
        converted = _convert_block(block, location, allow_remote=allow_remote, max_pixels=max_pixels)
        if converted is not None:
            blocks.append(converted)
    return blocks


def _convert_block(
    block: Any, location: ImageLocation, *, allow_remote: bool, max_pixels: int
) -> dict[str, Any] | None:
    from PIL import Image

    if isinstance(block, str):
        return {"type": "text", "text": block} if block else None
    if isinstance(block, Image.Image):
        return _image_block(block, location, allow_remote=allow_remote, max_pixels=max_pixels)
    if not isinstance(block, dict):
        raise InputError(f"{location.describe()}: a block of type {type(block).__name__} is not supported")
    kind = block.get("type")
    if kind == "text":
        text = block.get("text")
        if not isinstance(text, str):
            raise InputError(f"{location.describe()}: text block has no string 'text'")
        return {"type": "text", "text": text} if text else None
    if kind == "image_url":
        ref = block.get("image_url")
        url = ref.get("url") if isinstance(ref, dict) else ref
        if not url:
            raise InputError(
                f"{location.describe()}: image_url block has no URL; use {{'image_url': {{'url': ...}}}}"
            )
        return _image_block(url, location, allow_remote=allow_remote, max_pixels=max_pixels)
    if kind == "image":
        mime = block.get("mime_type")
        if block.get("image") is not None:
            source = block["image"]
        elif block.get("base64"):
            source = _as_data_url(block["base64"], mime)
        elif block.get("source_type") == "base64" and block.get("data"):
            source = _as_data_url(block["data"], mime)
        elif block.get("url"):
            source = block["url"]
        elif block.get("path"):
            source = block["path"]
        elif block.get("file_id") or block.get("id"):
            raise InputError(
                f"{location.describe()}: image block refers to a provider file id "
                f"{block.get('file_id') or block.get('id')!r}; a local model needs the image itself "
                "(base64, url or path)"
            )
        else:
            raise ImageError(
                f"{location.describe()}: image block is empty: it has none of 'base64', 'url', 'path' or 'image'; "
                "use {'type': 'image', 'base64': ..., 'mime_type': 'image/png'}"
            )
        return _image_block(
            source, location, allow_remote=allow_remote, max_pixels=max_pixels, mime_type=mime
        )
    if kind in SKIPPED_BLOCK_TYPES:
        return None
    if kind == "json":
        return {"type": "text", "text": json.dumps(block.get("json"), ensure_ascii=False)}
    raise InputError(
        f"{location.describe()}: block type {kind!r} is not supported by this model; "
        "use text, image or image_url blocks"
    )


def _as_data_url(payload: Any, mime: str | None) -> Any:
    """Base64 from a block that says it is base64 is decoded as such, never guessed to be a path."""
    if not isinstance(payload, str) or payload.startswith("data:"):
        return payload
    return f"data:{mime or 'image/png'};base64,{payload}"


def _image_block(
    source: Any, location: ImageLocation, *, allow_remote: bool, max_pixels: int, mime_type: str | None = None
) -> dict[str, Any]:
    image = load_image(
        source, location=location, allow_remote=allow_remote, max_pixels=max_pixels, mime_type=mime_type
    )
    block: dict[str, Any] = {"type": "image", "image": image}
    name = image_name(source)
    if name:
        block["name"] = name
    return block


def tool_schemas(tools: Sequence[Any]) -> list[dict]:
    """Convert tools to OpenAI-format schemas.

    Accepts LangChain ``BaseTool`` objects, pydantic models, typed Python functions and dicts
    (OpenAI tool dicts pass through; bare JSON schemas with a ``title`` are wrapped). Each result
    is ``{"type": "function", "function": {"name", "description", "parameters"}}``.
    """
    from langchain_core.utils.function_calling import convert_to_openai_tool

    schemas: list[dict] = []
    seen: set[str] = set()
    for position, tool in enumerate(tools):
        try:
            schema = convert_to_openai_tool(tool)
        except Exception as exc:  # langchain raises ValueError/TypeError/KeyError variants
            raise InputError(
                f"tool #{position} ({tool!r:.80}) cannot be converted to a tool schema: {exc}; pass a "
                "LangChain tool, a pydantic model, a typed function with a docstring, or an OpenAI tool dict"
            ) from exc
        function = schema.get("function", {})
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise InputError(f"tool #{position} ({tool!r:.80}) has no name; give it a name")
        if name in seen:
            raise InputError(f"two tools are named {name!r}; tool names must be unique")
        seen.add(name)
        function.setdefault("description", "")
        function.setdefault("parameters", {"type": "object", "properties": {}})
        schemas.append(schema)
    return schemas
