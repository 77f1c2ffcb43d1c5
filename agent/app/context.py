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
  Text is counted with the model's tokenizer when it has one (``get_token_ids``), the tool
  schemas and the system prompt included. The model's own count of the rendered prompt has the
  last word: when it says the prompt is still too long (:class:`ContextLengthError` with
  ``over_by``), that many more tokens of old turns are left out and the call is made again. Only
  a latest turn that alone does not fit is an error.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from langchain.agents.middleware import AgentMiddleware
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage

from agent.core.errors import ContextLengthError
from agent.core.images import earlier_image_reference
from memory.context_notes import TRIMMED_TURNS_FOOTER, TRIMMED_TURNS_HEADER, context_block, with_context_block

if TYPE_CHECKING:
    from langchain.agents.middleware import ModelRequest, ModelResponse

    from agent.core.config import AppConfig

logger = logging.getLogger(__name__)

IMAGE_TOKENS = 600
"""Tokens one image is assumed to take when estimating (LLaVA-1.5: 576 patch tokens)."""
MESSAGE_OVERHEAD_TOKENS = 8
"""Tokens a chat template adds around one message or tool call (role markers, separators, tags)."""
DEFAULT_CONTEXT_TOKENS = 4096
"""The context assumed for a model that does not say its own (and no ``memory.max_context_tokens``)."""
MAX_REFITS = 8
"""How many times a call the model's own count may make the policy leave out more turns."""

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


def rough_text_tokens(text: str) -> int:
    """Tokens ``text`` may take when no tokenizer is at hand: generous, so a prompt is not cut short.

    About three ASCII characters per token; two tokens per other character (CJK text takes about
    two tokens a character in English-centred vocabularies).
    """
    ascii_chars = sum(1 for ch in text if ch < "\x80")
    return ascii_chars // 3 + 2 * (len(text) - ascii_chars) + 1


def estimate_tokens(
    message: BaseMessage, image_tokens: int = IMAGE_TOKENS, count_text: Callable[[str], int] = rough_text_tokens
) -> int:
    """Tokens ``message`` takes in a prompt: its text counted by ``count_text``, ``image_tokens`` per
    image, plus what the chat template adds around a message and a tool call."""
    total = MESSAGE_OVERHEAD_TOKENS
    content = message.content
    parts = [content] if isinstance(content, str) else content
    for part in parts:
        if isinstance(part, str):
            total += count_text(part)
        elif is_image_block(part):
            total += image_tokens
        elif isinstance(part, dict):
            total += count_text(str(part.get("text", "")))
    if isinstance(message, AIMessage):
        total += sum(
            count_text(json.dumps({"name": call.get("name"), "arguments": call.get("args")}, ensure_ascii=False))
            + MESSAGE_OVERHEAD_TOKENS
            for call in message.tool_calls
        )
    return total


