"""The application: ``MultimodalAgent`` and its parts (events, attachments, system prompt, context policy,
tool routing: the semantic router, the routing benchmark, tool-use data and its adapter recipe).

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
    "evaluate_routing": "agent.app.routing_eval",
    "load_routing_set": "agent.app.routing_eval",
    "RoutingReport": "agent.app.routing_eval",
    "SemanticRouter": "agent.app.routing",
    "SemanticRoutingMiddleware": "agent.app.routing",
    "synthesize_tool_data": "agent.app.tool_data",
    "train_tool_adapter": "agent.app.tool_adapter",
    **{name: "agent.app.events" for name in _EVENTS},
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
