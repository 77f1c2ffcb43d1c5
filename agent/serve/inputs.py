"""OpenAI chat messages -> LangChain messages, with the server's rules for images.

Images come as ``image_url`` parts of user messages. Allowed sources:

* ``data:`` URLs (base64): always; decoded here, before the request queues, so a bad or
  oversized image is refused at once;
* local paths and ``file://`` URLs: only inside the allowed folders (``tools.allowed_dirs``),
  resolved with symlinks followed before the check (:func:`agent.core.files.resolve_allowed_path`),
  and never inside the policy's private folders (on a server with API keys, the data folder: what
  a caller uploads reaches the agent by file id, and what is there belongs to every caller); the
  checked file is decoded from a descriptor opened beneath its allowed folder
  (:func:`agent.core.files.open_allowed_image`), and refusals quote the text the client sent;
* ``http(s)://`` URLs: only when ``serve.allow_remote_images`` is on.

Every image is decoded with the pixel limit of the server and the number of images per request
is capped. Decoding is blocking work: call these functions from a worker thread.

The agent model also takes videos the caller uploaded (:mod:`agent.serve.uploads`), named by
OpenAI's file part ``{"type": "file", "file": {"file_id": "file-..."}}`` in the last user message;
the plain chat model sees only text and images.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from agent.core.errors import ImageError, InputError, PathNotAllowedError
from agent.core.files import check_readable_file, open_allowed_image, resolve_allowed_path
from agent.core.images import ImageLocation, load_image
from agent.serve.protocol import APIError

if TYPE_CHECKING:  # pragma: no cover
    from langchain_core.messages import BaseMessage
    from PIL import Image

SYSTEM_ROLES = ("system", "developer")
MAX_VIDEOS_PER_TURN = 4


@dataclass(frozen=True)
class ImagePolicy:
    allowed_dirs: list[Path]
    allow_remote: bool
    max_pixels: int
    max_images: int
    private_dirs: tuple[Path, ...] = ()
    """Folders no image is read from by path, even inside an allowed folder."""

    def is_private(self, resolved: Path) -> bool:
        folders = (Path(folder).expanduser().resolve(strict=False) for folder in self.private_dirs)
        return any(resolved == folder or resolved.is_relative_to(folder) for folder in folders)


@dataclass
class DecodedImage:
    image: Image.Image
    path: Path | None = None
    """The resolved local file, when the image came from one (allowed folders only)."""


@dataclass
class AgentInput:
    """What an agent turn takes from a request: the last user message's text and images."""

    text: str
    images: list[DecodedImage] = field(default_factory=list)
    file_ids: list[str] = field(default_factory=list)
    """Uploaded videos the message names (file parts), not yet checked against the caller's files."""
    videos: list[Path] = field(default_factory=list)
    """Those videos once attached (:func:`agent.serve.uploads.attach_videos`)."""


def _bad(index: int, message: str, param: str | None = None) -> APIError:
    return APIError(400, f"messages[{index}]: {message}", param=param or f"messages[{index}]")


