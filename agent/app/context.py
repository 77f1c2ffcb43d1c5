"""Context policy: what of a long conversation the model gets to see on each call.

Two rules, applied before every model call of the agent (the stored thread is never changed):

* **Images**: only the most recent ``max_images`` images stay as pixels. Older ones become a
  text reference, ``[earlier image: PATH — caption: ...]``, with the caption when a
  ``caption_image`` call in the thread described that path. A single-image model thus always
  sees the image the user is talking about now, and can still name earlier ones.
* **Length**: when the conversation no longer fits ``max_tokens``, the oldest turns are dropped
  whole (a turn starts at a user message, so a tool call is never separated from its result)
  and a short note listing what the user asked in them is added, as a delimited block of inert
  lines, to the latest user message (never to the system message: quoted text is data).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from langchain.agents.middleware import AgentMiddleware
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage

from agent.core.images import earlier_image_reference
from memory.context_notes import TRIMMED_TURNS_FOOTER, TRIMMED_TURNS_HEADER, context_block, with_context_block

if TYPE_CHECKING:
    from langchain.agents.middleware import ModelRequest, ModelResponse

logger = logging.getLogger(__name__)

IMAGE_TOKENS = 600
"""Tokens one image is assumed to take when estimating (LLaVA-1.5: 576 patch tokens)."""

CAPTION_TOOL = "caption_image"
_IMAGE_ARG_NAMES = ("image", "image_path", "path")
NOTE_HEADER = TRIMMED_TURNS_HEADER


def is_image_block(block: Any) -> bool:
    return isinstance(block, dict) and block.get("type") in ("image", "image_url")


def image_reference(block: dict[str, Any]) -> str:
    """How an image block is named in text: its file path when known."""
    extras = block.get("extras") or {}
    if extras.get("path"):
        return str(extras["path"])
    url = block.get("url")
    if isinstance(block.get("image_url"), dict):
        url = block["image_url"].get("url")
    if isinstance(url, str) and not url.startswith("data:"):
        return url
    return "an image without a file name"


def collect_captions(messages: Sequence[BaseMessage]) -> dict[str, str]:
    """Map image path -> caption from the ``caption_image`` calls and results in a thread."""
    call_paths: dict[str, str] = {}
    for message in messages:
        if isinstance(message, AIMessage):
            for call in message.tool_calls:
                if call.get("name") != CAPTION_TOOL:
                    continue
                for name in _IMAGE_ARG_NAMES:
                    if isinstance(call["args"].get(name), str):
                        call_paths[call.get("id") or ""] = call["args"][name]
                        break
    captions: dict[str, str] = {}
    for message in messages:
        if isinstance(message, ToolMessage) and message.status != "error" and message.tool_call_id in call_paths:
            text = message.content if isinstance(message.content, str) else message.text
            artifact = message.artifact if isinstance(message.artifact, dict) else {}
            caption = artifact.get("caption") if isinstance(artifact.get("caption"), str) else text
            if caption:
                caption = " ".join(caption.split())
                captions[call_paths[message.tool_call_id]] = caption
                if isinstance(artifact.get("image"), str):  # the resolved path the tool read
                    captions[artifact["image"]] = caption
    return captions


def apply_image_policy(
    messages: Sequence[BaseMessage], max_images: int | None, captions: dict[str, str] | None = None
) -> list[BaseMessage]:
    """Keep the newest ``max_images`` image blocks; older ones become text references."""
    if max_images is None:
        return list(messages)
    captions = captions if captions is not None else collect_captions(messages)
    kept = 0
    out: list[BaseMessage] = []
    for message in reversed(messages):
        if not isinstance(message.content, list) or not any(is_image_block(b) for b in message.content):
            out.append(message)
            continue
        blocks: list[Any] = []
        for block in reversed(message.content):
            if not is_image_block(block):
                blocks.append(block)
            elif kept < max_images:
                kept += 1
                blocks.append(block)
            else:
                path = image_reference(block)
                blocks.append({"type": "text", "text": earlier_image_reference(path, captions.get(path))})
        blocks.reverse()
        out.append(message.model_copy(update={"content": blocks}))
    out.reverse()
    return out


def estimate_tokens(message: BaseMessage, image_tokens: int = IMAGE_TOKENS) -> int:
    """A cheap token estimate: about three characters per token, ``image_tokens`` per image."""
    total = 4
    content = message.content
    parts = [content] if isinstance(content, str) else content
    for part in parts:
        if isinstance(part, str):
            total += len(part) // 3 + 1
        elif is_image_block(part):
            total += image_tokens
        elif isinstance(part, dict):
            total += len(str(part.get("text", ""))) // 3 + 1
    if isinstance(message, AIMessage):
        total += sum(len(str(call.get("args", ""))) // 3 + 8 for call in message.tool_calls)
    return total


def _turn_starts(messages: Sequence[BaseMessage]) -> list[int]:
    return [i for i, m in enumerate(messages) if isinstance(m, HumanMessage)] or [0]


def _first_words(message: BaseMessage, limit: int = 80) -> str:
    text = " ".join(message.text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def fit_to_context(
    messages: Sequence[BaseMessage],
    max_tokens: int,
    *,
    reserved_tokens: int = 0,
    count: Callable[[BaseMessage], int] = estimate_tokens,
) -> tuple[list[BaseMessage], str | None]:
    """Drop the oldest whole turns until the rest fits; returns (messages, note or None).

    The latest turn is always kept, even when it alone is too long: the model then reports
    the context error itself, which is clearer than an empty prompt.
    """
    budget = max_tokens - reserved_tokens
    sizes = [count(m) for m in messages]
    if sum(sizes) <= budget:
        return list(messages), None
    starts = _turn_starts(messages)
    keep_from = starts[-1]
    for start in reversed(starts):
        if sum(sizes[start:]) > budget:
            break
        keep_from = start
    dropped = [m for m in messages[:keep_from] if isinstance(m, HumanMessage)]
    note = context_block(NOTE_HEADER, [_first_words(m) for m in dropped[-10:]], TRIMMED_TURNS_FOOTER)
    logger.info("context: left out %d of %d messages to fit %d tokens", keep_from, len(messages), budget)
    return list(messages[keep_from:]), note


class ContextPolicyMiddleware(AgentMiddleware):
    """Applies the image policy and the length policy to every model call of an agent."""

    def __init__(
        self,
        *,
        max_images: int | None | Callable[[], int | None],
        max_tokens: int | Callable[[], int],
        reserved_tokens: int = 0,
        image_tokens: int | Callable[[], int] = IMAGE_TOKENS,
    ) -> None:
        """Limits may be callables, read on the first model call (so a model loads only when used)."""
        super().__init__()
        self._max_images = max_images
        self._max_tokens = max_tokens
        self._image_tokens = image_tokens
        self.reserved_tokens = reserved_tokens

    @property
    def image_tokens(self) -> int:
        if callable(self._image_tokens):
            self._image_tokens = self._image_tokens()
        return self._image_tokens

    @property
    def max_images(self) -> int | None:
        if callable(self._max_images):
            self._max_images = self._max_images()
        return self._max_images

    @property
    def max_tokens(self) -> int:
        if callable(self._max_tokens):
            self._max_tokens = self._max_tokens()
        return self._max_tokens

    def prepare(self, request: ModelRequest) -> ModelRequest:
        messages = apply_image_policy(request.messages, self.max_images)
        image_tokens = self.image_tokens
        system_tokens = estimate_tokens(request.system_message) if request.system_message else 0
        messages, note = fit_to_context(
            messages,
            self.max_tokens,
            reserved_tokens=self.reserved_tokens + system_tokens,
            count=lambda message: estimate_tokens(message, image_tokens),
        )
        if note:  # quoted user text is data: a delimited block in the latest user message, not the system prompt

            messages = with_context_block(messages, note)
        return request.override(messages=messages)

    def wrap_model_call(
        self, request: ModelRequest, handler: Callable[[ModelRequest], ModelResponse]
    ) -> ModelResponse:
        return handler(self.prepare(request))

    async def awrap_model_call(self, request: ModelRequest, handler: Any) -> ModelResponse:
        return await handler(self.prepare(request))
