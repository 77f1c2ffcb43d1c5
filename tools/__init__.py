"""The agent's tools: ``caption_image``, ``generate_image``, ``search_images``, ``speak``, ``describe_video``,
and the opt-in heavy generators ``generate_video`` and ``generate_3d``.

Each is a LangChain ``BaseTool`` usable on its own (``CaptionImageTool(model=..., device="cpu")``)
or built from the configuration with :func:`build_tools`. All of them get their models through
one :class:`~agent.core.model_manager.ModelManager`. Importing this package loads no model library.
"""

from __future__ import annotations

from agent.core.lazy import lazy_exports
from tools.registry import available_tools, build_tool, build_tools, register_tool

_EXPORTS = {
    "CaptionImageTool": "tools.caption",
    "DescribeVideoTool": "tools.describe_video",
    "GenerateImageTool": "tools.generate",
    "GenerateVideoTool": "tools.generate_video",
    "Generate3DTool": "tools.generate_3d",
    "SearchImagesTool": "tools.search",
    "SpeakTool": "tools.speak",
    "ModelManager": "agent.core.model_manager",
    "get_model_manager": "agent.core.model_manager",
}

__all__ = [
    "CaptionImageTool", "DescribeVideoTool", "Generate3DTool", "GenerateImageTool", "GenerateVideoTool",
    "ModelManager", "SearchImagesTool", "SpeakTool", "available_tools", "build_tool", "build_tools",
    "get_model_manager", "register_tool",
]  # fmt: skip
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