def decode_image(url: Any, location: ImageLocation, policy: ImagePolicy) -> DecodedImage:
    """Check an ``image_url`` against the policy and decode it."""
    where = location.describe()
    if not isinstance(url, str) or not url.strip():
        raise APIError(400, f"{where}: image_url has no URL; send {{'image_url': {{'url': 'data:image/png;base64,...'}}}}",
                       param="messages")  # fmt: skip
    text = url.strip()
    scheme = urlparse(text).scheme.lower() if "://" in text or text.startswith("data:") else ""
    if scheme == "data":
        return DecodedImage(load_image(text, location=location, max_pixels=policy.max_pixels))
    if scheme in ("http", "https"):
        if not policy.allow_remote:
            raise APIError(400, f"{where}: this server does not fetch remote images ({text[:80]!r}); send the image "
                           "as a data URL (data:image/png;base64,...)", param="messages", code="remote_images_disabled")  # fmt: skip
        return DecodedImage(load_image(text, location=location, allow_remote=True, max_pixels=policy.max_pixels))
    if scheme not in ("", "file"):
        raise APIError(400, f"{where}: image URL scheme {scheme!r} is not supported; send a data URL", param="messages")
    raw = unquote(urlparse(text).path) if scheme == "file" else text
    not_allowed = APIError(400, f"{where}: the image path {raw[:120]!r} is outside the folders this server reads "
                           "images from; send the image as a data URL", param="messages",
                           code="path_not_allowed")  # fmt: skip
    try:
        if policy.is_private(resolve_allowed_path(raw, policy.allowed_dirs)):
            raise not_allowed  # as any other folder, before the file is even looked at: no file there is confirmed
        resolved = check_readable_file(raw, policy.allowed_dirs)
    except PathNotAllowedError:  # the folders themselves are not the client's business
        raise not_allowed from None
    except ImageError:
        raise
    except InputError:
        raise APIError(400, f"{where}: the image path {raw[:120]!r} is not an existing file on the server; send the "
                       "image as a data URL", param="messages", code="invalid_image") from None
    try:  # a refusal names the text the client sent, never where it resolved to
        image = open_allowed_image(resolved, policy.allowed_dirs, policy.max_pixels, label=raw[:120])
    except PathNotAllowedError:  # a folder on the way was swapped for a link since the check
        raise not_allowed from None
    except InputError as exc:
        raise ImageError(f"{where}: {exc}") from None
    return DecodedImage(image, resolved)


