"""The agent's chat model offered to tools that show it several images at once (``describe_video``).

Tools sit below the chat model in the layers and never import it; the application wraps its
model in :class:`ChatModelVision` (the tools' ``VisionChat`` protocol) and hands it to every tool
that has an ``attach_vision_chat`` method. Any LangChain chat model works: images travel as
standard base64 image blocks.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel
    from PIL import Image


def _image_block(image: Image.Image) -> dict[str, Any]:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=90)
    return {"type": "image", "base64": base64.b64encode(buffer.getvalue()).decode("ascii"), "mime_type": "image/jpeg"}


class ChatModelVision:
    """A chat model asked one question about several labelled images.

    Args:
        model: the LangChain chat model (unbound: no tools are offered to it here).
        max_images: how many images one prompt keeps as pixels (the agent's image policy).
    """

    def __init__(self, model: BaseChatModel, max_images: Callable[[], int | None]) -> None:
        self.model = model
        self._max_images = max_images

    def max_images(self) -> int:
        value = self._max_images()
        return value if isinstance(value, int) and value >= 0 else 1

    def ask(self, introduction: str, frames: Sequence[tuple[str, Image.Image]], question: str) -> str:
        from langchain_core.messages import HumanMessage

        blocks: list[str | dict[str, Any]] = [{"type": "text", "text": introduction}]
        for label, image in frames:
            blocks.append({"type": "text", "text": label})
            blocks.append(_image_block(image))
        blocks.append({"type": "text", "text": question})
        reply = self.model.invoke([HumanMessage(content=blocks)])
        return str(reply.text)


def attach_vision_chat(tools: Sequence[Any], vision: ChatModelVision) -> None:
    """Give ``vision`` to every tool that asks for a chat model (has ``attach_vision_chat``)."""
    for tool in tools:
        attach = getattr(tool, "attach_vision_chat", None)
        if callable(attach):
            attach(vision)
