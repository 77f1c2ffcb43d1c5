"""The agent's tools: ``caption_image``, ``generate_image``, ``search_images`` and ``speak``.

Each is a LangChain ``BaseTool`` usable on its own (``CaptionImageTool(model=..., device="cpu")``)
or built from the configuration with :func:`build_tools`. All of them get their models through
one :class:`~tools.model_manager.ModelManager`. Importing this package loads no model library.
"""

from __future__ import annotations

import importlib
from typing import Any

from tools.examples import ToolExample, register_tool_examples, tool_examples
from tools.registry import available_tools, build_tool, build_tools, register_tool

_LAZY = {
    "CaptionImageTool": "tools.caption",
    "GenerateImageTool": "tools.generate",
    "SearchImagesTool": "tools.search",
    "SpeakTool": "tools.speak",
    "ModelManager": "tools.model_manager",
    "get_model_manager": "tools.model_manager",
}

__all__ = [
    "ToolExample",
    "available_tools",
    "build_tool",
    "build_tools",
    "register_tool",
    "register_tool_examples",
    "tool_examples",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tools' has no attribute {name!r}")
