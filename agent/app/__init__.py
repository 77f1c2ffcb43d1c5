"""The application: ``MultimodalAgent`` and its parts (events, attachments, system prompt, context policy).

The only layer that wires the chat model, the tools and memory together.
"""

from __future__ import annotations

from agent.core.lazy import lazy_exports

_EVENTS = ("AgentEvent", "AgentReply", "ReplyEvent", "TokenEvent", "ToolCallEvent", "ToolResultEvent")
_EXPORTS = {
    "MultimodalAgent": "agent.app.multimodal_agent",
    "GenerationStopped": "agent.app.multimodal_agent",
    "build_system_prompt": "agent.app.system_prompt",
    "ContextPolicyMiddleware": "agent.app.context",
    **{name: "agent.app.events" for name in _EVENTS},
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
