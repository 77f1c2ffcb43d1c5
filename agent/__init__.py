"""llava-agent: a local multimodal agent built on a 4-bit LLaVA chat model.

Importing this package is cheap: nothing below is imported until it is used, and torch,
transformers and the other heavy libraries only when a model is actually loaded.

    from agent import ChatLlava, MultimodalAgent, load_config

Layers (each imports only the ones below it; see docs/architecture.md): ``agent.cli.main`` ->
``agent.app`` -> ``tools`` / ``finetune`` -> ``memory`` -> ``agent.llava`` -> ``agent.decoding``
-> ``agent.core``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent.core.lazy import lazy_exports

__version__ = "0.1.0"

_ERRORS = (
    "ConfigError", "ContextLengthError", "DatasetError", "ImageError", "InputError", "LlavaAgentError",
    "ModelLoadError", "ModelNotFoundError", "PathNotAllowedError", "QuantizationError", "StoreError", "ToolError",
)  # fmt: skip
_EVENTS = ("AgentEvent", "AgentReply", "ReplyEvent", "TokenEvent", "ToolCallEvent", "ToolResultEvent")
_EXPORTS = {
    "ChatLlava": "agent.llava.chat_model",
    "GenerationTimeoutError": "agent.llava.reply_chunk",
    "MultimodalAgent": "agent.app.multimodal_agent",
    "GenerationStopped": "agent.app.multimodal_agent",
    "AppConfig": "agent.core.config",
    "load_config": "agent.core.config",
    **{name: "agent.app.events" for name in _EVENTS},
    **{name: "agent.core.errors" for name in _ERRORS},
}

if TYPE_CHECKING:  # pragma: no cover
    from agent.app.events import (
        AgentEvent,
        AgentReply,
        ReplyEvent,
        TokenEvent,
        ToolCallEvent,
        ToolResultEvent,
    )
    from agent.app.multimodal_agent import GenerationStopped, MultimodalAgent
    from agent.core.config import AppConfig, load_config
    from agent.core.errors import (
        ConfigError,
        ContextLengthError,
        DatasetError,
        ImageError,
        InputError,
        LlavaAgentError,
        ModelLoadError,
        ModelNotFoundError,
        PathNotAllowedError,
        QuantizationError,
        StoreError,
        ToolError,
    )
    from agent.llava.chat_model import ChatLlava
    from agent.llava.reply_chunk import GenerationTimeoutError

__all__ = [
    "AgentEvent", "AgentReply", "AppConfig", "ChatLlava", "ConfigError", "ContextLengthError", "DatasetError",
    "GenerationStopped", "GenerationTimeoutError", "ImageError", "InputError", "LlavaAgentError",
    "ModelLoadError", "ModelNotFoundError", "MultimodalAgent", "PathNotAllowedError", "QuantizationError",
    "ReplyEvent", "StoreError", "TokenEvent", "ToolCallEvent", "ToolError", "ToolResultEvent", "__version__",
    "load_config",
]  # fmt: skip
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