def tools_tokens(tools: Sequence[Any], count_text: Callable[[str], int] = rough_text_tokens) -> int:
    """Tokens the tool schemas take in the system prompt."""
    if not tools:
        return 0
    from langchain_core.utils.function_calling import convert_to_openai_tool

    total = MESSAGE_OVERHEAD_TOKENS
    for tool in tools:
        schema = tool if isinstance(tool, dict) else convert_to_openai_tool(tool)
        total += count_text(json.dumps(schema, ensure_ascii=False)) + MESSAGE_OVERHEAD_TOKENS
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
    note_budget = max(budget // 10, 128)  # the note takes a tenth (at least a few lines); the kept turns the rest
    starts = _turn_starts(messages)
    keep_from = starts[-1]
    for start in reversed(starts):
        if sum(sizes[start:]) > budget - note_budget:
            break
        keep_from = start
    asked = [_first_words(m) for m in messages[:keep_from] if isinstance(m, HumanMessage)][-10:]
    note = context_block(NOTE_HEADER, asked, TRIMMED_TURNS_FOOTER)
    while asked and count(HumanMessage(note)) > note_budget:  # the newest questions are the ones worth naming
        asked = asked[1:]
        note = context_block(NOTE_HEADER, asked, TRIMMED_TURNS_FOOTER)
    logger.info("context: left out %d of %d messages to fit %d tokens", keep_from, len(messages), budget)
    return list(messages[keep_from:]), note


def model_max_images(model: Any, config: AppConfig) -> int | None:
    """Images kept as pixels per prompt: the config, else what the model says (``image_capacity()``)."""
    if config.model.max_images is not None:
        return config.model.max_images
    probe = getattr(model, "image_capacity", None)
    value = probe() if callable(probe) else probe
    return value if isinstance(value, int) and value >= 0 else None


def model_context_tokens(model: Any, config: AppConfig) -> int:
    """The model's context window: the config, else the loaded model's, else a safe default."""
    if config.memory.max_context_tokens is not None:
        return config.memory.max_context_tokens
    loaded = getattr(model, "loaded", None) if hasattr(type(model), "loaded") else None
    value = getattr(loaded, "context_length", None)
    return value if isinstance(value, int) and value > 0 else DEFAULT_CONTEXT_TOKENS


def text_token_counter(model: Any) -> Callable[[str], int]:
    """Counts a text's tokens with the model's own tokenizer, when the model says it has one.

    LangChain's base ``get_token_ids`` would fetch a GPT-2 tokenizer from the hub; a model that does
    not override it is counted with the generous offline estimate instead.
    """
    from langchain_core.language_models import BaseLanguageModel

    if getattr(type(model), "get_token_ids", BaseLanguageModel.get_token_ids) is BaseLanguageModel.get_token_ids:
        return rough_text_tokens
    return lambda text: len(model.get_token_ids(text))


def model_image_tokens(model: Any) -> int:
    """Tokens one image takes in the model's prompt (``image_seq_length`` of a LLaVA config)."""

    loaded = getattr(model, "loaded", None) if hasattr(type(model), "loaded") else None
    value = getattr(getattr(loaded, "config", None), "image_seq_length", None)
    return value if isinstance(value, int) and value > 0 else IMAGE_TOKENS


class ContextPolicyMiddleware(AgentMiddleware):
    """Applies the image policy and the length policy to every model call of an agent."""

    def __init__(
        self,
        *,
        max_images: int | None | Callable[[], int | None],
        max_tokens: int | Callable[[], int],
        reserved_tokens: int = 0,
        image_tokens: int | Callable[[], int] = IMAGE_TOKENS,
        count_text: Callable[[str], int] = rough_text_tokens,
    ) -> None:
        """Limits may be callables, read on the first model call (so a model loads only when used).

        ``count_text`` counts the tokens of a text, best with the model's own tokenizer; counts are
        cached, so a long thread is not tokenized again on every call.
        """
        super().__init__()
        self._count_text = functools.lru_cache(maxsize=8192)(count_text)
        self._max_images = max_images
        self._max_tokens = max_tokens
        self._image_tokens = image_tokens
        self.reserved_tokens = reserved_tokens

    @classmethod
    def for_model(cls, model: Any, config: AppConfig, reserved_tokens: int) -> ContextPolicyMiddleware:
        """The policy for ``model``: its limits read on the first call, its text counted with its tokenizer."""
        return cls(
            max_images=lambda: model_max_images(model, config),
            max_tokens=lambda: model_context_tokens(model, config),
            image_tokens=lambda: model_image_tokens(model),
            count_text=text_token_counter(model),
            reserved_tokens=reserved_tokens,
        )

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
        """The request as the model gets it."""
        return self._fit(request)[0]

    def _fit(self, request: ModelRequest, max_tokens: int | None = None) -> tuple[ModelRequest, bool, int]:
        """The request as the model gets it, whether earlier turns are left that could still go, and
        its estimated size with the reply's budget (``max_tokens`` caps the context below the model's)."""
        messages = apply_image_policy(request.messages, self.max_images)
        image_tokens = self.image_tokens
        count_text = self._count_text

        def count(message: BaseMessage) -> int:
            return estimate_tokens(message, image_tokens, count_text)

        reserved = self.reserved_tokens + tools_tokens(request.tools, count_text)
        if request.system_message:
            reserved += count(request.system_message)
        limit = self.max_tokens if max_tokens is None else min(max_tokens, self.max_tokens)
        messages, note = fit_to_context(messages, limit, reserved_tokens=reserved, count=count)
        more_to_drop = len(_turn_starts(messages)) > 1
        if note:  # quoted user text is data: a delimited block in the latest user message, not the system prompt
            messages = with_context_block(messages, note)
        return request.override(messages=messages), more_to_drop, reserved + sum(count(m) for m in messages)

    @staticmethod
    def _refit(exc: ContextLengthError, more_to_drop: bool, estimated: int, attempt: int) -> int:
        """After the model's own count said the prompt is too long: the smaller context to fit it in."""
        if exc.over_by is None or attempt >= MAX_REFITS:
            raise exc
        if not more_to_drop:
            raise ContextLengthError(
                f"the latest message does not fit even with every earlier turn left out: {exc}", over_by=exc.over_by
            ) from None
        logger.info("context: the model counted %d tokens too many; leaving out more turns", exc.over_by)
        return estimated - exc.over_by

    def wrap_model_call(
        self, request: ModelRequest, handler: Callable[[ModelRequest], ModelResponse]
    ) -> ModelResponse:
        cap, attempt = None, 0
        while True:
            prepared, more_to_drop, estimated = self._fit(request, cap)
            try:
                return handler(prepared)
            except ContextLengthError as exc:  # raised before any token: trying again repeats nothing
                cap = self._refit(exc, more_to_drop, estimated, attempt)
                attempt += 1

    async def awrap_model_call(self, request: ModelRequest, handler: Any) -> ModelResponse:
        cap, attempt = None, 0
        while True:
            prepared, more_to_drop, estimated = self._fit(request, cap)
            try:
                return await handler(prepared)
            except ContextLengthError as exc:
                cap = self._refit(exc, more_to_drop, estimated, attempt)
                attempt += 1
