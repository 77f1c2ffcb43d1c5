"""llava-agent: a local multimodal agent built on a 4-bit LLaVA chat model.

Importing this package is cheap: torch, transformers and the other heavy libraries are
imported only when a model is actually used.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public name -> module that defines it. Resolved on first attribute access (PEP 562).
_LAZY = {
    "ChatLlava": "agent.chat_model",
    "MultimodalAgent": "agent.multimodal_agent",
    "AgentReply": "agent.multimodal_agent",
    "AppConfig": "agent.config",
    "load_config": "agent.config",
}

if TYPE_CHECKING:  # pragma: no cover
    from agent.chat_model import ChatLlava
    from agent.config import AppConfig, load_config
    from agent.multimodal_agent import AgentReply, MultimodalAgent

__all__ = ["AgentReply", "AppConfig", "ChatLlava", "MultimodalAgent", "__version__", "load_config"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'agent' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
