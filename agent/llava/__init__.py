"""The LangChain chat model for LLaVA-family checkpoints: loading, messages, images, prompts, streaming."""

from __future__ import annotations

from agent.core.lazy import lazy_exports

_EXPORTS = {
    "ChatLlava": "agent.llava.chat_model",
    "GenerationTimeoutError": "agent.llava.reply_chunk",
    "render_prompt": "agent.llava.prompting",
    "image_capacity": "agent.llava.prompting",
    "messages_to_turns": "agent.llava.messages",
    "tool_schemas": "agent.llava.messages",
    "load_model": "agent.llava.loading",
    "resolve_spec": "agent.llava.loading",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