def _text_of(content: Any, index: int, role: str) -> str:
    """The text of a message that may hold only text (system, assistant, tool)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part_index, part in enumerate(content):
            if isinstance(part, dict) and part.get("type") in ("text", "refusal"):
                parts.append(str(part.get("text") or part.get("refusal") or ""))
            else:
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise _bad(index, f"a {role} message may hold only text parts, part {part_index} is {kind!r}")
        return "".join(parts)
    raise _bad(index, f"content must be a string or a list of parts, got {type(content).__name__}")


def _file_id(part: dict[str, Any], index: int, part_index: int) -> str:
    ref = part.get("file")
    file_id = ref.get("file_id") if isinstance(ref, dict) else None
    if not isinstance(file_id, str) or not file_id.strip() or len(file_id) > 128:
        raise _bad(index, f"part {part_index} is a file part without a file id; send {{'type': 'file', 'file': "
                   "{'file_id': 'file-...'}} with the id POST /v1/uploads answered")  # fmt: skip
    return file_id.strip()


def _user_parts(
    content: Any, index: int, policy: ImagePolicy, seen: list[int], files: list[str] | None = None
) -> tuple[list[dict], list[DecodedImage]]:
    """A user message's parts as LangChain blocks, images decoded; ``seen`` counts images so far.

    ``files`` collects the ids of file parts (the agent's uploaded videos); None refuses them."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}], []
    if not isinstance(content, list):
        raise _bad(index, f"content must be a string or a list of parts, got {type(content).__name__}")
    blocks: list[dict] = []
    images: list[DecodedImage] = []
    for part_index, part in enumerate(content):
        if not isinstance(part, dict):
            raise _bad(index, f"part {part_index} is a {type(part).__name__}, not an object")
        kind = part.get("type")
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise _bad(index, f"part {part_index} is a text part without a string 'text'")
            blocks.append({"type": "text", "text": part["text"]})
        elif kind == "image_url":
            seen[0] += 1
            if seen[0] > policy.max_images:
                raise APIError(400, f"the request holds more than {policy.max_images} images, the limit of this "
                               "server; send fewer", param="messages", code="too_many_images")  # fmt: skip
            ref = part.get("image_url")
            url = ref.get("url") if isinstance(ref, dict) else ref
            decoded = decode_image(url, ImageLocation(index, part_index), policy)
            images.append(decoded)
            blocks.append({"type": "image", "image": decoded.image})
        elif kind == "file" and files is not None:
            files.append(_file_id(part, index, part_index))
            if len(files) > MAX_VIDEOS_PER_TURN:
                raise APIError(400, f"the message holds more than {MAX_VIDEOS_PER_TURN} videos, the limit of this "
                               "server; send fewer", param="messages", code="too_many_videos")  # fmt: skip
        elif kind == "file":
            raise _bad(index, f"part {part_index} is a file part; only the agent model takes files (uploaded videos), "
                       "and only in the last user message")  # fmt: skip
        else:
            raise _bad(index, f"part {part_index} has type {kind!r}; this server takes 'text' and 'image_url' parts "
                       "(and 'file' parts for the agent model)")  # fmt: skip
    return blocks, images


def _tool_calls(raw: Any, index: int) -> list[dict[str, Any]]:
    if not isinstance(raw, list):
        raise _bad(index, "tool_calls must be a list")
    calls = []
    for position, call in enumerate(raw):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise _bad(index, f"tool_calls[{position}] needs a function with a name")
        arguments = function.get("arguments") or "{}"
        try:
            args = json.loads(arguments) if isinstance(arguments, str) else arguments
        except ValueError:
            raise _bad(index, f"tool_calls[{position}].function.arguments is not valid JSON: {arguments!r:.100}") from None
        if not isinstance(args, dict):
            raise _bad(index, f"tool_calls[{position}].function.arguments must be a JSON object")
        calls.append({"name": function["name"], "args": args, "id": str(call.get("id") or f"call_{position}"),
                      "type": "tool_call"})  # fmt: skip
    return calls


def to_langchain_messages(messages: list[dict[str, Any]], policy: ImagePolicy) -> list[BaseMessage]:
    """Convert a request's messages; every problem is a 400 naming the message."""
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage

    converted: list[BaseMessage] = []
    seen = [0]
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _bad(index, f"each message must be an object, got {type(message).__name__}")
        role = message.get("role")
        content = message.get("content")
        try:
            if role in SYSTEM_ROLES:
                converted.append(SystemMessage(_text_of(content, index, role)))
            elif role == "user":
                blocks, _ = _user_parts(content, index, policy, seen)
                text_only = all(b["type"] == "text" for b in blocks)
                converted.append(HumanMessage("".join(b["text"] for b in blocks) if text_only else blocks))
            elif role == "assistant":
                calls = _tool_calls(message["tool_calls"], index) if message.get("tool_calls") else []
                converted.append(AIMessage(_text_of(content, index, role), tool_calls=calls))
            elif role == "tool":
                call_id = message.get("tool_call_id")
                if not isinstance(call_id, str) or not call_id:
                    raise _bad(index, "a tool message needs the tool_call_id of the call it answers")
                converted.append(ToolMessage(_text_of(content, index, role), tool_call_id=call_id))
            else:
                raise _bad(index, f"role {role!r} is not supported; use system, developer, user, assistant or tool",
                           param=f"messages[{index}].role")  # fmt: skip
        except ImageError as exc:
            raise APIError(400, str(exc), param="messages", code="invalid_image") from None
    return converted


def agent_input(messages: list[dict[str, Any]], policy: ImagePolicy) -> AgentInput:
    """The last message, which must be the user's: the agent keeps the conversation itself (per thread)."""
    index = len(messages) - 1
    last = messages[index]
    if not isinstance(last, dict) or last.get("role") != "user":
        raise APIError(400, "the agent model runs a turn for the last message, which must be a user message; the "
                       "conversation so far is kept by the server per thread (X-Thread-Id header or 'user')",
                       param=f"messages[{index}]")  # fmt: skip
    file_ids: list[str] = []
    try:
        blocks, images = _user_parts(last.get("content"), index, policy, [0], file_ids)
    except ImageError as exc:
        raise APIError(400, str(exc), param="messages", code="invalid_image") from None
    text = "\n".join(b["text"] for b in blocks if b["type"] == "text" and b["text"].strip())
    if not text.strip() and not images and not file_ids:
        raise _bad(index, "the user message is empty; send some text, an image or a video")
    return AgentInput(text=text, images=images, file_ids=list(dict.fromkeys(file_ids)))
