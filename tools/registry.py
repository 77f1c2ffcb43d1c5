"""The registry of tools: each tool registers a factory under its name, built-ins included.

A factory takes the application config and the model manager and returns a ``BaseTool``.
Registering a name twice is refused; asking for an unknown name lists the known ones.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from agent.core.config import load_config
from agent.core.errors import ConfigError
from agent.core.model_manager import get_model_manager

if TYPE_CHECKING:
    from langchain_core.tools import BaseTool

    from agent.core.config import AppConfig
    from agent.core.model_manager import ModelManager

ToolFactory = Callable[["AppConfig", "ModelManager"], "BaseTool"]

_factories: dict[str, ToolFactory] = {}
_guard = threading.Lock()


def register_tool(name: str, factory: ToolFactory | None = None) -> Any:
    """Register ``factory`` under ``name``; usable as ``register_tool("x", f)`` or as a decorator."""

    def add(function: ToolFactory) -> ToolFactory:
        if not name or not name.replace("_", "").isalnum():
            raise ConfigError(f"tool name {name!r} must be letters, digits and underscores")
        with _guard:
            if name in _factories:
                raise ConfigError(f"a tool named {name!r} is already registered; choose another name")
            _factories[name] = function
        return function

    return add(factory) if factory is not None else add


def unregister_tool(name: str) -> None:
    """Remove a registered tool (for plugins replacing a tool, and tests)."""
    with _guard:
        _factories.pop(name, None)


def available_tools() -> list[str]:
    """Names of the registered tools, built-ins first."""
    with _guard:
        return list(_factories)


def get_tool_factory(name: str) -> ToolFactory:
    with _guard:
        factory = _factories.get(name)
        known = list(_factories)
    if factory is None:
        raise ConfigError(f"no tool is named {name!r}; the available tools are {', '.join(known)}")
    return factory


def build_tool(name: str, config: AppConfig, manager: ModelManager | None = None) -> BaseTool:
    return get_tool_factory(name)(config, manager or get_model_manager(config))


def build_tools(config: AppConfig | None = None, manager: ModelManager | None = None) -> list[BaseTool]:
    """The tools named in ``config.tools.enabled``, sharing one model manager (unknown names are refused)."""

    config = config or load_config()
    manager = manager or get_model_manager(config)
    return [get_tool_factory(name)(config, manager) for name in config.tools.enabled]


# -- the built-in tools register through the same path plugins use -------------------------------
# Each factory imports its tool module when called: the tool classes bring LangChain, and
# ``import tools`` (the registry) stays cheap for the CLI and for plugins registering themselves.
@register_tool("caption_image")
def _caption_image(config: AppConfig, manager: ModelManager) -> BaseTool:
    from tools.caption import CaptionImageTool

    return CaptionImageTool.from_config(config, manager)


@register_tool("generate_image")
def _generate_image(config: AppConfig, manager: ModelManager) -> BaseTool:
    from tools.generate import GenerateImageTool

    return GenerateImageTool.from_config(config, manager)


@register_tool("search_images")
def _search_images(config: AppConfig, manager: ModelManager) -> BaseTool:
    from tools.search import SearchImagesTool

    return SearchImagesTool.from_config(config, manager)


@register_tool("speak")
def _speak(config: AppConfig, manager: ModelManager) -> BaseTool:
    from tools.speak import SpeakTool

    return SpeakTool.from_config(config, manager)


@register_tool("describe_video")
def _describe_video(config: AppConfig, manager: ModelManager) -> BaseTool:
    from tools.describe_video import DescribeVideoTool

    return DescribeVideoTool.from_config(config, manager)


# Heavy generators: registered, but not in the default ``tools.enabled`` (add them to opt in).
@register_tool("generate_video")
def _generate_video(config: AppConfig, manager: ModelManager) -> BaseTool:
    from tools.generate_video import GenerateVideoTool

    return GenerateVideoTool.from_config(config, manager)


@register_tool("generate_3d")
def _generate_3d(config: AppConfig, manager: ModelManager) -> BaseTool:
    from tools.generate_3d import Generate3DTool

    return Generate3DTool.from_config(config, manager)
