"""The image policy across turns on both template families, through the agent and a tiny ChatLlava."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler

from agent.app.multimodal_agent import MultimodalAgent
from agent.core.config import load_config

pytestmark = pytest.mark.integration

COLOURS = [(220, 20, 20), (20, 200, 20), (20, 20, 220)]


class SeenMessages(BaseCallbackHandler):
    """Records the messages each model call receives (after the agent's context policy)."""

    def __init__(self) -> None:
        self.calls: list[list[Any]] = []

    def on_chat_model_start(self, serialized, messages, **kwargs) -> None:
        self.calls.append(messages[0])


def image_blocks(messages) -> list[dict]:
    return [b for m in messages if isinstance(m.content, list) for b in m.content
            if isinstance(b, dict) and b.get("type") in ("image", "image_url")]


def image_paths(messages) -> list[str]:
    return [b["extras"]["path"] for b in image_blocks(messages)]


def image_payloads(messages) -> list[str]:
    """The base64 data of each image, in either block format (callbacks see the OpenAI one)."""
    return [b["base64"] if b["type"] == "image" else b["image_url"]["url"].split(",", 1)[1]
            for b in image_blocks(messages)]


def references(messages) -> list[str]:
    return [b["text"] for m in messages if isinstance(m.content, list) for b in m.content
            if isinstance(b, dict) and b.get("type") == "text" and b["text"].startswith("[earlier image: ")]


@pytest.fixture
def pictures(tmp_path):
    from PIL import Image

    paths = []
    for index, colour in enumerate(COLOURS):
        path = tmp_path / f"picture-{index}.png"
        Image.new("RGB", (40, 40), colour).save(path)
        paths.append(path)
    return paths


@pytest.mark.parametrize(
    "family, max_images, kept",
    [("llama", None, 1), ("qwen2", None, 3), ("qwen2", 2, 2)],
    ids=["llava-1.5-single-image", "interleave-multi-image", "interleave-capped-by-config"],
)
def test_older_images_become_references(tmp_path, tiny_llava_paths, pictures, family, max_images, kept):
    settings = {
        "data_dir": str(tmp_path / "data"),
        "model": {"model": str(tiny_llava_paths[family]), "max_new_tokens": 4, "temperature": 0.0,
                  "max_images": max_images},
        "tools": {"enabled": []},
        "agent": {"long_term_memory": False},
    }
    agent = MultimodalAgent.from_config(load_config(settings, environ={}))
    seen = SeenMessages()
    thread = None
    for index, picture in enumerate(pictures):
        reply = agent.chat(f"Look at picture {index}.", [picture], thread, callbacks=[seen])
        assert isinstance(reply.text, str) and not reply.stopped
        thread = reply.thread_id
    last = seen.calls[-1]
    history = agent.history(thread)
    stored = image_paths(history)
    assert len(stored) == 3, "the thread keeps every image; only the prompt is trimmed"
    assert image_payloads(last) == image_payloads(history)[-kept:]
    assert len(references(last)) == 3 - kept
    for reference, path in zip(references(last), stored[: 3 - kept], strict=True):
        assert reference == f"[earlier image: {path}]"
